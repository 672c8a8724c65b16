"""Orbax checkpoints of train state + data-iterator position + rng + config (DESIGN 6).

Layout: `workdir/checkpoints/<step>/{state,data,meta}`. Orbax writes each step into a temporary
folder and renames it when complete, so a killed save never looks like a checkpoint. A restart
with the same command finds the latest step and resumes from it; restoring onto a different mesh
works because the restore target carries the new shardings. A damaged newest checkpoint (a file
missing or unreadable) is moved aside unchanged and the run resumes from the one before it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from dreamer4_jax.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be restored; the message names the folder and what to do."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are missing or unreadable (not merely another config)."""

    def __init__(self, path: str, detail: str):
        self.path, self.detail = path, detail
        super().__init__(f'Checkpoint {path} is damaged: {detail}')


def config_diff(
    saved: dict, current: dict, prefix: str = '', defaults: dict | None = None
) -> list[str]:
    """'field: checkpoint X vs now Y' for every leaf of two nested config dicts that differs.

    `defaults` (nested like `current`): a field the checkpoint lacks counts as equal when its
    value now is its default, since the field was added after the run and its default keeps the
    behaviour the run had.
    """
    defaults = defaults or {}
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, '<missing>'), current.get(key, '<missing>')
        if isinstance(a, dict) and isinstance(b, dict):
            sub = defaults.get(key)
            diffs += config_diff(a, b, f'{prefix}{key}.', sub if isinstance(sub, dict) else None)
        elif key not in saved and key in defaults and b == defaults[key]:
            continue
        elif a != b:
            diffs.append(f'{prefix}{key}: checkpoint {a!r} vs now {b!r}')
    return diffs


