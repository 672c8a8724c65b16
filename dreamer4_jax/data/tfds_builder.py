"""tensorflow-datasets builder that stores episodes as one array_record example per time step.

Works without TensorFlow: Tensor features only (no Image), `file_format='array_record'`, read back
with `tfds.builder_from_directory(...).as_data_source(split)`. Shuffling is disabled so the records
of a split are the episodes in the order given, each in time order; the window index
(`dreamer4_jax.data.pipeline`) relies on that and checks it.

Episodes come from `.npz` files staged by `dreamer4_jax.data.build` (Craftax collection or the
VPT reader). One record per step keeps random windows of any length cheap to read.

Stored features per step (leading dims omitted):
  image uint8 [H, W, 3] (zlib), action {component: int32/float32 [...]}, has_action bool,
  reward float32, task_event bool [num_tasks], is_first / is_last / is_terminal bool,
  episode_id int32, step int32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from dreamer4_jax.actions import ActionSpace

STEP_KEYS = ('has_action', 'reward', 'task_event', 'is_first', 'is_last', 'is_terminal')


def save_episode(path: Path, episode: Mapping[str, Any]) -> None:
    """Stages one episode (see `EPISODE` schema in dreamer4_jax.data.build) as an .npz file."""
    arrays = {k: np.asarray(episode[k]) for k in ('image', *STEP_KEYS)}
    arrays.update({f'action/{k}': np.asarray(v) for k, v in episode['action'].items()})
    arrays['episode_id'] = np.asarray(episode['episode_id'], np.int32)
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def load_episode(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files if not k.startswith('action/')}
        out['action'] = {k.split('/', 1)[1]: z[k] for k in z.files if k.startswith('action/')}
    return out


class Dreamer4Episodes(tfds.core.GeneratorBasedBuilder):
    """Episodes of frames, factorized actions, rewards and task events (one record per step)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Per-step records; Craftax-Classic collection and VPT episodes.'}

    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        action_space: ActionSpace,
        num_tasks: int,
        split_files: Mapping[str, Sequence[Path]],
        **kwargs,
    ):
        self._image_shape = tuple(int(s) for s in image_shape)
        self._action_space = action_space
        self._num_tasks = int(num_tasks)
        self._split_files = {k: list(v) for k, v in split_files.items()}
        super().__init__(file_format='array_record', **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        T = tfds.features.Tensor
        action = {
            c.name: T(shape=c.event_shape, dtype=c.dtype) for c in self._action_space.components
        }
        return self.dataset_info_from_configs(
            description='Dreamer 4 offline episodes: one example per time step.',
            features=tfds.features.FeaturesDict(
                {
                    # zlib: Craftax frames shrink about 4x, decoding stays cheap.
                    'image': T(shape=self._image_shape, dtype=np.uint8, encoding='zlib'),
                    'action': tfds.features.FeaturesDict(action),
                    'has_action': T(shape=(), dtype=np.bool_),
                    'reward': T(shape=(), dtype=np.float32),
                    'task_event': T(shape=(self._num_tasks,), dtype=np.bool_),
                    'is_first': T(shape=(), dtype=np.bool_),
                    'is_last': T(shape=(), dtype=np.bool_),
                    'is_terminal': T(shape=(), dtype=np.bool_),
                    'episode_id': T(shape=(), dtype=np.int32),
                    'step': T(shape=(), dtype=np.int32),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate_examples(files) for name, files in self._split_files.items()}

    def _generate_examples(self, files):
        key = 0
        for path in files:
            ep = load_episode(path)
            for t in range(len(ep['reward'])):
                example = {k: ep[k][t] for k in STEP_KEYS}
                example['image'] = ep['image'][t]
                example['action'] = {k: v[t] for k, v in ep['action'].items()}
                example['episode_id'] = np.int32(ep['episode_id'])
                example['step'] = np.int32(t)
                yield key, example
                key += 1
