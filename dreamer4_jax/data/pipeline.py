"""Grain input pipeline: seeded random windows of T frames, batched, sharded per process.

Dimension keys: B batch per process, T window length, H x W frame, K tasks, N latents,
C latent channels.

Batch (host-local NumPy, one process's share; the trainer makes global arrays from it with
`jax.make_array_from_process_local_data`):
  image        uint8   [B, T, H, W, 3]   (left out when serving cached latents only)
  latents      float32 [B, T, N, C]   (with a latent cache: data/latent_cache.py)
  action       {name: int32 [B, T] (categorical) | int32 [B, T, n] 0/1 (binary) |
                float32 [B, T, n] (continuous)}; the placeholder (-1 / NaN) where has_action False
  has_action   bool    [B, T]
  reward       float32 [B, T]     env reward of the transition into frame t
  task_reward  float32 [B, T, K]  1.0 where task k's event happens on the transition into t
  is_first, is_last, is_terminal  bool [B, T]
  relevant     bool    [B, T]     row is a task-relevant window (constant along T)
  task_id      int32   [B, T]     task whose event made the row relevant, else -1, or a uniform
                                  row's ladder prompt (make_dataset's `ladder`) (constant along T)
  episode_id, step  int32 [B, T]  provenance
Alignment (DESIGN.md section 3): action[t] is taken after observing image[t]; reward[t] and
task_reward[t] belong to action[t-1]. So the BC target for the policy at frame t is action[t], and
the reward-head target n steps ahead of frame t is reward[t + n] (the reward that arrives with
frame t + n; offset 0 is the reward that came with frame t itself).

Windows never cross episode boundaries: a window is T consecutive steps of one episode, so
episodes shorter than T contribute no window (they are skipped and counted in the log). A window
may start mid-episode (is_first is then False at t = 0).
Modes: 'uniform' (every window equally likely), 'relevant' (windows containing an event of
data.relevant_tasks at a position t >= 1, so the action causing it is inside the window; each
(window, event) pair equally likely), 'mixture' (the first round(mixture_ratio * B) rows of every
batch are relevant, the rest uniform; PAPER 9.3 uses 50/50).
Order: element i of the stream is a pure function of (seed, process shard, i): each stream
reshuffles every epoch, so iterator state is a position that grain checkpoints and restores
(also with data.num_workers > 0 worker processes, whose batches come in the same order).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from dreamer4_jax.actions import mask_actions
from dreamer4_jax.data.build import DatasetMeta, SplitMeta, load_meta, source_schema
from dreamer4_jax.data.config import MODES, DataError, frame_shape
from dreamer4_jax.ladder import ladder_task

Batch = dict[str, Any]


def uniform_windows(split: SplitMeta, window_length: int) -> np.ndarray:
    """int64 [W] record index of the first step of every window of every long-enough episode."""
    starts = [off + np.arange(max(n - window_length + 1, 0))
              for off, n in zip(split.offsets, split.lengths, strict=True)]  # fmt: skip
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)


def relevant_windows(
    split: SplitMeta, window_length: int, task_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(record starts int64 [W], task int32 [W]): one entry per (window, event) pair with the event
    of a task in `task_ids` at window position >= 1."""
    starts, tasks = [], []
    for pos, step, task in split.events:
        n = split.lengths[pos]
        if task not in task_ids or step < 1 or n < window_length:
            continue
        first = max(0, step - window_length + 1)
        last = min(step - 1, n - window_length)
        s = split.offsets[pos] + np.arange(first, last + 1)
        starts.append(s)
        tasks.append(np.full(len(s), task, np.int32))
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(starts).astype(np.int64), np.concatenate(tasks)


