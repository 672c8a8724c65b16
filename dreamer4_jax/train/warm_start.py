"""Parameters carried from one phase into the next: overlay a checkpoint, freeze by path.

Phase 2 starts from the dynamics checkpoint plus new parameters (agent tokens, heads); phase 3
trains only two heads of the phase-2 model. Both need the same two tree operations, on boxed
(logically partitioned) parameter trees so the loaded values keep their shardings.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer4_jax.config_checks import ConfigError


def mask_by_prefix(tree: Any, prefixes: tuple[tuple[str, ...], ...], inside: bool) -> Any:
    """Bool tree like `tree` (boxes count as leaves): `inside` under any prefix, else not."""

    def one(path, _):
        keys = tuple(getattr(p, 'key', p) for p in path)
        return inside if any(keys[: len(q)] == q for q in prefixes) else not inside

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_box)


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def overlay(fresh: Any, loaded: Any, where: str) -> Any:
    """`fresh` (boxed) with every leaf that `loaded` has replaced by the loaded value.

    Leaves only in `fresh` (new parameters such as the agent-token embedding) keep their init;
    a loaded leaf with another shape or with no place in `fresh` is an architecture mismatch.
    """
    flat = {
        tuple(getattr(p, 'key', p) for p in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(loaded)[0]
    }
    used = set()

    def one(path, leaf):
        key = tuple(getattr(p, 'key', p) for p in path)
        if key not in flat:
            return leaf
        used.add(key)
        value = leaf.value if _is_box(leaf) else leaf
        new = jnp.asarray(flat[key], value.dtype)
        if new.shape != value.shape:
            raise ConfigError(
                f'{where}: parameter {"/".join(key)} has shape {new.shape} in the '
                f'checkpoint but {value.shape} in this model; the architecture '
                "must match the checkpoint's saved config."
            )
        return leaf.replace_boxed(new) if _is_box(leaf) else new

    out = jax.tree_util.tree_map_with_path(one, fresh, is_leaf=_is_box)
    extra = sorted('/'.join(k) for k in set(flat) - used)
    if extra:
        raise ConfigError(
            f'{where}: checkpoint parameters {extra[:5]} have no place in this '
            'model; it was built from another architecture.'
        )
    return out