def _root_cause(exc: BaseException) -> str:
    """'Type: first line' of the innermost exception (the one that names the bad file)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = next((line for line in str(exc).splitlines() if line.strip()), '')
    text = text.split(' Truncating/padding is disabled')[0]  # orbax's API hint, not for users
    return f'{type(exc).__name__}: {text[:400]}'


def _local_path(path: str) -> str:
    return path if '://' in path else os.path.abspath(path)


class Checkpointer:
    """Saves and restores one run's checkpoints (all processes call every method).

    Nothing is created on disk until the first save: a run that stops on an error before it
    leaves no empty `checkpoints/` folder, and reading an earlier phase's workdir never creates
    one.
    """

    def __init__(self, workdir: str, *, max_to_keep: int = 2):
        self.workdir = workdir
        self.directory = _local_path(os.path.join(workdir, 'checkpoints'))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=False, enable_async_checkpointing=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any,
        rng: jax.Array,
        config: ml_collections.ConfigDict,
    ) -> None:
        """Saves asynchronously (the device->host copy happens before this returns)."""
        meta = {
            'step': int(step),
            'rng': np.asarray(jax.random.key_data(rng)).tolist(),
            'config': json.loads(config.to_json_best_effort()),
        }
        args = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
        with self._naming_the_folder():
            # Every process creates the folder if missing (exist_ok: no race, no barrier).
            epath.Path(self.directory).mkdir(parents=True, exist_ok=True)
            self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)

    @contextlib.contextmanager
    def _naming_the_folder(self):
        """A failed write (a full disk) raised by a writer that does not name its file gets the
        checkpoints folder as its file name, so the one-line error says where."""
        try:
            yield
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, self.directory) from e

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def read_meta(self, step: int) -> dict:
        """The step's saved {'step', 'rng', 'config'}; DamagedCheckpointError if unreadable."""
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta['meta']
            if not isinstance(meta, dict) or 'config' not in meta or 'rng' not in meta:
                raise ValueError('meta/metadata lacks the config or the rng')
        except Exception as e:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise DamagedCheckpointError(
                self.step_path(step), f'meta/metadata cannot be read ({_root_cause(e)}).'
            ) from e
        return meta

    def restore(
        self,
        step: int,
        abstract_state: Any,
        data_iterator: Any,
        config: ml_collections.ConfigDict,
    ) -> tuple[Any, jax.Array]:
        """Restores state (onto the shardings of `abstract_state`) and the iterator in place.

        Returns (state, rng). Raises DamagedCheckpointError when a file of the checkpoint is
        missing or unreadable, and CheckpointError (listing the config fields that differ) when
        the files are intact but do not fit this run. Nothing on disk is changed.
        """
        path = self.step_path(step)
        meta = self.read_meta(step)
        args = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iterator is not None:
            args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - sorted into damaged and incompatible below
            damage = self._find_damage(step, data_iterator is not None)
            if damage:
                raise DamagedCheckpointError(path, damage) from e
            diffs = config_diff(meta.get('config', {}), json.loads(config.to_json_best_effort()))
            more = f'; and {len(diffs) - 12} more' if len(diffs) > 12 else ''
            shown = '; '.join(diffs[:12]) + more
            hint = f' Config fields that differ from the checkpoint: {shown}.' if diffs else ''
            raise CheckpointError(
                f'Checkpoint {path} does not match this run ({_root_cause(e)}).{hint} '
                'Resume with the config it was saved with, or use a new --workdir.'
            ) from e
        rng = jax.random.wrap_key_data(np.asarray(meta['rng'], dtype=np.uint32))
        return restored['state'], rng

    def _find_damage(self, step: int, with_data: bool) -> str | None:
        """What is missing or unreadable in the step's files, read as saved (no target tree:
        independent of this run's config); None when every file reads back."""
        path = epath.Path(self.step_path(step))
        if with_data:
            files = sorted((path / 'data').glob('process_*-of-*.json'))
            if not files:
                return (
                    f'the data-iterator file data/process_{jax.process_index()}-of-'
                    f'{jax.process_count()}.json is missing.'
                )
            for f in files:
                try:
                    json.loads(f.read_text())
                except (OSError, ValueError) as e:
                    cause = _root_cause(e)
                    return f'the data-iterator file data/{f.name} cannot be read ({cause}).'
        previous = logging.get_verbosity()
        logging.set_verbosity(logging.ERROR)  # orbax warns about metadata files it does not need
        try:
            with ocp.PyTreeCheckpointer() as reader:
                tree = reader.metadata(path / 'state')
                tree = getattr(tree, 'item_metadata', tree)
                tree = getattr(tree, 'tree', tree)
                as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
                reader.restore(path / 'state', args=ocp.args.PyTreeRestore(restore_args=as_numpy))
        except Exception as e:  # noqa: BLE001 - any read failure of saved arrays is damage
            return f'state/ cannot be read ({_root_cause(e)}).'
        finally:
            logging.set_verbosity(previous)
        return None

    def restore_latest(
        self,
        abstract_state: Any,
        data_iterator: Any,
        config: ml_collections.ConfigDict,
        warn: Callable[[str], None],
    ) -> tuple[int, Any, jax.Array] | None:
        """Restores the newest readable checkpoint: (step, state, rng), or None if there is none.

        A damaged newer checkpoint is moved, unchanged, to `<workdir>/checkpoints_damaged/<step>`
        (out of the way of later saves and of max_to_keep) and `warn` says so; the run resumes
        from the next older one. If no checkpoint is readable, DamagedCheckpointError names the
        newest one's bad file and nothing is moved. An incompatible checkpoint (intact files,
        another config) raises CheckpointError at once: falling back would hide the mismatch.
        """
        damaged: list[tuple[int, DamagedCheckpointError]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, rng = self.restore(step, abstract_state, data_iterator, config)
            except DamagedCheckpointError as e:
                damaged.append((step, e))
                continue
            for bad_step, error in damaged:
                moved = self._set_aside(bad_step)
                warn(
                    f'Warning: {error} Resuming from the older checkpoint {self.step_path(step)}; '
                    f'the damaged folder was moved unchanged to {moved} for inspection.'
                )
            return step, state, rng
        if damaged:
            raise DamagedCheckpointError(
                damaged[0][1].path,
                f'{damaged[0][1].detail} No older checkpoint is readable either. Move the '
                'checkpoints folder away to start fresh, or use a new --workdir.',
            )
        return None

    def _set_aside(self, step: int) -> str:
        target = epath.Path(_local_path(self.workdir)) / 'checkpoints_damaged' / str(step)
        n = 1
        while target.exists():
            target = target.parent / f'{step}.{n}'
            n += 1
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            epath.Path(self.step_path(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'checkpoint_set_aside_{step}')
        self._manager.reload()
        return str(target)

    def wait(self) -> None:
        with self._naming_the_folder():
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self._naming_the_folder():
            self._manager.wait_until_finished()
        self._manager.close()


def _reader(workdir: str) -> ocp.CheckpointManager:
    """A read-only manager of an existing run; never creates folders (a typo stays a typo)."""
    directory = _local_path(os.path.join(workdir, 'checkpoints'))
    if '://' not in directory and not os.path.isdir(directory):
        if not os.path.exists(workdir):
            raise CheckpointError(
                f'{workdir} does not exist. Train that phase first, or fix the path.'
            )
        raise CheckpointError(
            f'No checkpoint in {directory}. Train that phase first (its workdir must be the '
            'folder given here).'
        )
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))


def saved_config(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """(config saved with the checkpoint, its step): the newest step unless `step` is given."""
    manager = _reader(workdir)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(
                f'No checkpoint in {manager.directory}. Train that phase first (its workdir '
                'must be the folder given here).'
            )
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise CheckpointError(
                f'Checkpoint {manager.directory}/{step} is unreadable ({type(e).__name__}: {e}).'
            ) from e
    finally:
        manager.close()
    return ml_collections.ConfigDict(meta['meta']['config']), int(step)


def restore_subtree(workdir: str, step: int, path: tuple[str, ...], target: Any) -> Any:
    """One subtree of a saved train state (e.g. ('params',) or ('aux', 'ema')), nothing else.

    `target` is the subtree's abstract value (jax.ShapeDtypeStruct leaves carrying the shardings
    to restore onto), or None to restore it as saved onto the default device. The optimizer
    state and everything else of the checkpoint is never read.
    """
    manager = _reader(workdir)
    try:
        if target is None:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
            tree = state['state']
        else:
            item = target
            for key in reversed(path):
                item = {key: item}
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=item,
                        # jax.Arrays on the target's shardings (numpy without restore_args).
                        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                        partial_restore=True,
                    )
                ),
            )
            tree = restored['state']
        for key in path:
            tree = tree[key]
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f'Checkpoint {manager.directory}/{step} has no {"/".join(path)} matching the model '
            f'rebuilt from its saved config ({type(e).__name__}: {e}).'
        ) from e
    finally:
        manager.close()
    return tree
