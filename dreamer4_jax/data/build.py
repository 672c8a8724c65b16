"""Builds a dataset folder atomically: collect (or read VPT) -> stage -> tfds array_record -> card.

Layout of <data.dir>/<data.name>/ (it exists only once complete: everything is built in a hidden
`.<name>.incomplete-*` sibling and renamed at the end, so an interrupted build never looks done;
the next build of that name removes such a folder once the process that made it is gone):
  index.json          episode table per split (ids, lengths, policies, task events), schema,
                      and the size of every file (a truncated or deleted file is reported)
  dataset_card.json   policy mix, counts, per-task coverage, action-label fraction, settings
  dataset_card.md     the same for humans
  tfds/dreamer4_episodes/1.0.0/*.array_record   one record per step (see tfds_builder)

Episode schema (numpy, leading dim L; produced by the Craftax collector and the VPT reader):
  image uint8 [L, H, W, 3]; action {component: [L, ...]}; has_action bool [L]; reward float32
  [L]; task_event bool [L, num_tasks]; is_first / is_last / is_terminal bool [L]; plus
  episode_id (int) and policy (str) metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from dreamer4_jax.actions import (
    ActionSpace,
    craftax_action_space,
    minecraft_action_space,
    validate,
)
from dreamer4_jax.data import card as card_lib
from dreamer4_jax.data import vpt
from dreamer4_jax.data.config import (
    DataError,
    MissingDataError,
    check_data_config,
    collection_settings,
    dataset_path,
    frame_shape,
    policy_mix_key,
)
from dreamer4_jax.data.tfds_builder import Dreamer4Episodes, save_episode
from dreamer4_jax.envs.craftax import ACHIEVEMENT_NAMES

INDEX_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SplitMeta:
    episode_ids: np.ndarray  # int64 [E], in record order
    lengths: np.ndarray  # int64 [E]
    policies: tuple[str, ...]
    events: np.ndarray  # int64 [V, 3]: (episode position in split, step, task)

    @property
    def offsets(self) -> np.ndarray:
        """Record index of each episode's first step."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    path: Path
    tfds_dir: Path
    image_shape: tuple[int, int, int]
    action_space: ActionSpace
    task_names: tuple[str, ...]
    splits: dict[str, SplitMeta]
    settings: dict[str, Any]


def load_meta(cfg: ml_collections.ConfigDict) -> DatasetMeta:
    """Reads index.json of the configured dataset; clear errors if missing or incompatible."""
    check_data_config(cfg)
    path = dataset_path(cfg)
    if not path.is_dir():
        raise MissingDataError(
            f'no dataset at {path} (config.data.dir={cfg.dir!r}, config.data.name={cfg.name!r}); '
            'build it with `python -m dreamer4_jax.data.collect --dir ... --name ...` or '
            'dreamer4_jax.data.ensure_dataset(config.data)'
        )
    index_file = path / 'index.json'
    if not index_file.is_file():
        raise MissingDataError(f'{path} exists but has no index.json: not a dataset; delete it')
    try:
        index = json.loads(index_file.read_text())
    except ValueError as e:
        raise DataError(f'{index_file} cannot be read ({e}). {_rebuild_hint(path)}') from e
    if index.get('format') != INDEX_FORMAT:
        raise DataError(f'{index_file} has format {index.get("format")}, expected {INDEX_FORMAT}')
    check_files(path, index.get('files', {}))
    stored = tuple(index['image_shape'])
    if stored != frame_shape(cfg):
        raise DataError(
            f'config.data.resolution={cfg.resolution} (width={cfg.width}) expects frames of '
            f'{frame_shape(cfg)}, but {path} stores {stored}: set data.resolution={stored[0]}'
            f' and data.width={0 if stored[0] == stored[1] else stored[1]}, or use another dataset'
        )
    splits = {
        name: SplitMeta(
            episode_ids=np.asarray(s['episode_ids'], np.int64),
            lengths=np.asarray(s['lengths'], np.int64),
            policies=tuple(s['policies']),
            events=np.asarray(s['events'], np.int64).reshape(-1, 3),
        )
        for name, s in index['splits'].items()
    }
    return DatasetMeta(
        path=path,
        tfds_dir=path / index['tfds_dir'],
        image_shape=stored,
        action_space=ActionSpace.from_json(index['action_space']),
        task_names=tuple(index['task_names']),
        splits=splits,
        settings=index['settings'],
    )


def _rebuild_hint(path: Path) -> str:
    return (
        f'The dataset is damaged: delete {path} and build it again (python -m '
        'dreamer4_jax.data.collect with the same settings; make demo rebuilds its own).'
    )


