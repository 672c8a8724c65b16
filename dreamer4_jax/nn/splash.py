"""The Pallas splash-attention kernel for TPU behind the project's attention interface (DESIGN 5).

Splash attention is a block-sparse flash-attention kernel: the mask is static (NumPy), so blocks
that are fully masked are skipped and never loaded; per-token segment ids add a dynamic rule
(query and key must share a segment). It supports logit soft-capping (PAPER 3.1). It does not
scale queries by 1/sqrt(K): `splash_attend` does, like the einsum path.

The project's rules map onto it as follows (nn/block.py builds them):
  space layers   the layout's [S, S] modality mask (static).
  time layers    the causal sliding window over frames 0..T-1 (static); rows trained as separate
                 images (PAPER 6.5) get segment id t + 1 for frame t, other rows 0, so a flagged
                 query reads only its own frame.
  dense layers   the block-causal space-time mask (frame rule AND modality rule, static), with
                 the same per-frame segments.
Cached inference (one new frame against a KV cache) keeps the einsum path: the kernel's masks
must be static and those queries are few.

Lengths are padded to a multiple of 128 (the kernel's lane width); padded queries read only
padded keys (their outputs are dropped) and real queries never read padded keys. GQA: the
kernel's multi-query form runs once per KV head (vmapped), with its G query heads. Under a mesh
the kernel runs inside `jax.shard_map` (a Pallas call cannot be partitioned by XLA): batch dims
split as the 'batch' rule says, KV heads as 'act_kv_heads'.

`interpret=True` runs the same kernel in Pallas interpret mode (any backend; for CPU tests).

Dimension keys: X... leading batch dims, Q query positions, M key positions, N KV heads,
G query heads per KV head, K head dim, L padded length.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

from dreamer4_jax.nn.partitioning import fitted_spec

LANES = 128  # the kernel's key/query blocks are multiples of this


def padded_length(n: int) -> int:
    return -(-n // LANES) * LANES


def _block(length: int) -> int:
    """Largest of 512 / 256 / 128 dividing the padded length (bigger blocks, fewer steps)."""
    return next(b for b in (512, 256, 128) if length % b == 0)


def pad_mask(mask_QM: np.ndarray) -> np.ndarray:
    """[L, L] mask: the real block as given, padded queries read padded keys only."""
    q, m = mask_QM.shape
    if q != m:
        raise ValueError(f'splash attention here is self-attention (Q == M), got {mask_QM.shape}')
    length = padded_length(q)
    out = np.zeros((length, length), bool)
    out[:q, :m] = mask_QM
    out[q:, q:] = True
    return out


def _kernel(mask_LL: np.ndarray, heads: int, softcap: float | None, interpret: bool):
    """The multi-query kernel for `heads` query heads sharing one key/value head."""
    length = mask_LL.shape[0]
    b = _block(length)
    sizes = sk.BlockSizes(
        block_q=b,
        block_kv=b,
        block_kv_compute=b,
        block_q_dkv=b,
        block_kv_dkv=b,
        block_kv_dkv_compute=b,
        block_q_dq=b,
        block_kv_dq=b,
    )
    mask = sm.MultiHeadMask([sm.NumpyMask(mask_LL)] * heads)
    return sk.make_splash_mqa_single_device(
        mask, block_sizes=sizes, attn_logits_soft_cap=softcap, interpret=interpret
    )


def _core(q, k, v, segments, *, mask_LL, softcap, interpret):
    """Per-shard computation: q [X..., Q, N, G, K], k/v [X..., M, N, K], segments [X..., Q]."""
    lead = q.shape[:-4]
    nq, n, g, kd = q.shape[-4:]
    flat = math.prod(lead)
    pad = mask_LL.shape[0] - nq
    # [X, Q, N, G, K] -> [Xf, N, G, L, K]; [X, M, N, K] -> [Xf, N, L, K]
    q5 = jnp.moveaxis(q.reshape(flat, nq, n, g, kd), 1, 3)
    k4 = jnp.moveaxis(k.reshape(flat, nq, n, kd), 1, 2)
    v4 = jnp.moveaxis(v.reshape(flat, nq, n, kd), 1, 2)
    q5 = jnp.pad(q5, ((0, 0), (0, 0), (0, 0), (0, pad), (0, 0)))
    k4 = jnp.pad(k4, ((0, 0), (0, 0), (0, pad), (0, 0)))
    v4 = jnp.pad(v4, ((0, 0), (0, 0), (0, pad), (0, 0)))
    kernel = _kernel(mask_LL, g, softcap, interpret)
    if segments is None:
        per_head = lambda qh, kh, vh: kernel(qh, kh, vh)
        out = jax.vmap(jax.vmap(per_head))(q5, k4, v4)
    else:
        # Padded tokens get segment -1: they never share a segment with a real token.
        seg = jnp.pad(segments.reshape(flat, nq).astype(jnp.int32), ((0, 0), (0, pad)),
                      constant_values=-1)  # fmt: skip

        def per_row(qr, kr, vr, sr):
            ids = sk.SegmentIds(q=sr, kv=sr)
            return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(qr, kr, vr)

        out = jax.vmap(per_row)(q5, k4, v4, seg)
    out = out[:, :, :, :nq]  # [Xf, N, G, Q, K]
    return jnp.moveaxis(out, 3, 1).reshape(q.shape)


def splash_attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask_QM: np.ndarray,
    *,
    segments: jax.Array | None = None,
    softcap: float | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Masked grouped-query self-attention with the splash kernel.

    Args:
      q: [X..., Q, N, G, K] queries (RoPE-rotated, normalized; not yet scaled).
      k, v: [X..., Q, N, K] keys and values of the same positions.
      mask_QM: static NumPy bool [Q, Q]; True = may attend. Every row keeps at least one key.
      segments: optional int [X..., Q]; a query reads a key only if their ids are equal.
      softcap: logit soft-cap c (c * tanh(logits / c)) or None.
      interpret: run in Pallas interpret mode (CPU tests) instead of compiling for TPU.
    Returns:
      [X..., Q, N, G, K].
    """
    if q.ndim < 5:
        raise ValueError(
            f'splash_attend: q must be [X..., Q, N, G, K] with a batch dim, got {q.shape}'
        )
    mask_QM = np.asarray(mask_QM, bool)
    if mask_QM.ndim != 2 or not mask_QM.any(axis=1).all():
        raise ValueError('splash_attend needs a static [Q, Q] mask with a key in every row')
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    core = functools.partial(_core, mask_LL=pad_mask(mask_QM), softcap=softcap, interpret=interpret)
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return core(q, k, v, segments)
    # Shard the leading batch dim and the KV heads as the rules say; everything else is local.
    extra = (None,) * (q.ndim - 5)  # leading dims after the first one
    sizes = dict(mesh.shape)
    q_spec = fitted_spec(q.shape, ('batch', *extra, None, 'act_kv_heads', None, None), rules, sizes)
    kv_spec = PartitionSpec(*q_spec[:-2], None)
    seg_spec = PartitionSpec(*q_spec[:-3])
    if segments is None:
        fn = jax.shard_map(
            lambda a, b, c: core(a, b, c, None),
            in_specs=(q_spec, kv_spec, kv_spec),
            out_specs=q_spec,
            check_vma=False,
        )
        return fn(q, k, v)
    fn = jax.shard_map(
        core, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec, check_vma=False
    )
    return fn(q, k, v, jnp.broadcast_to(segments, q.shape[:-3]))
