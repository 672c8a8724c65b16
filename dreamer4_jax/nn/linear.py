"""Projections as 2D matmuls and a split with a concatenating backward (speed, DESIGN 5).

Why not plain einsums: XLA:CPU compiles the weight gradient of an einsum over [B, T, S, D]
activations as g^T x with g transposed in memory first (a copy of the largest activation per
matmul) and a slower GEMM orientation; the same product written on [B*T*S, D] views becomes one
x^T g GEMM with no copy. Slicing a fused projection (q/k/v, SwiGLU gate/up) differentiates into
pad + add chains; `split` gives the backward as one concatenation instead.

Dimension keys: N flattened rows (B*T*S), I input features, O output features.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def project(x: jax.Array, w: jax.Array, n_in: int, dtype) -> jax.Array:
    """Contract the last `n_in` axes of x with the first `n_in` axes of w as one 2D matmul."""
    lead, feat_in = x.shape[:-n_in], x.shape[-n_in:]
    if tuple(w.shape[:n_in]) != tuple(feat_in):
        raise ValueError(f'project: x features {feat_in} do not match kernel {w.shape}')
    out = w.shape[n_in:]
    x_NI = x.reshape(math.prod(lead), math.prod(feat_in)).astype(dtype)
    w_IO = w.reshape(math.prod(feat_in), math.prod(out)).astype(dtype)
    return (x_NI @ w_IO).reshape(*lead, *out)


def _offsets(sizes):
    total, acc = 0, []
    for s in sizes[:-1]:
        total += s
        acc.append(total)
    return acc


def _split_impl(x, sizes, axis):
    return tuple(jnp.split(x, _offsets(sizes), axis=axis))


def _split_fwd(x, sizes, axis):
    return _split_impl(x, sizes, axis), None


def _split_bwd(sizes, axis, _, cts):
    return (jnp.concatenate(cts, axis=axis),)


_split = jax.custom_vjp(_split_impl, nondiff_argnums=(1, 2))
_split.defvjp(_split_fwd, _split_bwd)


def split(x: jax.Array, sizes: tuple[int, ...], axis: int = -1) -> tuple[jax.Array, ...]:
    """Split x along `axis` into parts of `sizes`; the gradient is one concatenate."""
    axis = axis % x.ndim
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f'split: sizes {sizes} do not add up to {x.shape[axis]}')
    return _split(x, tuple(sizes), axis)
