"""Logical axis names for parameters and activations, robust to any mesh (DESIGN 5).

Model code names dimensions ('embed', 'heads', 'batch', 'act_mlp', ...); the rules table of the
config maps them to mesh axes. `constrain` is a no-op without a mesh or rules, and drops a mesh
axis whose size does not divide the dimension (e.g. 2 KV heads on a 4-way 'model' axis), so any
mesh/config pair runs; the dimension is then replicated over that axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

Names = Sequence[str | None]


def param_init(init: Callable, names: Names) -> Callable:
    """Wrap an initializer so the parameter carries its logical axis names."""
    return nn.with_logical_partitioning(init, tuple(names))


def _fit(dim: int, axes, mesh_shape: dict[str, int]):
    """Keep the longest prefix of `axes` whose total size divides `dim`."""
    if axes is None:
        return None
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    size = 1
    for a in axes:
        if a not in mesh_shape or dim % (size * mesh_shape[a]):
            break
        size *= mesh_shape[a]
        kept.append(a)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else tuple(kept)


def constrain(x: jax.Array, names: Names) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh + rules context."""
    if len(names) != x.ndim:
        raise ValueError(f'constrain: {len(names)} names {tuple(names)} for shape {x.shape}')
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    mesh_shape = dict(mesh.shape)
    fitted = [_fit(int(d), a, mesh_shape) for d, a in zip(x.shape, spec, strict=True)]
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*fitted))


def fitted_spec(shape: Sequence[int], names: Names, rules, mesh_shape: dict[str, int]):
    """PartitionSpec for a parameter of `shape` under `rules`, dropping non-dividing axes."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    return PartitionSpec(*[_fit(int(d), a, mesh_shape) for d, a in zip(shape, spec, strict=True)])
