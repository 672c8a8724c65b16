"""The task ladder's prompt rule, shared by closed-loop ladder play (eval/closed_loop.py) and the
ladder prompts of phase 3's uniform contexts (data/pipeline.py, ladder_prompts), so training
prompts a context exactly as evaluation would prompt that frame (PAPER Table 6's task order).

Dimension keys: E episodes (or windows), K tasks, L ladder rungs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def ladder_task(ladder_L: Array, unlocked_EK: Array) -> Array:
    """Prompted task per episode: the first ladder task not unlocked yet (the last if all are)."""
    done_EL = unlocked_EK[:, ladder_L]
    first = jnp.argmin(done_EL, axis=1)
    first = jnp.where(jnp.all(done_EL, axis=1), ladder_L.shape[0] - 1, first)
    return ladder_L[first]
