"""Logical axis names for parameters and activations, robust to any mesh (DESIGN 5).

Model code names dimensions ('embed', 'heads', 'batch', 'act_mlp', ...); the rules table of the
config maps them to mesh axes. `constrain` is a no-op without a mesh or rules, and drops a mesh
axis whose size does not divide the dimension (e.g. 2 KV heads on a 4-way 'model' axis), so any
mesh/config pair runs; the dimension is then replicated over that axis. `logical_spec` is the
one interpreter of the rules table (parallel.py uses it for parameters and state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

Names = Sequence[str | None]


def param_init(init: Callable, names: Names) -> Callable:
    """Wrap an initializer so the parameter carries its logical axis names."""
    return nn.with_logical_partitioning(init, tuple(names))


def _mesh_axes_for(name: str | None, rules) -> tuple[str, ...]:
    """Mesh axes the rules table gives a logical name (the first matching rule)."""
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return ()


def logical_spec(
    names: Names, shape: Sequence[int], mesh_shape: Mapping[str, int], rules
) -> PartitionSpec:
    """The one interpreter of the rules table: logical names of one array -> PartitionSpec.

    A mesh axis is skipped (that dimension is replicated over it) when it is not in the mesh,
    has size 1, does not divide the dimension (with the axes already kept for it), or was used
    by an earlier dimension; so one rules table serves every model size, including GQA with
    fewer KV heads than the model axis. Parameters and activations both go through here.
    """
    if len(names) != len(shape):
        raise ValueError(f'{len(names)} logical names {tuple(names)} for shape {tuple(shape)}')
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape, strict=True):
        axes, size = [], 1
        for axis in _mesh_axes_for(name, rules):
            axis_size = mesh_shape.get(axis, 1)
            if axis in used or axis_size == 1 or int(dim) % (size * axis_size):
                continue
            axes.append(axis)
            size *= axis_size
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Names) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh + rules context."""
    if len(names) != x.ndim:
        raise ValueError(f'constrain: {len(names)} names {tuple(names)} for shape {x.shape}')
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(
        x, logical_spec(names, x.shape, dict(mesh.shape), rules)
    )


def fitted_spec(shape: Sequence[int], names: Names, rules, mesh_shape: dict[str, int]):
    """PartitionSpec for a parameter of `shape` under `rules` (`logical_spec`, argument order
    of the parameter-layout helpers)."""
    return logical_spec(names, shape, mesh_shape, rules)
