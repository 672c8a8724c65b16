"""One pre-norm transformer block: attention (space, axial time or dense) and a SwiGLU MLP.

PAPER 3.1: pre-layer RMSNorm, RoPE, SwiGLU; QK-norm and logit soft-capping; GQA. Queries, keys
and values come from one fused matmul whose kernel is [D, N, G + 2, K] (per KV head: G query
heads, one key, one value), so tensor parallelism over KV heads keeps each group on one device.
The SwiGLU gate and up projections are one [D, 2, F] matmul.

Dimension keys: B batch, T frames (queries), M key frames, S tokens per frame, D width,
H query heads, N KV heads, G = H / N, K head dim, F MLP hidden.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax.nn.attention import SPLASH_IMPLS, attend
from dreamer4_jax.nn.config import TransformerConfig
from dreamer4_jax.nn.layout import TokenLayout, dense_mask, frame_mask, independent_frame_mask
from dreamer4_jax.nn.linear import project, split
from dreamer4_jax.nn.mlp import ACT_BTSD, SwiGLU, fan_in_init
from dreamer4_jax.nn.norms import RMSNorm, rms_norm
from dreamer4_jax.nn.partitioning import constrain, param_init
from dreamer4_jax.nn.rope import apply_rope, rope_angles, rope_tables

CacheIn = tuple[jax.Array, jax.Array, jax.Array] | None


def _rope_qk(q, k, cos, sin):
    """Rotate q [B,T,S,N,G,K] and k [B,T,S,N,K] with tables broadcastable to [B,T,S,1,K/2]."""
    return apply_rope(q, cos[..., None, :], sin[..., None, :]), apply_rope(k, cos, sin)


class Attention(nn.Module):
    """Multi-head attention of one kind: 'space', 'time' (axial) or 'dense'."""

    config: TransformerConfig
    kind: str
    layout: TokenLayout

    @nn.compact
    def __call__(
        self,
        x_BTSD: jax.Array,
        frame_pos_T: jax.Array,
        independent_B: jax.Array | None = None,
        cache: CacheIn = None,
    ):
        """Returns (y_BTSD, (k_BTSNK, v_BTSNK)); the keys/values are for the KV cache."""
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        d, h, n, kd = cfg.width, cfg.num_heads, cfg.kv_heads, cfg.key_dim
        g = h // n
        b, t, s, _ = x_BTSD.shape

        w_qkv = self.param(
            'qkv',
            param_init(fan_in_init(1.0, 0, (1, 2, 3)), ('embed', 'kv_heads', None, 'head_dim')),
            (d, n, g + 2, kd),
            jnp.float32,
        )
        qkv = project(x_BTSD, w_qkv, 1, dt)
        qkv = constrain(qkv, ('batch', 'time', 'tokens', 'act_kv_heads', None, None))
        q_BTSNGK, k_BTSN1K, v_BTSN1K = split(qkv, (g, 1, 1), axis=-2)
        k_BTSNK, v_BTSNK = k_BTSN1K[..., 0, :], v_BTSN1K[..., 0, :]
        if cfg.qk_norm:  # PAPER 3.2: RMSNorm on per-head q and k (scale shared over heads)
            scale_init = nn.initializers.constant(cfg.qk_norm_scale)
            q_scale = self.param(
                'q_norm', param_init(scale_init, ('head_dim',)), (kd,), jnp.float32
            )
            k_scale = self.param(
                'k_norm', param_init(scale_init, ('head_dim',)), (kd,), jnp.float32
            )
            q_BTSNGK = rms_norm(q_BTSNGK, q_scale, cfg.norm_eps)
            k_BTSNK = rms_norm(k_BTSNK, k_scale, cfg.norm_eps)

        if self.kind == 'space':
            cos, sin = rope_tables(rope_angles(self.layout.positions(), kd // 2, cfg.rope_base))
            q_BTSNGK, k_BTSNK = _rope_qk(q_BTSNGK, k_BTSNK, cos[:, None, :], sin[:, None, :])
            o_BTSNGK = attend(
                q_BTSNGK,
                k_BTSNK,
                v_BTSNK,
                self.layout.space_mask(),
                softcap=cfg.softcap,
                impl=cfg.attention_impl,
            )
        else:
            q_BTSNGK, k_BTSNK = self._rope_time(q_BTSNGK, k_BTSNK, frame_pos_T)
            o_BTSNGK = self._attend_frames(
                q_BTSNGK, k_BTSNK, v_BTSNK, frame_pos_T, independent_B, cache
            )

        o_BTSHK = constrain(
            o_BTSNGK.reshape(b, t, s, h, kd), ('batch', 'time', 'tokens', 'act_heads', None)
        )
        w_out = self.param(
            'out',
            param_init(
                fan_in_init(1.0 / (2 * cfg.depth), (0, 1), 2), ('heads', 'head_dim', 'embed')
            ),
            (h, kd, d),
            jnp.float32,
        )
        y_BTSD = project(o_BTSHK, w_out, 2, dt)
        return constrain(y_BTSD, ACT_BTSD), (k_BTSNK, v_BTSNK)

    def _rope_time(self, q, k, frame_pos_T):
        """Time layers: absolute frame index; dense: frame index and token index, half each."""
        cfg = self.config
        kd = cfg.key_dim
        if self.kind == 'time':
            angles = rope_angles(frame_pos_T, kd // 2, cfg.rope_base)[:, None, None, :]
        else:
            a_t = rope_angles(frame_pos_T, kd // 4, cfg.rope_base)[:, None, :]
            a_s = rope_angles(self.layout.positions(), kd // 4, cfg.rope_base)[None, :, :]
            a_t, a_s = jnp.broadcast_arrays(a_t, a_s)
            angles = jnp.concatenate([a_t, a_s], axis=-1)[:, :, None, :]
        cos, sin = rope_tables(angles)
        return _rope_qk(q, k, cos, sin)

    def _attend_frames(self, q_BTSNGK, k_BTSNK, v_BTSNK, frame_pos_T, independent_B, cache):
        """Causal attention over frames, from the cache (if any) and the new frames."""
        cfg = self.config
        b, t, s = q_BTSNGK.shape[:3]
        if cache is None and cfg.attention_impl in SPLASH_IMPLS:
            return self._attend_frames_static(q_BTSNGK, k_BTSNK, v_BTSNK, independent_B)
        if cache is None:
            k_BMSNK, v_BMSNK, k_pos_M, k_valid_M = k_BTSNK, v_BTSNK, frame_pos_T, None
        else:
            ck, cv, cpos_F = cache
            k_BMSNK = jnp.concatenate([ck.astype(k_BTSNK.dtype), k_BTSNK], axis=1)
            v_BMSNK = jnp.concatenate([cv.astype(v_BTSNK.dtype), v_BTSNK], axis=1)
            k_pos_M = jnp.concatenate([cpos_F, frame_pos_T])
            ones = jnp.ones(frame_pos_T.shape, bool)
            k_valid_M = jnp.concatenate([cpos_F >= 0, ones])
        mask_TM = frame_mask(frame_pos_T, k_pos_M, cfg.time_window, k_valid_M)
        mask = independent_frame_mask(mask_TM, frame_pos_T, k_pos_M, independent_B)
        m = k_BMSNK.shape[1]
        # The splash kernel needs static masks: reading a KV cache uses the einsum path.
        impl = 'einsum' if cfg.attention_impl in SPLASH_IMPLS else cfg.attention_impl
        if self.kind == 'time':
            # Axial (PAPER 3.1): slot i reads slot i of earlier frames; batch dims (B, S).
            mask = mask if mask.ndim == 2 else mask[:, None]  # [B, 1, T, M] over X = (B, S)
            o = attend(
                jnp.swapaxes(q_BTSNGK, 1, 2),
                jnp.swapaxes(k_BMSNK, 1, 2),
                jnp.swapaxes(v_BMSNK, 1, 2),
                mask,
                softcap=cfg.softcap,
                impl=impl,
            )
            return jnp.swapaxes(o, 1, 2)
        # Dense ablation (PAPER 12.3): all tokens of allowed frames, modality rule across frames.
        full = dense_mask(mask, self.layout.space_mask())
        q = q_BTSNGK.reshape(b, t * s, *q_BTSNGK.shape[3:])
        o = attend(
            q,
            k_BMSNK.reshape(b, m * s, *k_BMSNK.shape[3:]),
            v_BMSNK.reshape(b, m * s, *v_BMSNK.shape[3:]),
            full,
            softcap=cfg.softcap,
            impl=impl,
        )
        return o.reshape(q_BTSNGK.shape)

    def _attend_frames_static(self, q_BTSNGK, k_BTSNK, v_BTSNK, independent_B):
        """Frames 0..T-1 without a cache, as a static mask plus segment ids (splash kernel).

        Same rules as `_attend_frames`: the causal window is static; rows trained as separate
        images (PAPER 6.5) give frame t the segment id t + 1 (other rows 0), so their queries
        read only their own frame.
        """
        cfg = self.config
        b, t, s = q_BTSNGK.shape[:3]
        pos_T = np.arange(t)
        mask_TT = frame_mask(pos_T, pos_T, cfg.time_window)  # NumPy in, NumPy out
        seg_BT = None
        if independent_B is not None:
            seg_BT = jnp.where(independent_B[:, None], jnp.arange(1, t + 1), 0)
        if self.kind == 'time':  # axial: batch dims (B, S)
            seg = None if seg_BT is None else jnp.broadcast_to(seg_BT[:, None], (b, s, t))
            o = attend(
                jnp.swapaxes(q_BTSNGK, 1, 2),
                jnp.swapaxes(k_BTSNK, 1, 2),
                jnp.swapaxes(v_BTSNK, 1, 2),
                mask_TT,
                softcap=cfg.softcap,
                impl=cfg.attention_impl,
                segments=seg,
            )
            return jnp.swapaxes(o, 1, 2)
        space_SS = self.layout.space_mask()
        full = (mask_TT[:, None, :, None] & space_SS[None, :, None, :]).reshape(t * s, t * s)
        o = attend(
            q_BTSNGK.reshape(b, t * s, *q_BTSNGK.shape[3:]),
            k_BTSNK.reshape(b, t * s, *k_BTSNK.shape[3:]),
            v_BTSNK.reshape(b, t * s, *v_BTSNK.shape[3:]),
            full,
            softcap=cfg.softcap,
            impl=cfg.attention_impl,
            segments=None if seg_BT is None else jnp.repeat(seg_BT, s, axis=1),
        )
        return o.reshape(q_BTSNGK.shape)


class Block(nn.Module):
    """x + Attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)) (pre-norm, PAPER 3.1).

    The two residual halves are separate methods so the stack can rematerialize each alone.
    """

    config: TransformerConfig
    kind: str
    layout: TokenLayout

    def setup(self):
        cfg = self.config
        self.attn_norm = RMSNorm(cfg.norm_eps)
        self.attn = Attention(cfg, self.kind, self.layout)
        self.mlp_norm = RMSNorm(cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def attention_half(
        self,
        x_BTSD: jax.Array,
        frame_pos_T: jax.Array,
        independent_B: jax.Array | None = None,
        cache: CacheIn = None,
    ):
        """x + Attention(RMSNorm(x)); also returns the new frames' (keys, values)."""
        a, kv = self.attn(self.attn_norm(x_BTSD), frame_pos_T, independent_B, cache)
        return constrain(x_BTSD + a.astype(x_BTSD.dtype), ACT_BTSD), kv

    def mlp_half(self, x_BTSD: jax.Array) -> jax.Array:
        """x + SwiGLU(RMSNorm(x))."""
        m = self.mlp(self.mlp_norm(x_BTSD))
        return constrain(x_BTSD + m.astype(x_BTSD.dtype), ACT_BTSD)

    def __call__(
        self,
        x_BTSD: jax.Array,
        frame_pos_T: jax.Array,
        independent_B: jax.Array | None = None,
        cache: CacheIn = None,
    ):
        x_BTSD, kv = self.attention_half(x_BTSD, frame_pos_T, independent_B, cache)
        return self.mlp_half(x_BTSD), kv
