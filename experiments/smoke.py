"""The smallest Craftax pipeline that runs every phase: seconds per run (figure tests, smoke runs).

  python -m dreamer4_jax.figures table2 --scale=smoke --workdir=runs/figures_smoke
  python -m dreamer4_jax.main --config=experiments/smoke.py:dynamics,objective=diffusion \
      --config.dynamics.tokenizer_workdir=runs/figures_smoke/tokenizer --workdir=runs/smoke_dyn

Variants: 'tokenizer', 'dynamics', 'agent', 'imagination' (as experiments/craftax_tiny.py), each
followed by optional settings (`,key=value`; SETTINGS below, or any dotted field). The numbers
it gives mean nothing: it checks that the figure commands run end to end
(dreamer4_jax/figures; README: Figures and ablations).
"""

from dreamer4_jax import model_configs as mc
from dreamer4_jax.config_settings import accepts_settings
from dreamer4_jax.configs import base_config
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.figures import sweeps

VARIANTS = ('tokenizer', 'dynamics', 'agent', 'imagination')
TOKENIZER_WINDOW = 3
K_MAX = 8
SETTINGS = {
    'objective': {
        'diffusion': {'dynamics.shortcut': False, 'dynamics.sampling_steps': K_MAX},
        'shortcut': {'dynamics.shortcut': True, 'dynamics.sampling_steps': 4},
    },
    'labels': 'data.label_fraction',
    'steps': 'train.steps',
}
# How the figures evaluate at this scale (dreamer4_jax/figures/evaluation.py).
FIGURES = dict(videos=4, context=2, horizon=3, fps_frames=3, episodes=2, max_steps=8)


def block(**kw):
    base = dict(width=16, depth=2, num_heads=2, time_every=2)
    return mc.transformer_config_dict(**{**base, **kw})


def table2_sweep() -> dict[str, list[str]]:
    """The first and the last arm of the Table 2 cascade (every arm costs a compilation)."""
    cascade = sweeps.table2_cascade(
        short_length=2, long_every=2, time_every=2, num_kv_heads=1, num_registers=1
    )
    return {name: cascade[name] for name in ('diffusion_forcing', 'registers')}


def fig7_sweep() -> dict[str, list[str]]:
    return sweeps.fig7_arms([0.0, 1.0])


@accepts_settings
def get_config(arg: str | None = None):
    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/smoke.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = base_config()
    c.phase = variant
    c.mesh.num_devices = 1
    c.data = default_data_config()
    c.data.name = 'craftax_smoke'
    c.data.collect.num_episodes = 8
    c.data.collect.max_steps = 24
    c.data.collect.num_envs = 8
    c.data.eval_fraction = 0.25
    c.data.window_length = 4
    c.data.eval_batch_size = 2
    c.data.latents = 'on_the_fly' if variant == 'tokenizer' else 'cache'
    c.train.steps = 2
    c.train.batch_size = 2
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.checkpoint_every = 100

    c.tokenizer = mc.tokenizer_config_dict(
        patch=16,
        num_latents=4,
        latent_dim=4,
        encoder=block(depth=1, time_every=1, time_window=TOKENIZER_WINDOW),
        decoder=block(depth=1, time_every=1, time_window=TOKENIZER_WINDOW),
        lpips_frames=1,
    )
    c.dynamics = mc.dynamics_config_dict(
        k_max=K_MAX,
        num_registers=1,
        eval_context=2,
        eval_videos=1,
        teacher_rows=0.5,
        transformer=block(num_kv_heads=1, time_window=4),
    )
    c.agent = mc.agent_config_dict(head_hidden=16, mtp_length=2, teacher_rows=0.5)
    c.imagination = mc.imagination_config_dict(context=2, horizon=2, gamma=0.9)
    c.closed_loop = mc.closed_loop_config_dict(
        episodes=2, num_envs=2, max_steps=8, modes='ladder', single_tasks='collect_wood'
    )
    if variant == 'tokenizer':
        c.data.window_length = TOKENIZER_WINDOW
    return c