def check_files(path: Path, sizes: dict[str, int]) -> None:
    """Every file listed in index.json exists with the size it was written with (a cheap check
    that turns a truncated or deleted record file into one message instead of a reader crash)."""
    for rel, size in sizes.items():
        f = path / rel
        if not f.is_file():
            raise DataError(f'{f} is missing. {_rebuild_hint(path)}')
        actual = f.stat().st_size
        if actual != int(size):
            raise DataError(
                f'{f} has {actual} bytes but was written with {size} (truncated or overwritten). '
                f'{_rebuild_hint(path)}'
            )


OWNER_FILE = 'owner.json'
# A build folder without an owner file (made before owner files existed) counts as abandoned once
# it has not changed for this long.
_UNOWNED_STALE_SECONDS = 3600


def remove_stale_builds(final: Path) -> list[Path]:
    """Removes `.<name>.incomplete-*` siblings of `final` left by a build that was killed.

    A build records its host and process id in OWNER_FILE first thing. A folder is removed only
    when that process ran on this host and is gone; folders of live processes or other hosts are
    left alone. Returns the removed folders.
    """
    removed = []
    if not final.parent.is_dir():
        return removed
    host = socket.gethostname()
    for folder in final.parent.glob(f'.{final.name}.incomplete-*'):
        owner_file = folder / OWNER_FILE
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None:
            try:
                age = time.time() - folder.stat().st_mtime
            except OSError:
                continue
            stale = age > _UNOWNED_STALE_SECONDS
        else:
            stale = owner.get('host') == host and not _alive(int(owner.get('pid', -1)))
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            print(f'removed {folder}: an unfinished build whose process is gone', flush=True)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def ensure_dataset(cfg: ml_collections.ConfigDict, *, progress: bool = True) -> Path:
    """Returns the dataset folder, building it first if it does not exist yet."""
    check_data_config(cfg)
    path = dataset_path(cfg)
    remove_stale_builds(path)
    if path.is_dir():
        stored = dict(load_meta(cfg).settings)
        if 'policy_mix' in stored:  # cards written before zero weights were left out
            stored['policy_mix'] = policy_mix_key(stored['policy_mix'])
        wanted = collection_settings(cfg)
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            raise DataError(
                f'dataset {path} was built with different settings for {diff}: stored '
                f'{[stored.get(k) for k in diff]}, config {[wanted.get(k) for k in diff]}. '
                'Pick a new config.data.name, or delete the folder to rebuild it'
            )
        return path
    return build_dataset(cfg, progress=progress)


def source_schema(source: str) -> tuple[ActionSpace, tuple[str, ...]]:
    """(action space, task names) of the datasets a `config.data.source` builds."""
    if source == 'craftax':
        return craftax_action_space(), ACHIEVEMENT_NAMES
    return minecraft_action_space(), vpt.MINECRAFT_TASKS


def build_dataset(cfg: ml_collections.ConfigDict, *, progress: bool = True) -> Path:
    """Builds the configured dataset (Craftax collection or VPT recordings) atomically."""
    check_data_config(cfg, for_build=True)
    if cfg.source == 'craftax':
        produce = lambda stage: _collect_craftax(cfg, stage, progress)
    else:
        produce = lambda stage: _read_vpt(cfg, stage)
    space, tasks = source_schema(cfg.source)
    return _build_atomic(cfg, produce, space, tasks, collection_settings(cfg))


def build_dataset_from_episodes(
    cfg: ml_collections.ConfigDict,
    episodes: Iterable[dict[str, Any]],
    *,
    action_space: ActionSpace,
    task_names: Sequence[str],
) -> Path:
    """Builds a dataset from any episodes with the schema above (each needs a unique episode_id).

    The config's collection settings do not apply; the card records source 'episodes'.
    """
    check_data_config(cfg)

    def produce(stage):
        for ep in episodes:
            stage(ep)
        return {}

    settings = {'source': 'episodes', 'image_shape': list(frame_shape(cfg)),
                'eval_fraction': float(cfg.eval_fraction)}  # fmt: skip
    return _build_atomic(cfg, produce, action_space, tuple(task_names), settings)


def _collect_craftax(cfg, stage, progress) -> dict[str, Any]:
    from dreamer4_jax.data import rollout  # needs jax + craftax; other sources do not

    col = cfg.collect
    policy_of = rollout.assign_policies(col.num_episodes, dict(col.policy_mix), col.seed)
    stats = rollout.collect_episodes(
        num_episodes=col.num_episodes,
        max_steps=col.max_steps,
        num_envs=col.num_envs,
        seed=col.seed,
        policy_of=policy_of,
        on_episode=stage,
        max_repeat=col.max_repeat,
        epsilon=col.epsilon,
        pool_size=col.pool_size,
        chunk_steps=col.chunk_steps,
        progress=progress,
        task_events=col.get('task_events', 'first'),
        try_epsilon=float(col.get('try_epsilon', 0.0)),
    )
    return {
        'collection_seconds': round(stats.seconds, 2),
        'collection_warmup_seconds': round(stats.warmup_seconds, 2),
        'collection_steady_frames_per_second': (
            round(stats.steady_frames_per_second, 1)
            if np.isfinite(stats.steady_frames_per_second)
            else None
        ),
    }


