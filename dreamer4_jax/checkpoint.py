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


def load_trained(workdir: str, step: int | None = None) -> tuple[Any, ml_collections.ConfigDict]:
    """Params and config of a finished (or running) phase, from its own saved config.

    Later phases use this to load a frozen earlier model (the dynamics phase loads the
    tokenizer): the phase is rebuilt from the config stored in the checkpoint, so the caller
    needs only the folder. Restored on the host's default device, unsharded.
    """
    from dreamer4_jax import parallel  # local: keeps this module free of model imports
    from dreamer4_jax.train import phases

    ckpt = Checkpointer(workdir)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(
                f'No checkpoint in {ckpt.directory}. Train that phase first (its workdir must be '
                'the folder given here).'
            )
        meta = ckpt._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        config = ml_collections.ConfigDict(meta['meta']['config'])
        phase = phases.make_phase(config)
        abstract = jax.eval_shape(lambda: parallel.unboxed(phase.init(jax.random.key(0))))
        state, _ = ckpt.restore(step, abstract, None, config)
    finally:
        ckpt.close()
    return state.params, config