def ladder_prompts(
    split: SplitMeta, starts: np.ndarray, ladder: np.ndarray, frame: int
) -> np.ndarray:
    """int32 [W]: per window (record start), the first task of `ladder` (task ids, in order)
    that its episode has not unlocked by window frame `frame`, the last one if all are: the
    prompt closed-loop ladder play gives at that frame (the same rule, ladder.ladder_task).

    An event at episode step s is the transition into frame s, so it counts from frame s on."""
    if len(ladder) == 0:
        raise ValueError('the ladder has no tasks')
    never = np.iinfo(np.int64).max
    num_tasks = int(max(ladder.max(), split.events[:, 2].max(initial=0))) + 1
    first_EK = np.full((len(split.lengths), num_tasks), never, np.int64)
    if len(split.events):
        pos, step, task = split.events.T
        np.minimum.at(first_EK, (pos, task), step)
    pos_W = np.searchsorted(split.offsets, starts, side='right') - 1
    at_W = starts - split.offsets[pos_W] + frame  # the episode step of window frame `frame`
    unlocked_WK = first_EK[pos_W] <= at_W[:, None]
    return np.asarray(ladder_task(ladder, unlocked_WK), np.int32)


def labeled_episodes(cfg: ml_collections.ConfigDict, split_name: str, num: int) -> np.ndarray:
    """bool [E]: which episodes (in split order) keep their actions (PAPER 12.5: the first ones)."""
    if split_name != 'train':
        return np.ones(num, bool)
    if cfg.label_first_episodes >= 0:
        count = min(int(cfg.label_first_episodes), num)
    else:
        count = int(round(cfg.label_fraction * num))
    return np.arange(num) < count


def parse_tasks(
    spec: str, task_names: tuple[str, ...], setting: str = 'config.data.relevant_tasks'
) -> np.ndarray:
    """'all' or comma-separated task names -> int32 task ids; unknown names raise (naming the
    `setting` they came from)."""
    if spec.strip() == 'all':
        return np.arange(len(task_names), dtype=np.int32)
    names = [s.strip() for s in spec.split(',') if s.strip()]
    bad = [n for n in names if n not in task_names]
    if bad or not names:
        raise DataError(
            f'{setting}={spec!r}: unknown or empty task names {bad}; '
            f'use "all" or names from {task_names}'
        )
    return np.array([task_names.index(n) for n in names], np.int32)


class _WindowReader:
    """(record start, task id) -> one window dict (see the module doc, without the B dim).

    With `latents` (a latent_cache.LatentSource) windows carry 'latents' float32 [T, N, C] from
    the cache; `images=False` drops 'image' (and skips decoding it).
    """

    def __init__(
        self,
        meta: DatasetMeta,
        split: str,
        window_length: int,
        labeled: np.ndarray,
        latents=None,
        images: bool = True,
    ):
        decoders = None if images else {'image': tfds.decode.SkipDecoding()}
        builder = tfds.builder_from_directory(str(meta.tfds_dir))
        self._source = builder.as_data_source(split=split, decoders=decoders)
        self._images = images
        self._latent_source = latents
        # Opened (and its key checked) here, so a stale cache fails before training starts;
        # worker processes reopen it (__getstate__ drops the memory map).
        self._latents = None if latents is None else latents.open()
        self._path, self._split_name = meta.path, split
        self._split = meta.splits[split]
        self._offsets = self._split.offsets
        self._labeled = labeled
        self._space = meta.action_space
        self._num_tasks = len(meta.task_names)
        self._T = window_length
        if len(self._source) != int(self._split.lengths.sum()):
            raise DataError(
                f'{meta.tfds_dir} split {split!r} has {len(self._source)} records but index.json '
                f'lists {int(self._split.lengths.sum())} steps: the dataset is corrupt; rebuild it'
            )

    def __call__(self, item: tuple[int, int, bool]) -> Batch:
        start, task, relevant = int(item[0]), int(item[1]), bool(item[2])
        pos = int(np.searchsorted(self._offsets, start, side='right') - 1)
        try:
            records = self._source.__getitems__(list(range(start, start + self._T)))
        except (RuntimeError, OSError) as e:  # array_record reports damage as RuntimeError
            raise DataError(
                f'records {start}..{start + self._T} of split {self._split_name!r} in '
                f'{self._path} cannot be read ({type(e).__name__}: {str(e)[:300]}). The dataset is '
                f'damaged: delete {self._path} and build it again.'
            ) from e

        def stack(key, dtype):
            return np.asarray([r[key] for r in records], dtype)

        episode_id, step = stack('episode_id', np.int32), stack('step', np.int32)
        first_step = start - self._offsets[pos]
        if np.any(episode_id != self._split.episode_ids[pos]) or np.any(
            step != first_step + np.arange(self._T)
        ):
            raise DataError(
                f'records {start}..{start + self._T} do not hold episode '
                f'{self._split.episode_ids[pos]} steps {first_step}..: dataset index is corrupt'
            )
        has_action = stack('has_action', bool) & self._labeled[pos]
        actions = {c.name: np.asarray([r['action'][c.name] for r in records], c.dtype)
                   for c in self._space.components}  # fmt: skip
        window = {}
        if self._images:
            window['image'] = np.stack([r['image'] for r in records])
        if self._latent_source is not None:
            if self._latents is None:
                self._latents = self._latent_source.open()
            window['latents'] = np.asarray(self._latents[start : start + self._T], np.float32)
        return {
            **window,
            'action': mask_actions(actions, has_action, self._space),
            'has_action': has_action,
            'reward': stack('reward', np.float32),
            'task_reward': stack('task_event', np.float32).reshape(self._T, self._num_tasks),
            'is_first': stack('is_first', bool),
            'is_last': stack('is_last', bool),
            'is_terminal': stack('is_terminal', bool),
            'relevant': np.full(self._T, relevant),
            'task_id': np.full(self._T, task, np.int32),
            'episode_id': episode_id,
            'step': step,
        }

    def __getstate__(self):
        return {**self.__dict__, '_latents': None}