def _read_vpt(cfg, stage) -> dict[str, Any]:
    h, w, _ = frame_shape(cfg)
    cursor = vpt.load_cursor(cfg.vpt.cursor_file) if cfg.vpt.draw_cursor else None
    for i, (video, actions) in enumerate(vpt.list_recordings(Path(cfg.vpt.dir))):
        ep = vpt.read_recording(video, actions, height=h, width=w, strict=cfg.vpt.strict,
                                cursor=cursor,
                                release_stuck_attack=cfg.vpt.release_stuck_attack)  # fmt: skip
        stage({**ep, 'episode_id': i, 'policy': 'contractor'})
    return {}


def _build_atomic(cfg, produce, space: ActionSpace, tasks: Sequence[str], settings) -> Path:
    final = dataset_path(cfg)
    if final.exists():
        raise FileExistsError(f'{final} already exists; delete it or pick another data.name')
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(final)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.incomplete-', dir=final.parent))
    try:
        owner = {'host': socket.gethostname(), 'pid': os.getpid()}
        (tmp / OWNER_FILE).write_text(json.dumps(owner))
        _build_into(cfg, tmp, produce, space, tasks, settings)
        (tmp / OWNER_FILE).unlink()
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / 'index.json').is_file():
                raise
            shutil.rmtree(tmp)  # another process finished the same dataset first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _build_into(cfg, tmp: Path, produce, space: ActionSpace, tasks, settings) -> None:
    staging = tmp / 'staging'
    staging.mkdir()
    summaries: list[dict[str, Any]] = []

    def stage(ep: dict[str, Any]) -> None:
        if ep['image'].shape[1:] != frame_shape(cfg):
            raise ValueError(
                f'episode {ep["episode_id"]} has frames {ep["image"].shape[1:]} but the config '
                f'expects {frame_shape(cfg)} (data.resolution / data.width)'
            )
        validate(ep['action'], space, ep['has_action'])
        if ep['task_event'].shape[1:] != (len(tasks),):
            raise ValueError(f'task_event shape {ep["task_event"].shape} != [L, {len(tasks)}]')
        path = staging / f'{int(ep["episode_id"]):08d}.npz'
        if path.exists():
            raise ValueError(f'episode_id {ep["episode_id"]} appears twice')
        save_episode(path, ep)
        summaries.append(card_lib.episode_summary(ep))

    extra = produce(stage)
    if not summaries:
        raise DataError(f'no episodes for dataset {cfg.name!r}')
    summaries.sort(key=lambda s: s['episode_id'])
    n = len(summaries)
    n_eval = min(int(round(cfg.eval_fraction * n)), n - 1)
    if cfg.eval_fraction > 0 and n >= 2:
        n_eval = max(n_eval, 1)
    split_of = {s['episode_id']: ('eval' if i >= n - n_eval else 'train')
                for i, s in enumerate(summaries)}  # fmt: skip
    split_names = ['train'] + (['eval'] if n_eval else [])
    split_summaries = {k: [s for s in summaries if split_of[s['episode_id']] == k]
                       for k in split_names}  # fmt: skip

    builder = Dreamer4Episodes(
        data_dir=str(tmp / 'tfds'),
        image_shape=frame_shape(cfg),
        action_space=space,
        num_tasks=len(tasks),
        split_files={
            k: [staging / f'{s["episode_id"]:08d}.npz' for s in v]
            for k, v in split_summaries.items()
        },
    )
    builder.download_and_prepare()
    shutil.rmtree(staging)
    shutil.rmtree(tmp / 'tfds' / 'downloads', ignore_errors=True)
    files = {str(f.relative_to(tmp)): f.stat().st_size
             for f in sorted((tmp / 'tfds').rglob('*')) if f.is_file()}  # fmt: skip

    index = {
        'format': INDEX_FORMAT,
        'files': files,
        'tfds_dir': str(Path(builder.data_dir).relative_to(tmp)),
        'image_shape': list(frame_shape(cfg)),
        'action_space': space.to_json(),
        'task_names': list(tasks),
        'settings': settings,
        'splits': {
            k: {
                'episode_ids': [s['episode_id'] for s in v],
                'lengths': [s['length'] for s in v],
                'policies': [s['policy'] for s in v],
                'events': [[i, t, task] for i, s in enumerate(v) for t, task in s['event_steps']],
            }
            for k, v in split_summaries.items()
        },
    }
    (tmp / 'index.json').write_text(json.dumps(index))
    card = card_lib.make_card(
        name=cfg.name,
        source=settings['source'],
        summaries=summaries,
        split_of=split_of,
        task_names=tasks,
        image_shape=frame_shape(cfg),
        action_space_json=space.to_json(),
        settings=settings,
        extra=extra,
    )
    card_lib.write_card(tmp, card)
