"""Toy regression: exercises mesh, sharded init, loop, checkpoints and resume in seconds.

  python -m dreamer4_jax.main --config=experiments/toy.py --workdir=runs/toy
  python -m dreamer4_jax.main --config=experiments/toy.py:long --config.mesh.shape='(2,2,2)' ...

Variants (the `arg` after ':'): '' (default, 200 steps), 'long' (2000 steps).
"""

from dreamer4_jax.config_settings import accepts_settings
from dreamer4_jax.configs import base_config
from dreamer4_jax.model_configs import toy_config_dict


@accepts_settings
def get_config(arg: str | None = None):
    c = base_config()
    c.phase = 'toy'
    c.toy = toy_config_dict()
    c.train.steps = 200
    c.train.batch_size = 32
    c.train.learning_rate = 3e-3
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    if arg == 'long':
        c.train.steps = 2000
    elif arg:
        raise ValueError(f"experiments/toy.py: unknown variant {arg!r}; use '' or 'long'.")
    return c
