"""A Craftax-shaped dataset built from synthetic episodes in well under a second.

Collecting real Craftax episodes compiles the environment for about 40 s; tests and benchmarks
that only need a dataset on disk of the right shapes (its files, its reader, a demo stage that
reuses it, step timings) build this one instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np

from dreamer4_jax.actions import craftax_action_space
from dreamer4_jax.data import build
from dreamer4_jax.data.config import collection_settings, dataset_path
from dreamer4_jax.envs.craftax import ACHIEVEMENT_NAMES


def synthetic_episode(e: int, length: int) -> dict:
    """Episode e: random frames, random actions, a task event at step 2."""
    rs = np.random.RandomState(e)
    events = np.zeros((length, len(ACHIEVEMENT_NAMES)), bool)
    events[2, e % len(ACHIEVEMENT_NAMES)] = True
    t = np.arange(length)
    return {
        'episode_id': e,
        'policy': 'random',
        'image': rs.randint(0, 255, (length, 64, 64, 3)).astype(np.uint8),
        'action': {'discrete': rs.randint(0, 17, length).astype(np.int32)},
        'has_action': np.ones(length, bool),
        'reward': events.any(axis=1).astype(np.float32),
        'task_event': events,
        'is_first': t == 0,
        'is_last': t == length - 1,
        'is_terminal': np.zeros(length, bool),
    }


def build_synthetic_dataset(
    cfg: ml_collections.ConfigDict, lengths=(12,) * 6, *, as_collected: bool = False
) -> Path:
    """Builds the dataset `cfg` (config.data) points at from synthetic episodes.

    as_collected=True records the config's Craftax collection settings in index.json, so that
    `ensure_dataset(cfg)` (the demo's data stage) reuses it instead of collecting.
    """
    path = build.build_dataset_from_episodes(
        cfg,
        (synthetic_episode(e, n) for e, n in enumerate(lengths)),
        action_space=craftax_action_space(),
        task_names=ACHIEVEMENT_NAMES,
    )
    if as_collected:
        index_file = dataset_path(cfg) / 'index.json'
        index = json.loads(index_file.read_text())
        index['settings'] = collection_settings(cfg)
        index_file.write_text(json.dumps(index))
    return path
