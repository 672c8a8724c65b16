"""Parameters carried from one phase into the next: load into a fresh state, freeze by path.

Phase 2 starts from the dynamics checkpoint plus new parameters (agent tokens, heads); phase 3
trains only two heads of the phase-2 model. The fresh state is created sharded first; the loaded
weights are restored onto the same shardings and swapped in (`load_into`), so nothing full-size
sits on one device and `init` never reads a checkpoint.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer4_jax import pretrained


def mask_by_prefix(tree: Any, prefixes: tuple[tuple[str, ...], ...], inside: bool) -> Any:
    """Bool tree like `tree` (boxes count as leaves): `inside` under any prefix, else not."""

    def one(path, _):
        keys = tuple(getattr(p, 'key', p) for p in path)
        return inside if any(keys[: len(q)] == q for q in prefixes) else not inside

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_box)


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def load_into(state: Any, part: str | None, loaded: Any, where: str) -> Any:
    """`state` with the earlier phase's `loaded` weights in place of fresh ones (warm start).

    part: the top-level key of state.params they belong to (None: all of params). Leaves only in
    the fresh state (new agent tokens, heads) keep their init; the optimizer state needs no
    change (Adam's moments start at zero either way). An EMA in state.aux restarts from the
    loaded weights.
    """
    if part is None:
        params = pretrained.replace_leaves(state.params, loaded, where)
    else:
        params = {
            **state.params,
            part: pretrained.replace_leaves(state.params[part], loaded, where),
        }
    aux = state.aux
    if isinstance(aux, dict) and 'ema' in aux:
        aux = {**aux, 'ema': jax.tree.map(jnp.copy, params)}
    return state.replace(params=params, aux=aux)
