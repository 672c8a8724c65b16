"""Sweeps of the paper's figures as lists of config settings (PAPER 12.3, 12.5).

An experiment file defines plain functions `table2_sweep()` and `fig7_sweep()` returning an
ordered dict {arm name: [setting, ...]}; each setting is a `key=value` part of the config string
(dreamer4_jax.config_settings), so an arm is the command line
`--config=experiments/<file>.py:dynamics,<settings joined by ','>`. The helpers here build them
from the sizes that differ between experiment files.
"""

from __future__ import annotations

# PAPER 12.3 (Table 2): arm name -> the paper's row label. Each row adds one change to the row
# before. The last two paper rows (N_z = 128 / 256 spatial tokens) change the tokenizer; every
# arm here shares one tokenizer run, so they are not arms (README: Figures and ablations).
TABLE2_ROWS = {
    'diffusion_forcing': 'Diffusion Forcing Transformer',
    'fewer_steps': '+ Fewer sampling steps (K=4)',
    'shortcut': '+ Shortcut model',
    'x_prediction': '+ X-Prediction',
    'x_loss': '+ X-Loss',
    'ramp': '+ Ramp weight',
    'alternating_lengths': '+ Alternating batch lengths',
    'long_context_every_4': '+ Long context every 4 layers',
    'gqa': '+ GQA',
    'time_factorized': '+ Time factorized long context',
    'registers': '+ Register tokens',
}


def table2_cascade(
    *,
    short_length: int,
    long_every: int,
    time_every: int,
    num_kv_heads: int,
    num_registers: int,
) -> dict[str, list[str]]:
    """The Table 2 cascade: each arm is the previous arm's settings plus its own change.

    The first arm is the paper's baseline (PAPER 12.3): diffusion forcing (every frame at
    d_min, K = k_max sampling steps; the experiment's `objective=diffusion` setting) with
    v-prediction and v-loss, no ramp, one batch length, dense block-causal attention in every
    layer, one KV head per query head, no registers. The architecture rows then use the
    experiment's sizes: `time_every` (the paper: 4), `num_kv_heads`, `num_registers`.
    """
    changes = {
        'diffusion_forcing': [
            'objective=diffusion',
            'dynamics.prediction=v',
            'dynamics.loss_space=v',
            'dynamics.ramp=False',
            'dynamics.short_length=0',
            'dynamics.transformer.dense=True',
            'dynamics.transformer.time_every=1',
            'dynamics.transformer.num_kv_heads=None',
            'dynamics.num_registers=0',
        ],
        'fewer_steps': ['dynamics.sampling_steps=4'],
        'shortcut': ['objective=shortcut'],
        'x_prediction': ['dynamics.prediction=x'],
        'x_loss': ['dynamics.loss_space=x'],
        'ramp': ['dynamics.ramp=True'],
        'alternating_lengths': [
            f'dynamics.short_length={short_length}',
            f'dynamics.long_every={long_every}',
        ],
        # The paper's baseline attends over space and time in every layer; this row keeps the
        # long (dense) context in one layer of every `time_every` and makes the others spatial.
        'long_context_every_4': [f'dynamics.transformer.time_every={time_every}'],
        'gqa': [f'dynamics.transformer.num_kv_heads={num_kv_heads}'],
        # Dense space-time layers become time-only (axial) layers (PAPER 3.1).
        'time_factorized': ['dynamics.transformer.dense=False'],
        'registers': [f'dynamics.num_registers={num_registers}'],
    }
    assert list(changes) == list(TABLE2_ROWS)
    sweep, settings = {}, []
    for name, change in changes.items():
        settings = settings + change
        sweep[name] = list(settings)
    return sweep


def fig7_arms(fractions: list[float]) -> dict[str, list[str]]:
    """PAPER 12.5 (Fig. 7): one arm per share of train episodes that keep their action labels
    (the first ones in order, as the paper's first hours; dreamer4_jax/data/pipeline.py).

    Names say the percentage: 'labels_4pct' keeps round(0.04 x episodes) labeled episodes.
    """
    return {f'labels_{100 * f:g}pct': [f'data.label_fraction={f}'] for f in fractions}
