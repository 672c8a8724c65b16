"""Craftax-Classic at one-GPU scale: the config expected to give a competent agent.

  python -m dreamer4_jax.data.collect --name=craftax_small --num_episodes=2000 --max_steps=1000
  launch/gpu.sh experiments/craftax_small.py:tokenizer runs/small/tokenizer
  launch/gpu.sh experiments/craftax_small.py:dynamics runs/small/dynamics \
      --config.dynamics.tokenizer_workdir=runs/small/tokenizer
  launch/gpu.sh experiments/craftax_small.py:agent runs/small/agent \
      --config.agent.dynamics_workdir=runs/small/dynamics
  launch/gpu.sh experiments/craftax_small.py:imagination runs/small/imagination \
      --config.imagination.agent_workdir=runs/small/agent

Variants: 'tokenizer', 'dynamics', 'agent', 'imagination'. Sizes [U] (the paper gives none for
small scale): tokenizer 2 x 8 blocks at width 256 (about 13M parameters), dynamics 12 blocks at
width 384 with GQA 8:2 and 16 registers, context C = 32 frames with T1 = 16 / T2 = 48 batches.
"""

from dreamer4_jax import model_configs as mc
from dreamer4_jax.config_settings import accepts_settings
from dreamer4_jax.configs import base_config
from dreamer4_jax.data.config import default_data_config

VARIANTS = ('tokenizer', 'dynamics', 'agent', 'imagination')
# The tokenizer trains on windows of this many frames; its encoder and decoder attend to no more
# frames than that wherever they are used later (48-frame dynamics windows, closed-loop play).
TOKENIZER_WINDOW = 8


def block(**kw):
    base = dict(width=256, depth=8, num_heads=8, time_every=4, dtype='bfloat16')
    return mc.transformer_config_dict(**{**base, **kw})


@accepts_settings
def get_config(arg: str | None = None):
    variant = arg or 'tokenizer'
    if variant not in VARIANTS:
        raise ValueError(
            f'experiments/craftax_small.py: unknown variant {arg!r}; choose one of {VARIANTS}.'
        )
    c = base_config()
    c.phase = variant
    c.data = default_data_config()
    c.data.name = 'craftax_small'
    c.data.collect.num_episodes = 2000
    c.data.collect.max_steps = 1000
    c.data.collect.num_envs = 256
    c.data.collect.policy_mix = {'random': 0.2, 'seeker': 0.8}
    c.data.window_length = 48
    c.data.eval_batch_size = 16
    c.data.num_threads = 8
    # Later phases read the tokenizer's latents from a cache encoded once next to the tokenizer
    # run (dreamer4_jax/data/latent_cache.py; README: the latent cache), not in every step.
    c.data.latents = 'on_the_fly' if variant == 'tokenizer' else 'cache'
    c.train.log_every = 100
    c.train.checkpoint_every = 2000
    c.train.eval_every = 5000

    c.tokenizer = mc.tokenizer_config_dict(
        num_latents=32,
        encoder=block(time_window=TOKENIZER_WINDOW),
        decoder=block(time_window=TOKENIZER_WINDOW),
        lpips_frames=4,
    )
    c.dynamics = mc.dynamics_config_dict(
        transformer=block(width=384, depth=12, num_heads=8, num_kv_heads=2, time_window=32),
        num_registers=16,
        short_length=16,
        long_every=10,
        long_only_after=90_000,  # PAPER 6.5: the last 10 % of training on long batches only
    )
    c.agent = mc.agent_config_dict()
    # The value head trains alone for its first 1,000 steps: from its zero init every advantage
    # would be positive and PMPO would only imitate its own samples (PAPER 10.3 is silent).
    c.imagination = mc.imagination_config_dict(horizon=32, context=8, policy_warmup=1000)
    c.closed_loop = mc.closed_loop_config_dict(episodes=256, num_envs=64, max_steps=10000)

    steps = {'tokenizer': 50_000, 'dynamics': 100_000, 'agent': 30_000, 'imagination': 20_000}
    c.train.steps = steps[variant]
    c.train.batch_size = 32
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 1000
    if variant == 'tokenizer':
        c.data.window_length = TOKENIZER_WINDOW
    return c
