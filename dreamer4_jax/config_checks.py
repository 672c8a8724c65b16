"""Config validation that runs before any work starts (no device memory used, nothing written).

Each check raises ConfigError with one message that names the field and says how to fix it.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence

import ml_collections

from dreamer4_jax.configs import OPTIMIZERS
from dreamer4_jax.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field and the fix."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/exp.py[:arg]` the way --config does (get_config(arg)).

    Any failure inside the experiment file (an unknown variant, a typo in it) becomes one
    ConfigError naming the file; DREAMER4_DEBUG=1 shows the traceback behind it.
    """
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        where = os.path.dirname(path) or '.'
        known = (
            sorted(f for f in os.listdir(where) if f.endswith('.py') and not f.startswith('_'))
            if os.path.isdir(where)
            else []
        )
        hint = f' Files in {where}: {", ".join(known)}.' if known else ''
        raise ConfigError(f'--config={spec}: no config file at {path}.{hint}')
    module_spec = importlib.util.spec_from_file_location('_experiment_config', path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's experiment file: report, do not crash
        raise ConfigError(
            f'--config={spec}: {path} fails to load ({type(e).__name__}: {e}).'
        ) from e
    if not callable(getattr(module, 'get_config', None)):
        raise ConfigError(
            f'--config={spec}: {path} has no get_config(arg) function; an experiment file '
            'defines get_config returning an ml_collections.ConfigDict.'
        )
    try:
        return module.get_config(arg or None) if arg else module.get_config()
    except (ValueError, KeyError, TypeError) as e:
        # experiments raise ValueError for an unknown variant, with the variants in the message.
        raise ConfigError(f'--config={spec}: {e}') from e


def check_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Checks that every `--config.a.b=value` override names an existing field.

    ml_collections answers an unknown field with a bare AttributeError deep in flag parsing; this
    runs first and says which field is unknown and which fields exist at that level.
    """
    for path in overrides:
        node = config
        walked = []
        for part in path.split('.'):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = '.'.join(walked) or '<top level>'
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(
                    f"Unknown config field 'config.{path}': '{part}' does not exist under "
                    f'{where}. Fields there: {", ".join(known) or "(none: not a sub-config)"}. '
                    'Fix the spelling, or add the field to the experiment config.'
                )
            walked.append(part)
            node = node[part]


def override_paths(argv: Sequence[str]) -> list[str]:
    """The dotted paths of `--config.x.y=...` (or `--config.x.y value`) flags in argv."""
    paths = []
    for arg in argv:
        if arg.startswith('--config.'):
            paths.append(arg[len('--config.') :].split('=', 1)[0])
    return paths


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """Fills one -1 entry of (data, fsdp, model) so the product equals num_devices."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ConfigError(
            f'config.mesh.shape={shape} must have 3 entries (data, fsdp, model), e.g. (-1, 1, 1).'
        )
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(
            f'config.mesh.shape={shape}: use positive sizes and at most one -1 (filled with the '
            'remaining devices).'
        )
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(
                f'config.mesh.shape={shape} does not fit {num_devices} devices: {known} does not '
                f'divide {num_devices}. Pick sizes whose product divides {num_devices}.'
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f'config.mesh.shape={shape} needs {math.prod(shape)} devices but {num_devices} are '
            f'available. Set config.mesh.shape so the product is {num_devices} (or use -1 in one '
            'entry).'
        )
    return shape  # type: ignore[return-value]


