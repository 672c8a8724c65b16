"""Tiny Craftax-Classic pipeline for CPU: every phase in minutes (the `make demo` config).

  python -m dreamer4_jax.main --config=experiments/craftax_tiny.py:tokenizer --workdir=runs/t/tok
  python -m dreamer4_jax.main --config=experiments/craftax_tiny.py:dynamics \
      --config.dynamics.tokenizer_workdir=runs/t/tok --workdir=runs/t/dyn
  python -m dreamer4_jax.main --config=experiments/craftax_tiny.py:agent \
      --config.agent.dynamics_workdir=runs/t/dyn --workdir=runs/t/agent
  python -m dreamer4_jax.main --config=experiments/craftax_tiny.py:imagination \
      --config.imagination.agent_workdir=runs/t/agent --workdir=runs/t/imag

Variants: 'tokenizer', 'dynamics', 'agent', 'imagination' (the phase to run), each optionally
followed by settings, e.g. `craftax_tiny.py:dynamics,objective=diffusion,dynamics.ramp=False`
(SETTINGS below, or any dotted field; dreamer4_jax/config_settings.py). `make demo` runs
them in order with the links set (dreamer4_jax/demo.py). The figures command trains the sweeps
below (`python -m dreamer4_jax.figures table2 --scale=tiny --workdir=runs/figures`). Sizes are
chosen for speed on 2 CPU cores, not quality; experiments/craftax_small.py is the one-GPU config.
"""

from dreamer4_jax import model_configs as mc
from dreamer4_jax.config_settings import accepts_settings
from dreamer4_jax.configs import base_config
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.figures import sweeps

VARIANTS = ('tokenizer', 'dynamics', 'agent', 'imagination')
# The tokenizer trains on windows of this many frames; its encoder and decoder attend to no more
# frames than that wherever they are used later (longer dynamics windows, closed-loop play).
TOKENIZER_WINDOW = 4
# Latent tokens per frame: more than the 81 tiles (see the tokenizer section of get_config).
TOKENIZER_LATENTS = 96


def tiny_block(**kw):
    return mc.transformer_config_dict(
        **{**dict(width=64, depth=4, num_heads=4, time_every=4), **kw}
    )


# Short settings after the variant (dreamer4_jax/config_settings.py).
SETTINGS = {
    'objective': {  # PAPER 12.3: plain diffusion forcing samples with K = k_max = 64 steps
        'diffusion': {'dynamics.shortcut': False, 'dynamics.sampling_steps': 64},
        'shortcut': {'dynamics.shortcut': True, 'dynamics.sampling_steps': 4},
        # A probe outside the paper: a next-frame regressor from nearly clean context, read in
        # one pass (README, phase 1b: the actions are not read this way either).
        'regressor': {
            'dynamics.noise_levels': 'last_frame',
            'dynamics.shortcut': False,
            'dynamics.sampling_steps': 1,
            'dynamics.ramp': False,
            'dynamics.independent_fraction': 0.0,
        },
    },
    'labels': 'data.label_fraction',
    'steps': 'train.steps',
}
# How the figures evaluate at this scale (dreamer4_jax/figures/experiment.py: FigureSizes).
FIGURES = dict(videos=64, context=4, horizon=12, fps_frames=32, episodes=64, max_steps=300)


def table2_sweep() -> dict[str, list[str]]:
    """PAPER 12.3 cascade; T1 = 4 of T2 = 8 frames with every 4th batch long."""
    return sweeps.table2_cascade(
        short_length=4, long_every=4, time_every=4, num_kv_heads=1, num_registers=4
    )


def fig7_sweep() -> dict[str, list[str]]:
    """PAPER 12.5: 0 %, 4 % (the paper's 100 h of 2541 h), 40 % (1000 h) and 100 % labeled."""
    return sweeps.fig7_arms([0.0, 0.04, 0.4, 1.0])