class _Sampler:
    """Global element index -> (record start, task id, relevant): row j of batch b reads stream
    position b * rows + j' of the relevant (first n_rel rows) or the uniform stream. Uniform
    rows have task -1, or their ladder prompt where `uni_tasks` gives one per window."""

    def __init__(self, batch_size, n_rel, uni_ds, uni_starts, rel_ds, rel_starts, rel_tasks,
                 uni_tasks=None):  # fmt: skip
        self._B, self._n_rel = batch_size, n_rel
        self._uni_ds, self._uni_starts, self._uni_tasks = uni_ds, uni_starts, uni_tasks
        self._rel_ds, self._rel_starts, self._rel_tasks = rel_ds, rel_starts, rel_tasks

    def __call__(self, i: int) -> tuple[int, int, bool]:
        b, j = divmod(int(i), self._B)
        if j < self._n_rel:
            w = self._rel_ds[b * self._n_rel + j]
            return int(self._rel_starts[w]), int(self._rel_tasks[w]), True
        w = self._uni_ds[b * (self._B - self._n_rel) + j - self._n_rel]
        task = -1 if self._uni_tasks is None else int(self._uni_tasks[w])
        return int(self._uni_starts[w]), task, False


def _stream(n: int, seed: int, process_index: int, process_count: int, num_epochs, what: str):
    ds = grain.MapDataset.range(n)[process_index::process_count]
    if len(ds) == 0:
        raise DataError(
            f'process {process_index} of {process_count} gets no {what} windows ({n} in total): '
            'use a larger dataset, a shorter window_length, or fewer processes'
        )
    return ds.shuffle(seed=seed % 2**32).repeat(num_epochs)


