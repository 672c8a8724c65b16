"""The toy experiment shortened for tests: a few dozen steps, checkpoints every 20."""

from __future__ import annotations

import ml_collections

from experiments.toy import get_config


def short_toy_config(steps: int = 40, **train) -> ml_collections.ConfigDict:
    """experiments/toy.py with `steps` steps, logs every 10, checkpoints every 20, 5 warm-up
    steps; `train` overrides further config.train fields."""
    config = get_config()
    config.train.steps = steps
    config.train.log_every = 10
    config.train.checkpoint_every = 20
    config.train.warmup_steps = 5
    for k, v in train.items():
        config.train[k] = v
    return config