@accepts_settings
def get_config(arg: str | None = None):
    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/craftax_tiny.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = base_config()
    c.phase = variant
    c.data = default_data_config()
    c.data.window_length = 8
    # 64 held-out windows for every phase's evaluation: on 8 the open-loop PSNR of one dynamics
    # checkpoint read 17.85 dB at horizon 1 and copy-last 19.21, on 64 18.31 and 20.19, and
    # probes of the dynamics differed by less than that spread (README, phase 1b).
    c.data.eval_batch_size = 64
    # 64 episodes, three in four from the scripted seeker (the policy worth imitating; it reaches
    # iron in most episodes), one in four random (varied actions for the world model). With the
    # default 32 episodes half random, held-out BC accuracy was mostly scored on random actions.
    c.data.name = 'craftax_tiny64'
    c.data.collect.num_episodes = 64
    c.data.collect.policy_mix = {'random': 0.25, 'seeker': 0.75}
    # Later phases read the tokenizer's latents from a cache encoded once next to the tokenizer
    # run (dreamer4_jax/data/latent_cache.py; README: the latent cache), not in every step.
    c.data.latents = 'on_the_fly' if variant == 'tokenizer' else 'cache'
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.eval_every = 0

    # Phase 1a: 64x64 frames whose 63x63 content is a 9 x 9 grid of 7-pixel tiles: 7x7 patches
    # on that grid (81 patches, one tile each) with fixed 2D positions. One attention head of 64
    # channels (4 heads of 16 learned slower). TOKENIZER_LATENTS latents of 16 channels and the
    # pixel MSE alone (README, "Tokenizer probes"):
    # - more latent tokens than tiles: with 64 the tokenizer spent one latent per tile of the 7 x 9
    #   map and drew the status row (health, food, drink, energy digits) as one blurred glyph in
    #   every frame, 58 % of its error at 24.5 dB; with 96 it learns that row (the paper has 512
    #   latents for 960 patches but far larger tiles of content per patch, PAPER 4.2);
    # - no LPIPS term (PAPER 4.3: 0.2): on these 64 x 64 pixel-art frames the AlexNet LPIPS held
    #   the 96-latent tokenizer at 24.95 dB (800 steps; 33.24 dB without it), the digits again
    #   one glyph. The base config keeps the paper's 0.2.
    c.tokenizer = mc.tokenizer_config_dict(
        patch=7,
        content_height=63,
        content_width=63,
        patch_positions='sincos',
        num_latents=TOKENIZER_LATENTS,
        latent_dim=16,
        encoder=tiny_block(time_window=TOKENIZER_WINDOW, num_heads=1),
        decoder=tiny_block(time_window=TOKENIZER_WINDOW, num_heads=1),
    )
    c.tokenizer.loss_weights.lpips = 0.0
    # Phase 1b: 4 registers, GQA with 1 KV head, time window C = 8 (PAPER 6.5: C < T2). The 96
    # latents are packed by 6 into 16 tokens of 96 channels (PAPER 4.2 packs pairs), so the
    # dynamics transformer sees as many tokens per frame as with the earlier 16 latents.
    # input_scale='signal' (outside the paper): each frame's noisy latents are multiplied by
    # their signal level before the input projection, so a frame at tau = 0 reads zeros instead
    # of unit noise it would have to learn to cancel. 400 steps, two seeds: +0.3 dB at horizon 1
    # and +0.1-0.2 dB at horizons 2-4 (README, phase 1b); on a synthetic action lookup the model
    # learns to read its action only this way within 300 steps (benchmarks/action_lookup.py).
    c.dynamics = mc.dynamics_config_dict(
        transformer=tiny_block(width=96, num_kv_heads=1, time_window=8),
        pack=TOKENIZER_LATENTS // 16,  # 16 latent tokens per frame
        input_scale='signal',
    )
    # BC / reward metrics on 64 held-out windows (8 were too few to read per policy).
    # Three departures from PAPER 9.2-9.3 for 300 steps (README, phase 2, "What held BC at the
    # majority answer"); with the paper's settings the policy learned only the action marginal
    # (held-out accuracy 0.248 = the majority baseline, also after 900 steps):
    # - mtp_length=0: the heads predict offset 0 only (the only one imagination and play use);
    #   with all rows and reward weight 0.3, offsets 0..0 / 0..2 / 0..4 / 0..8 gave 0.44 / 0.44 /
    #   0.32 / 0.25 held out;
    # - bc_rows='all': BC on every window (PAPER 9.3: task-relevant windows only), which holds
    #   the seeker's moves; on the relevant windows alone the accuracy stayed at 0.22-0.25;
    # - reward weight 0.3: the RMS-normalized reward term at weight 1 held BC at 0.28
    #   (0 gave 0.48, 0.1 0.40, 0.3 0.44; the reward head's own weights learn as fast at any
    #   weight under Adam, only the shared transformer hears it less).
    c.agent = mc.agent_config_dict(head_hidden=128, eval_windows=64, mtp_length=0, bc_rows='all')
    c.agent.loss_weights.reward = 0.3
    # The value head trains alone for the first third of phase 3 (see craftax_small.py), and
    # gamma = 0.9 (PAPER 10.2 uses 0.997 for Minecraft): the reward head predicts a small positive
    # reward at every imagined step, so with 0.997 the value would need ~1/(1 - gamma) = 333
    # bootstraps to reach r / (1 - gamma) and every advantage stays positive meanwhile (measured:
    # pmpo/frac_positive = 1 for all 150 steps); 0.9 fits the 16-step horizon and, with the
    # higher learning rate below, gives both advantage signs from step 50 on (README, phase 3).
    # beta = 1 (PAPER 10.3: 0.3): the reward head pays `do` on real frames where the game did not
    # (0.07 per step, 0.18 where it did), and at 0.3 phase 3 raised the policy's share of `do`
    # from 0.29 to 0.46 and doubled its imagined reward while the real return fell below WM+BC
    # in one of two seeds; at 1 it stayed above WM+BC in both (README, phase 3; the paper's KL
    # "guards against exploiting world-model errors").
    c.imagination = mc.imagination_config_dict(policy_warmup=50, gamma=0.9, beta=1.0)
    # 64 episodes per agent in one lockstep batch, prompted along the task ladder (the Table 7
    # setting; single-task prompts are one flag away: closed_loop.modes='ladder,single').
    c.closed_loop = mc.closed_loop_config_dict(episodes=64, num_envs=64, modes='ladder')

    # 8 windows per step everywhere. Muon on the weight matrices (Adam at train.learning_rate on
    # the tables, norms and biases) in every phase but 3, which trains two small heads with AdamW;
    # what Muon gained in each phase is noted in its branch below.
    c.train.batch_size = 8
    if variant != 'imagination':
        c.train.optimizer = 'muon'
        c.train.muon_learning_rate = 0.02

    if variant == 'tokenizer':
        # 800 steps: 33.2 dB / SSIM 0.91 held out on 64 windows (64 latents with LPIPS: 24.5 /
        # 0.83; 16 latents: 20.6 / 0.69; README, "Tokenizer probes").
        # Muon on the weight matrices (Adam at 2e-3 on tables, norms, biases): 20.3 dB / SSIM 0.70
        # held out on the 64-episode data against 19.2 dB with AdamW; progress is per step, not
        # per frame (a 4x larger batch learned no faster per step), so the optimizer's step is
        # what to improve (README, "Tokenizer probes").
        c.train.steps = 800
        c.train.learning_rate = 2e-3
        c.data.window_length = TOKENIZER_WINDOW
    elif variant == 'dynamics':
        # 1,600 steps (about 2.5 min on 2 cores). With Muon, on the 96-latent tokenizer, the
        # average of 8 sampled futures reads 20.92 / 19.26 / 18.85 / 17.94 dB at horizons 1-4
        # (seed 1: 20.92 / 19.23 / 18.76 / 17.85) against 20.42 / 18.90 / 18.42 / 17.49 with
        # AdamW and 20.19 / 18.41 / 17.96 / 17.18 for copy-last; the actions move its frames 5x
        # more, and its samples are sharper, though objects still fade (README, phase 1b).
        c.train.steps = 1600
        c.train.learning_rate = 1e-3
    elif variant == 'agent':
        # 3e-3: held-out BC accuracy on seeker windows 0.283 against 0.248 at 1e-3, which only
        # ever learned the action marginal (= the majority baseline, also at 900 steps), though a
        # linear probe reads 0.40 from the same agent-token features (README, phase 2).
        # Muon as the dynamics stage it continues: on the Muon-trained dynamics model AdamW held
        # BC at 0.279 (the majority baseline 0.248) and Muon reaches 0.502 (seed 1: 0.479; from
        # scratch, the bc stage: 0.502; README, phase 2).
        c.train.steps = 300
        c.train.learning_rate = 3e-3
    else:
        c.train.steps = 150
        c.train.learning_rate = 1e-3
    return c
