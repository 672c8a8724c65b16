"""Orbax checkpoints of train state + data-iterator position + rng + config (DESIGN 6).

Layout: `workdir/checkpoints/<step>/{state,data,meta}`. Orbax writes each step into a temporary
folder and renames it when complete, so a killed save never looks like a checkpoint. A restart
with the same command finds the latest step and resumes from it; restoring onto a different mesh
works because the restore target carries the new shardings.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored; the message names the folder and what to do."""


def _config_diff(saved: dict, current: dict, prefix: str = '') -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, '<missing>'), current.get(key, '<missing>')
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f'{prefix}{key}.')
        elif a != b:
            diffs.append(f'{prefix}{key}: checkpoint {a!r} vs now {b!r}')
    return diffs


class Checkpointer:
    """Saves and restores one run's checkpoints (all processes call every method)."""

    def __init__(self, workdir: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
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
        self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)

    def restore(
        self,
        step: int,
        abstract_state: Any,
        data_iterator: Any,
        config: ml_collections.ConfigDict,
    ) -> tuple[Any, jax.Array]:
        """Restores state (onto the shardings of `abstract_state`) and the iterator in place.

        Returns (state, rng). Raises CheckpointError for a corrupt or incompatible checkpoint;
        nothing on disk is changed in either case.
        """
        path = os.path.join(self.directory, str(step))
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta['meta']
        except Exception as e:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise CheckpointError(
                f'Checkpoint {path} is unreadable ({type(e).__name__}: {e}). It may be corrupt '
                'or partly deleted. Move that folder away to resume from an earlier step, or use '
                'a new --workdir to start fresh.'
            ) from e
        current = json.loads(config.to_json_best_effort())
        diffs = _config_diff(meta.get('config', {}), current)
        args = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iterator is not None:
            args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001
            hint = (
                ('\nConfig fields that differ from the checkpoint:\n  ' + '\n  '.join(diffs))
                if (diffs)
                else ''
            )
            raise CheckpointError(
                f'Checkpoint {path} does not match this run ({type(e).__name__}: {e}).{hint}\n'
                'Resume with the config it was saved with, or use a new --workdir.'
            ) from e
        rng = jax.random.wrap_key_data(np.asarray(meta['rng'], dtype=np.uint32))
        return restored['state'], rng

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _reader(workdir: str) -> ocp.CheckpointManager:
    """A read-only manager of an existing run; never creates folders (a typo stays a typo)."""
    directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if not os.path.isdir(directory):
        what = 'does not exist' if not os.path.exists(workdir) else 'has no checkpoints/ folder'
        raise CheckpointError(
            f'{workdir} {what}: no finished run there. Train that phase first, or point the '
            'config at the workdir of the run you mean.'
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