def make_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    split: str = 'train',
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    batch_size_per_process: int,
    window_length: int | None = None,
    mode: str = 'uniform',
    relevant_tasks: str | None = None,
    mixture_ratio: float | None = None,
    num_epochs: int | None = None,
    latents=None,
    images: bool = True,
    ladder: str | None = None,
    ladder_frame: int = 0,
) -> grain.IterDataset:
    """Batches of windows (module doc) as a checkpointable grain IterDataset.

    `window_length`, `relevant_tasks` and `mixture_ratio` default to the config's values;
    `num_epochs=None` repeats forever (each epoch reshuffled), else stops after that many passes
    over the smaller stream. `latents` (a latent_cache.LatentSource of this split) adds
    'latents' float32 [B, T, N, C] to every batch; `images=False` leaves 'image' out.
    `ladder` (comma-separated task names, in order): the uniform rows carry as 'task_id' the
    ladder's prompt at their frame `ladder_frame` (`ladder_prompts`; 'relevant' stays False).
    """
    cfg = data_config
    if mode not in MODES:
        raise ValueError(f'mode={mode!r} must be one of {MODES}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index={process_index} not in [0, process_count={process_count})')
    if batch_size_per_process < 1:
        raise ValueError(f'batch_size_per_process={batch_size_per_process} must be >= 1')
    meta = load_meta(cfg)
    if split not in meta.splits:
        raise DataError(f'split {split!r} not in dataset {meta.path} (has {sorted(meta.splits)})')
    T = int(window_length or cfg.window_length)
    split_meta = meta.splits[split]
    B = batch_size_per_process
    ratio = cfg.mixture_ratio if mixture_ratio is None else mixture_ratio
    n_rel = {'uniform': 0, 'relevant': B, 'mixture': int(round(ratio * B))}[mode]

    uni_starts = uniform_windows(split_meta, T)
    short = int(np.sum(split_meta.lengths < T))
    if short:
        logging.info('%d of %d %s episodes are shorter than T=%d and give no window', short,
                     len(split_meta.lengths), split, T)  # fmt: skip
    uni_ds = rel_ds = None
    rel_starts, rel_tasks = np.zeros(0, np.int64), np.zeros(0, np.int32)
    batches = []
    if n_rel < B:
        uni_ds = _stream(len(uni_starts), seed, process_index, process_count, num_epochs,
                         f'uniform (T={T})')  # fmt: skip
        batches.append(len(uni_ds) // (B - n_rel))
    if n_rel > 0:
        spec = cfg.relevant_tasks if relevant_tasks is None else relevant_tasks
        rel_starts, rel_tasks = relevant_windows(split_meta, T, parse_tasks(spec, meta.task_names))
        rel_ds = _stream(len(rel_starts), seed + 1, process_index, process_count, num_epochs,
                         f'task-relevant (tasks {spec!r}, T={T})')  # fmt: skip
        batches.append(len(rel_ds) // n_rel)
    num_batches = min(batches) if num_epochs is not None else sys.maxsize // (2 * B)
    uni_tasks = None
    if ladder is not None:
        if n_rel == B:
            raise DataError(f'a ladder prompts the uniform rows, and mode={mode!r} has none')
        if not 0 <= ladder_frame < T:
            raise DataError(f'ladder_frame={ladder_frame} is outside the window (T={T})')
        ladder_ids = parse_tasks(ladder, meta.task_names, 'the ladder')
        uni_tasks = ladder_prompts(split_meta, uni_starts, ladder_ids, ladder_frame)
    sampler = _Sampler(B, n_rel, uni_ds, uni_starts, rel_ds, rel_starts, rel_tasks, uni_tasks)
    labeled = labeled_episodes(cfg, split, len(split_meta.lengths))
    reader = _WindowReader(meta, split, T, labeled, latents, images)
    ds = grain.MapDataset.range(num_batches * B).map(sampler).map(reader)
    ds = ds.batch(B, drop_remainder=True)
    options = grain.ReadOptions(
        num_threads=int(cfg.num_threads), prefetch_buffer_size=int(cfg.prefetch_buffer_size)
    )
    ds = ds.to_iter_dataset(options)
    if cfg.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.num_workers)))
    return ds


def batch_spec(
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    window_length: int | None = None,
    latent_shape: tuple[int, int] | None = None,
) -> Batch:
    """Shapes and dtypes of a batch as `make_dataset` yields it, without reading any data.

    A dict like the batch with `jax.ShapeDtypeStruct` leaves (for ahead-of-time compilation,
    dreamer4_jax.aot); the action space and task count follow `data_config.source`.
    `latent_shape` (N, C): batches of cached latents ('latents' instead of 'image').
    """
    space, tasks = source_schema(data_config.source)
    bt = (int(batch_size), int(window_length or data_config.window_length))
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, np.dtype(dtype))
    flags = ('has_action', 'is_first', 'is_last', 'is_terminal', 'relevant')
    if latent_shape is None:
        frames = {'image': spec((*bt, *frame_shape(data_config)), np.uint8)}
    else:
        frames = {'latents': spec((*bt, *latent_shape), np.float32)}
    return {
        **frames,
        'action': {c.name: spec((*bt, *c.event_shape), c.dtype) for c in space.components},
        **{k: spec(bt, bool) for k in flags},
        'reward': spec(bt, np.float32),
        'task_reward': spec((*bt, len(tasks)), np.float32),
        **{k: spec(bt, np.int32) for k in ('task_id', 'episode_id', 'step')},
    }
