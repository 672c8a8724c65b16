"""Attention cores behind one interface (PAPER 3.1-3.2; DESIGN 5).

`attend` takes grouped-query inputs and a boolean mask and dispatches on the configured
implementation; model code calls only `attend`:
  'einsum'     plain XLA einsums; supports everything (any mask, soft-cap, GQA, cache keys).
  'dpa_xla'    jax.nn.dot_product_attention(implementation='xla'); no soft-cap.
  'dpa_cudnn'  jax.nn.dot_product_attention(implementation='cudnn'); fused kernel on GPU
               (bf16/fp16 inputs), no soft-cap.
  'splash'     the Pallas splash-attention kernel for TPU (nn/splash.py): soft-cap, GQA, static
               masks plus per-token segment ids; self-attention only.
  'splash_interpret'  the same kernel in Pallas interpret mode (runs on CPU; for tests).

Dimension keys: X... any leading batch dims (e.g. B,T in space layers; B,S in time layers),
Q query positions, M key positions, N KV heads, G query heads per KV head (H = N*G), K head dim.
Query head h = n*G + g, which is also jax.nn.dot_product_attention's GQA grouping.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dreamer4_jax.nn.splash import splash_attend

SPLASH_IMPLS = ('splash', 'splash_interpret')
# exp() of soft-capped logits cannot overflow float32 below this cap, so the max-subtraction
# pass of the softmax can be skipped (one fewer reduction over the logits).
_SAFE_EXP_CAP = 80.0


def softcap_logits(logits: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(logits / cap) (Gemma-2 style soft-capping, PAPER 3.1); identity for None."""
    if cap is None:
        return logits
    return cap * jnp.tanh(logits / cap)


def _expand_mask(mask: jax.Array) -> jax.Array:
    """[X..., Q, M] -> [X..., 1, 1, Q, M] to broadcast against logits [X..., N, G, Q, M]."""
    return mask[..., None, None, :, :]


def _attend_einsum(q, k, v, mask, softcap):
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum(
        '...qngk,...mnk->...ngqm',
        q * jnp.asarray(scale, q.dtype),
        k,
        preferred_element_type=jnp.float32,
    )
    logits = softcap_logits(logits, softcap)
    keep = _expand_mask(mask)
    if softcap is not None and softcap <= _SAFE_EXP_CAP:
        weights = jnp.where(keep, jnp.exp(logits), 0.0)
    else:
        logits = jnp.where(keep, logits, -1e30)
        peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        weights = jnp.exp(logits - peak)
    probs = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return jnp.einsum('...ngqm,...mnk->...qngk', probs.astype(v.dtype), v)


def _attend_dpa(q, k, v, mask, implementation):
    lead = q.shape[:-4]
    nq, n, g, kd = q.shape[-4:]
    m = k.shape[-3]
    flat = math.prod(lead)
    q4 = q.reshape(flat, nq, n * g, kd)
    k4 = k.reshape(flat, m, n, kd)
    v4 = v.reshape(flat, m, n, kd)
    if mask.ndim == 2:
        mask4 = mask[None, None]
    else:
        mask4 = jnp.broadcast_to(mask, (*lead, nq, m)).reshape(flat, 1, nq, m)
    out = jax.nn.dot_product_attention(q4, k4, v4, mask=mask4, implementation=implementation)
    return out.reshape(q.shape)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    softcap: float | None = None,
    impl: str = 'einsum',
    segments: jax.Array | None = None,
) -> jax.Array:
    """Masked grouped-query attention.

    Args:
      q: [X..., Q, N, G, K] queries (already RoPE-rotated and normalized).
      k, v: [X..., M, N, K] keys and values.
      mask: bool, broadcastable to [X..., Q, M]; True = may attend. Every query row must keep
        at least one key.
      softcap: logit soft-cap or None.
      impl: 'einsum', 'dpa_xla', 'dpa_cudnn', 'splash' or 'splash_interpret' (the splash kernel
        needs a static NumPy [Q, M] mask and Q == M).
      segments: optional int [X..., Q] for self-attention (Q == M): a query reads only keys
        with its own id, in addition to the mask.
    Returns:
      [X..., Q, N, G, K] attention outputs.
    """
    if impl in SPLASH_IMPLS:
        return splash_attend(
            q, k, v, mask, segments=segments, softcap=softcap, interpret=impl == SPLASH_IMPLS[1]
        )
    if segments is not None:
        mask = mask & (segments[..., :, None] == segments[..., None, :])
    if impl == 'einsum':
        return _attend_einsum(q, k, v, mask, softcap)
    if softcap is not None:
        raise ValueError(f'attention impl {impl!r} has no soft-cap; use impl="einsum"')
    if impl == 'dpa_xla':
        return _attend_dpa(q, k, v, mask, 'xla')
    if impl == 'dpa_cudnn':
        return _attend_dpa(q, k, v, mask, 'cudnn')
    raise ValueError(
        f"unknown attention impl {impl!r}; use 'einsum', 'dpa_xla', 'dpa_cudnn' or 'splash'"
    )
