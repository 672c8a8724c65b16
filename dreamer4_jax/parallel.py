"""Device mesh, logical-axis sharding, sharded state creation and global batches (DESIGN 5).

Model code names its dimensions with logical axes ('embed', 'mlp', 'batch', ...); the config's
rules table maps them to the mesh axes ('data', 'fsdp', 'model'). Nothing here knows a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamer4_jax.nn.partitioning import logical_spec

MESH_AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')  # a batch dimension is split over both (FSDP also splits data)

Rules = Sequence[tuple[str, Any]]


def maybe_initialize_distributed(config) -> None:
    """Calls jax.distributed.initialize() for multi-process runs (before any other jax call)."""
    d = config.distributed
    if not d.enabled:
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs = dict(
            coordinator_address=d.coordinator_address,
            num_processes=int(d.num_processes),
            process_id=int(d.process_id),
        )
    # On TPU pods and SLURM clusters jax discovers all three values by itself.
    jax.distributed.initialize(**kwargs)


def make_mesh(
    mesh_shape: Sequence[int],
    devices: Sequence[jax.Device] | None = None,
    num_slices: int = 1,
) -> Mesh:
    """A (data, fsdp, model) mesh; `mesh_shape` must already be resolved (no -1).

    num_slices > 1 (multi-slice TPU): the data axis spans the slices (data parallel over the
    slow data-center network) and everything else stays within a slice (FSDP and model
    parallel over the fast inter-chip links); the data size must be a multiple of num_slices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if math.prod(mesh_shape) != len(devices):
        raise ValueError(f'mesh shape {tuple(mesh_shape)} does not match {len(devices)} devices')
    if num_slices > 1:
        per_slice = (mesh_shape[0] // num_slices, *mesh_shape[1:])
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, (num_slices, 1, 1), devices)
    else:
        grid = np.asarray(devices, dtype=object).reshape(tuple(mesh_shape))
    # Classic auto-sharding axes: model code never sees the mesh, jit propagates shardings.
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> P:
    """Maps logical names of one array to a PartitionSpec for this mesh (nn.logical_spec)."""
    return logical_spec(logical, shape, dict(mesh.shape), rules)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a (possibly boxed) abstract tree; the result matches the unboxed tree.

    Leaves boxed with `nn.with_logical_partitioning` get their logical names mapped through the
    rules; every other leaf is replicated.
    """

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            if not hasattr(value, 'shape'):
                # An empty node standing for a leaf (optax's MaskedNode in the state of a
                # partitioned optimizer such as Muon's Adam half): nothing to shard.
                return value
            return NamedSharding(mesh, logical_to_spec(leaf.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def create_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args) -> tuple:
    """Creates a pytree already sharded: eval_shape for the layout, then jit with out_shardings.

    Returns (unboxed_tree, shardings). Nothing full-size is materialized on one device.
    """
    with nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_shardings(abstract, mesh, rules)

    def init_unboxed(*a):
        with nn.logical_axis_rules(rules):
            return nn.unbox(init_fn(*a))

    with jax.set_mesh(mesh):
        tree = jax.jit(init_unboxed, out_shardings=shardings)(*args)
    return tree, shardings


def unboxed(tree: Any) -> Any:
    """The tree without logical-partitioning boxes (plain arrays)."""
    return nn.unbox(tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; every other dimension replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_to_global(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's share of a batch into global arrays split over the batch axes.

    Each process passes only the rows it read; the global batch is their concatenation in
    process order (jax.make_array_from_process_local_data).
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def global_batch_size_to_local(batch_size: int) -> int:
    """This process's share of a global batch (validated divisible by config_checks)."""
    return batch_size // jax.process_count()