def check_batch_size(batch_size: int, mesh_shape: Sequence[int], process_count: int) -> None:
    """The global batch must split evenly over data x fsdp devices and over processes."""
    shards = mesh_shape[0] * mesh_shape[1]
    if batch_size < 1:
        raise ConfigError(
            f'config.train.batch_size={batch_size} must be a positive integer (the global batch '
            f'over all devices), e.g. {max(shards, 8)}.'
        )
    if batch_size % shards:
        raise ConfigError(
            f'config.train.batch_size={batch_size} is not divisible by the data-parallel size '
            f'{shards} (mesh data={mesh_shape[0]} x fsdp={mesh_shape[1]}). Use a multiple of '
            f'{shards}, e.g. {max(shards, (batch_size // shards or 1) * shards)}.'
        )
    if batch_size % process_count:
        raise ConfigError(
            f'config.train.batch_size={batch_size} is not divisible by the number of processes '
            f'{process_count}; each process feeds an equal share. '
            f'Use a multiple of {process_count}.'
        )


def check_slices(num_slices: int, mesh_shape: Sequence[int]) -> None:
    """Multi-slice meshes put the data axis across slices: it must split evenly over them."""
    if num_slices < 1 or mesh_shape[0] % num_slices:
        raise ConfigError(
            f'config.mesh.num_slices={num_slices} must be >= 1 and divide the data axis of '
            f'config.mesh.shape={tuple(mesh_shape)} (data parallel across slices, FSDP within): '
            f'e.g. config.mesh.shape=({num_slices}, -1, 1).'
        )


def check_workdir(workdir: str) -> None:
    """The workdir may not exist yet, but its parent must (we never create deep trees by typo),
    and the nearest existing one of the two must be writable."""
    if not workdir:
        raise ConfigError('--workdir is required: the folder for checkpoints, metrics and outputs.')
    if '://' in workdir:  # gs://bucket/run on TPU pods: orbax writes there; nothing to check here
        return
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise ConfigError(
            f'--workdir={workdir}: its parent folder {parent} does not exist. Create it first '
            '(mkdir -p), or fix the path.'
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f'--workdir={workdir} exists and is not a folder. Pick another path.')
    existing = workdir if os.path.isdir(workdir) else parent
    # os.access also answers False on a read-only file system, for root too.
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f'--workdir={workdir}: {os.path.abspath(existing)} is not writable (no permission or '
            'a read-only file system). Pick a folder you can write to.'
        )


def check_train(config: ml_collections.ConfigDict) -> None:
    """Loop settings that would silently misbehave."""
    t = config.train
    for name in ('steps', 'log_every', 'checkpoint_every'):
        if int(t[name]) <= 0:
            raise ConfigError(f'config.train.{name}={t[name]} must be a positive integer.')
    if int(t.eval_every) < 0:
        raise ConfigError(f'config.train.eval_every={t.eval_every} must be >= 0 (0: at the end).')
    if int(t.keep_checkpoints) < 1:
        raise ConfigError(f'config.train.keep_checkpoints={t.keep_checkpoints} must be >= 1.')
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f'config.train.optimizer={t.optimizer!r} must be one of {OPTIMIZERS}.')


def devices_to_use(config: ml_collections.ConfigDict, available: int, process_count: int) -> int:
    """How many devices the mesh spans (config.mesh.num_devices, 0 = all)."""
    n = int(config.mesh.num_devices)
    if n == 0:
        return available
    if n < 0 or n > available:
        raise ConfigError(
            f'config.mesh.num_devices={n} but {available} devices are available. Use 0 (all) '
            f'or a number from 1 to {available}.'
        )
    if process_count > 1:
        raise ConfigError(
            'config.mesh.num_devices must be 0 (all devices) in multi-process runs: every '
            'process must take part in the mesh.'
        )
    return n


def validate(
    config: ml_collections.ConfigDict, workdir: str, num_devices: int, process_count: int
) -> tuple[int, int, int]:
    """Runs every check; returns the resolved mesh shape."""
    check_workdir(workdir)
    check_train(config)
    num_devices = devices_to_use(config, num_devices, process_count)
    mesh_shape = resolve_mesh_shape(config.mesh.shape, num_devices)
    check_slices(int(config.mesh.get('num_slices', 1)), mesh_shape)
    check_batch_size(int(config.train.batch_size), mesh_shape, process_count)
    return mesh_shape
