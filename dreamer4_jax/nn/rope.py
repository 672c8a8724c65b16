"""Rotary position embeddings (PAPER 3.1 uses RoPE; its layout is unspecified, PAPER 3.2).

Our choice: time layers rotate by the absolute frame index; space layers by the token index
within the frame block (`TokenLayout.positions`); the dense ablation splits the rotary pairs in
half, the first half rotated by the frame index and the second by the token index, so scores
depend only on (frame offset, token offset). Rotate-half form: pairs are (x[i], x[i + K/2]),
which needs no strided gathers.

Dimension keys: P positions, K head dim (K/2 rotary pairs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(pos_P: jax.Array, num_pairs: int, base: float) -> jax.Array:
    """[..., P, num_pairs] rotation angles pos * base^(-i / num_pairs)."""
    inv_freq = base ** (-jnp.arange(num_pairs, dtype=jnp.float32) / num_pairs)
    return jnp.asarray(pos_P, jnp.float32)[..., None] * inv_freq


def rope_tables(angles: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of the angles, each [..., K/2]."""
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate pairs (x[i], x[i + K/2]) of the last axis; cos/sin broadcast to x[..., :K/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos.astype(x.dtype)
    sin = sin.astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
