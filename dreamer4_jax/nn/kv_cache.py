"""KV cache of the time layers for frame-by-frame inference (PAPER 3.1, 7; DESIGN 5).

Only layers that read other frames ('time' or 'dense') keep a cache; space layers need none.
The cache is a ring buffer of F = C - 1 frame slots (C = time window): frame p lives in slot
p % F, so appending a frame overwrites the one that just left the window and memory stays
bounded. Keys are stored after RoPE at their absolute frame index, so slot order never matters
and nothing is re-rotated. Every call attends over all F slots (empty ones masked), so the
per-frame cost is the same at any context length.

A call with the cache processes T >= 1 new frames (usually T = 1): denoising passes read the
cache without writing; a commit pass also appends the new frames' keys/values and advances the
frame counter. All batch rows share the frame counter (they advance in lockstep).

Dimension keys: B batch, F cache slots (frames), S tokens per frame, N KV heads, K head dim,
L layers with a cache.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dreamer4_jax.nn.config import TransformerConfig


@flax.struct.dataclass
class KVCache:
    """Per-layer ring buffers plus the slot -> frame map.

    Attributes:
      k, v: L arrays [B, F, S, N, K] (post-RoPE keys; values).
      pos_F: int32 [F], absolute frame index held by each slot, -1 for an empty slot.
      next_frame: int32 [], absolute index of the next frame to process.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos_F: jax.Array
    next_frame: jax.Array

    @property
    def capacity(self) -> int:
        return int(self.pos_F.shape[0])

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def layer(self, j: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(k_BFSNK, v_BFSNK, pos_F) of the j-th cached layer."""
        return self.k[j], self.v[j], self.pos_F

    def append(self, kv: list[tuple[jax.Array, jax.Array]], frame_pos_T: jax.Array) -> KVCache:
        """Write the new frames' keys/values (per layer [B, T, S, N, K]) and advance.

        Only the last min(T, F) frames are kept: older ones would be evicted at once anyway.
        """
        if len(kv) != self.num_layers:
            raise ValueError(f'append: got {len(kv)} layers of keys, cache has {self.num_layers}')
        t = int(frame_pos_T.shape[0])
        nxt = self.next_frame + t
        f = self.capacity
        if f == 0:  # window C = 1: a frame reads only itself, nothing to keep.
            return self.replace(next_frame=nxt)
        n = min(t, f)
        pos_n = frame_pos_T[t - n :]
        slots = pos_n % f
        # Several frames: each slot takes the new frame that lands there (a gather and a select;
        # the TPU compiler of libtpu 0.0.42 crashes on the equivalent scatter inside the
        # imagination step: scatter_emitter "operand_indices.size() == 1").
        hits_NF = slots[:, None] == jnp.arange(f)[None, :]
        written_F = hits_NF.any(axis=0)
        source_F = jnp.argmax(hits_NF, axis=0)
        new_k, new_v = [], []
        for (k_old, v_old), (k_new, v_new) in zip(
            zip(self.k, self.v, strict=True), kv, strict=True
        ):
            k_new = k_new[:, t - n :].astype(k_old.dtype)
            v_new = v_new[:, t - n :].astype(v_old.dtype)
            if n == 1:  # the common per-frame case: one contiguous slice update
                start = (0, slots[0], 0, 0, 0)
                new_k.append(jax.lax.dynamic_update_slice(k_old, k_new, start))
                new_v.append(jax.lax.dynamic_update_slice(v_old, v_new, start))
            else:
                keep = written_F[None, :, None, None, None]
                new_k.append(jnp.where(keep, jnp.take(k_new, source_F, axis=1), k_old))
                new_v.append(jnp.where(keep, jnp.take(v_new, source_F, axis=1), v_old))
        pos_F = jnp.where(written_F, pos_n.astype(jnp.int32)[source_F], self.pos_F)
        return KVCache(tuple(new_k), tuple(new_v), pos_F, nxt.astype(jnp.int32))


def cache_capacity(config: TransformerConfig, max_frames: int | None = None) -> int:
    """Slots needed: C - 1 past frames for a window of C; `max_frames` if there is no window."""
    if config.time_window is not None:
        if max_frames is not None and max_frames != config.time_window - 1:
            raise ValueError(
                f'max_frames={max_frames} conflicts with time_window='
                f'{config.time_window} (the cache holds time_window - 1 frames)'
            )
        return config.time_window - 1
    if max_frames is None or max_frames < 0:
        raise ValueError(
            'time_window is None (unlimited): pass max_frames, the number of past '
            'frames to keep; older frames are then evicted (window max_frames + 1)'
        )
    return max_frames


def init_cache(
    config: TransformerConfig,
    num_tokens: int,
    batch: int,
    max_frames: int | None = None,
    dtype=jnp.float32,
) -> KVCache:
    """Empty cache for `batch` rows of frame blocks with `num_tokens` tokens."""
    f = cache_capacity(config, max_frames)
    shape = (batch, f, num_tokens, config.kv_heads, config.key_dim)
    layers = len(config.time_layers)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
        pos_F=jnp.full((f,), -1, jnp.int32),
        next_frame=jnp.zeros((), jnp.int32),
    )
