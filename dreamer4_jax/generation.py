"""Autoregressive frame-by-frame generation with the dynamics model (PAPER 7).

Per new frame: K denoising passes (shortcut sampler, d = 1/K, x-prediction Euler updates) that
READ the KV cache of the time layers but never write it, then one commit pass that feeds the
generated frame, re-noised to the context signal level (default 0.9), through the network and
appends its time-layer keys/values to the cache. The cache is a ring buffer of C - 1 frames, so
per-frame cost and memory do not grow with the rollout length.

Why the committed frame is slightly noisy (PAPER 2, 7): the model sees its own imperfect outputs
as context; training with per-frame noise levels (diffusion forcing) taught it to treat noisy
context as uncertain, and feeding context at signal 0.9 instead of 1.0 makes small generation
artifacts look like noise it knows how to discount, which keeps long rollouts from drifting.

`rollout(..., cached=False)` is the reference path: it recomputes the whole sequence for every
denoising pass (a fixed buffer of all frames; later frames are invisible to earlier ones by the
block-causal mask), with the same noise, so tests can check that the cache changes nothing.

Actions are block-aligned (`dynamics.align_actions`): entry t is the action that led to frame t.

Dimension keys: B batch, T context frames, H generated frames, L = T + H, N latents, C channels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dreamer4_jax import shortcut
from dreamer4_jax.dynamics import Dynamics
from dreamer4_jax.nn import KVCache, init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How frames are sampled.

    num_steps: K shortcut steps per frame (PAPER 7: 4); must be a power of two <= k_max.
    context_signal: signal level of committed / context frames (PAPER 2: 0.9, not the literal 0.1).
    prediction: 'x' or 'v', what the network outputs (the v-prediction ablation).
    network_d: d shown to the network instead of 1/K (plain diffusion forcing was trained only at
      d_min = 1/k_max); None = 1/K.
    """

    num_steps: int = 4
    context_signal: float = 0.9
    prediction: str = 'x'
    network_d: float | None = None


def _frames(tree: Any, start, size: int) -> Any:
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=1), tree)


def _check(model: Dynamics, sampling: SamplingConfig, z_ctx, actions, has, horizon):
    k_max = model.config.k_max
    k = sampling.num_steps
    if k < 1 or k & (k - 1) or k > k_max:
        raise ValueError(
            f'num_steps={k} must be a power of two in [1, k_max={k_max}]: the shortcut '
            'token has no embedding row for other step sizes.'
        )
    b, t = z_ctx.shape[:2]
    if t < 1:
        raise ValueError('generation needs at least one context frame')
    length = t + horizon
    if has.shape != (b, length):
        raise ValueError(
            f'has_action must be [B, context + horizon] = {(b, length)}, got '
            f'{has.shape}; pass the block-aligned actions of every frame'
        )
    for name, a in actions.items():
        if a.shape[:2] != (b, length):
            raise ValueError(
                f'action {name!r} must start with [B, context + horizon] = '
                f'{(b, length)}, got {a.shape}'
            )


def context_levels(model: Dynamics, z_BTNC: jax.Array, rng: jax.Array, sampling: SamplingConfig):
    """Frames re-noised to the context signal level (PAPER 2, 7), with their (tau, d) [B, T].

    tau is snapped to the k_max grid (the level the tau embedding row says) and d = d_min =
    1/k_max, the finest step: every context frame, real or generated, enters the model this way.
    """
    k_max = model.config.k_max
    z_ctx, tau_ctx = shortcut.corrupt_context(rng, z_BTNC, sampling.context_signal, k_max=k_max)
    b, t = z_BTNC.shape[:2]
    tau = jnp.full((b, t), tau_ctx, jnp.float32)
    d = jnp.full((b, t), 1.0 / k_max, jnp.float32)
    return z_ctx, tau, d


def new_cache(model: Dynamics, batch: int, max_frames: int | None = None) -> KVCache:
    """Empty KV cache (C - 1 frames for a window of C; `max_frames` without a window)."""
    c = model.config
    window = c.transformer.time_window
    return init_cache(
        c.transformer, c.layout().num_tokens, batch, None if window is not None else max_frames
    )


def commit(
    model: Dynamics,
    params: Any,
    z_BTNC: jax.Array,
    actions: Mapping[str, Any],
    has_BT: jax.Array,
    cache: KVCache,
    rng: jax.Array,
    sampling: SamplingConfig = SamplingConfig(),
    agent_in_BTAD: jax.Array | None = None,
) -> tuple[tuple[jax.Array, jax.Array | None], KVCache]:
    """Append frames (real or generated) to the cache at the context signal level.

    The one commit primitive (PAPER 7): prefill, generation, imagination and closed-loop play all
    commit frames through it. `actions` are block-aligned (entry t led to frame t). Returns
    ((out_BTNC, agent_out_BTAD or None), cache): the agent tokens' output h_t is read here.
    """
    z_ctx, tau, d = context_levels(model, z_BTNC, rng, sampling)
    return model.apply(
        {'params': params},
        z_ctx,
        tau,
        d,
        actions,
        has_BT,
        cache,
        True,
        agent_in_BTAD,
        method=Dynamics.step,
    )


def denoise_next(
    model: Dynamics,
    params: Any,
    cache: KVCache,
    actions: Mapping[str, Any],
    has_B1: jax.Array,
    rng: jax.Array,
    sampling: SamplingConfig = SamplingConfig(),
    agent_in_B1AD: jax.Array | None = None,
) -> jax.Array:
    """The next frame's latents [B, 1, N, C]: K shortcut steps that read the cache, never write it.

    `actions` / `has_B1` are the block-aligned action of this frame ([B, 1, ...]).
    """
    c = model.config
    b = has_B1.shape[0]

    def predict(z, tau, d):
        (out, _), _ = model.apply(
            {'params': params},
            z,
            tau,
            d,
            actions,
            has_B1,
            cache,
            False,
            agent_in_B1AD,
            method=Dynamics.step,
        )
        return out

    return shortcut.sample_frame(
        predict,
        rng,
        (b, 1, c.num_latents, c.latent_dim),
        sampling.num_steps,
        prediction=sampling.prediction,
        network_d=sampling.network_d,
    )


def prefill(
    model: Dynamics,
    params: Any,
    z_ctx_BTNC: jax.Array,
    actions: Mapping[str, Any],
    has_BT: jax.Array,
    rng: jax.Array,
    sampling: SamplingConfig = SamplingConfig(),
    max_frames: int | None = None,
) -> KVCache:
    """Cache of the real context frames, corrupted to the context signal level (one pass)."""
    cache = new_cache(model, z_ctx_BTNC.shape[0], max_frames)
    _, cache = commit(model, params, z_ctx_BTNC, actions, has_BT, cache, rng, sampling)
    return cache


def generate_frame(
    model: Dynamics,
    params: Any,
    cache: KVCache,
    actions: Mapping[str, Any],
    has_B1: jax.Array,
    rng: jax.Array,
    sampling: SamplingConfig = SamplingConfig(),
) -> tuple[jax.Array, KVCache]:
    """One new frame [B, 1, N, C] after the cached context; returns it and the updated cache.

    `actions` / `has_B1` are the block-aligned action of this frame ([B, 1, ...]).
    """
    rng_noise, rng_ctx = jax.random.split(rng)
    z_new = denoise_next(model, params, cache, actions, has_B1, rng_noise, sampling)
    # Commit pass (PAPER 7 [U]): the generated frame at the context signal level enters the cache.
    _, cache = commit(model, params, z_new, actions, has_B1, cache, rng_ctx, sampling)
    return z_new, cache


def frame_step(
    model: Dynamics,
    params: Any,
    cache: KVCache,
    actions: Mapping[str, Any],
    has_B1: jax.Array,
    rng: jax.Array,
    sampling: SamplingConfig = SamplingConfig(),
) -> tuple[jax.Array, KVCache, jax.Array]:
    """`generate_frame` that also returns the key for the next frame: (z_B1NC, cache, rng).

    One interactive frame is then one call of `jit_frame_step` with nothing to do on the host
    between frames (the key is split inside, not by a separate dispatch).
    """
    rng, sub = jax.random.split(rng)
    z, cache = generate_frame(model, params, cache, actions, has_B1, sub, sampling)
    return z, cache, rng


@functools.cache
def jit_frame_step(model: Dynamics, sampling: SamplingConfig = SamplingConfig()):
    """`frame_step` compiled once per (model, sampling): K denoising passes and the commit in one
    call, the cache donated (updated in place instead of copied each frame).

    Call it as f(params, cache, actions, has_B1, rng); the cache passed in is consumed.
    """
    return jax.jit(functools.partial(frame_step, model, sampling=sampling), donate_argnums=(1,))


def _rollout_cached(model, params, z_ctx, actions, has, rng, horizon, sampling, max_frames):
    t = z_ctx.shape[1]
    rng_ctx, rng_gen = jax.random.split(rng)
    cache = prefill(
        model, params, z_ctx, _frames(actions, 0, t), has[:, :t], rng_ctx, sampling, max_frames
    )

    def body(cache, h):
        act = _frames(actions, t + h, 1)
        z, cache = generate_frame(
            model,
            params,
            cache,
            act,
            has[:, t + h][:, None],
            jax.random.fold_in(rng_gen, h),
            sampling,
        )
        return cache, z[:, 0]

    cache, z_HBNC = jax.lax.scan(body, cache, jnp.arange(horizon))
    return jnp.swapaxes(z_HBNC, 0, 1), cache


def _rollout_uncached(model, params, z_ctx, actions, has, rng, horizon, sampling):
    """Reference: every pass recomputes all frames of a fixed [B, T + H] buffer, no cache."""
    b, t, n, ch = z_ctx.shape
    length = t + horizon
    rng_ctx, rng_gen = jax.random.split(rng)
    z0, tau_t, d_t = context_levels(model, z_ctx, rng_ctx, sampling)
    buf = jnp.zeros((b, length, n, ch), jnp.float32).at[:, :t].set(z0)
    tau_buf = jnp.full((b, length), tau_t[0, 0], jnp.float32)
    d_buf = jnp.full((b, length), d_t[0, 0], jnp.float32)

    def body(buf, h):
        pos = t + h
        rng_noise, rng_c = jax.random.split(jax.random.fold_in(rng_gen, h))

        def predict(z, tau, d):
            zs = jax.lax.dynamic_update_slice_in_dim(buf, z, pos, axis=1)
            taus = jax.lax.dynamic_update_slice_in_dim(tau_buf, tau, pos, axis=1)
            ds = jax.lax.dynamic_update_slice_in_dim(d_buf, d, pos, axis=1)
            out, _ = model.apply({'params': params}, zs, taus, ds, actions, has)
            return jax.lax.dynamic_slice_in_dim(out, pos, 1, axis=1)

        z_new = shortcut.sample_frame(
            predict,
            rng_noise,
            (b, 1, n, ch),
            sampling.num_steps,
            prediction=sampling.prediction,
            network_d=sampling.network_d,
        )
        z_c = context_levels(model, z_new, rng_c, sampling)[0]
        return jax.lax.dynamic_update_slice_in_dim(buf, z_c, pos, axis=1), z_new[:, 0]

    _, z_HBNC = jax.lax.scan(body, buf, jnp.arange(horizon))
    return jnp.swapaxes(z_HBNC, 0, 1)


def rollout(
    model: Dynamics,
    params: Any,
    z_ctx_BTNC: jax.Array,
    actions: Mapping[str, Any],
    has_BL: jax.Array,
    rng: jax.Array,
    horizon: int,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    cached: bool = True,
    max_frames: int | None = None,
) -> jax.Array:
    """Generate `horizon` frames [B, H, N, C] after the real context frames.

    actions / has_BL: block-aligned actions of all L = T + H frames (entry T + h is the action
    that leads to generated frame h). `max_frames`: cache size when the model has no time window.
    Jit it with model, horizon, sampling, cached and max_frames static.
    """
    if cached:
        return rollout_with_cache(
            model, params, z_ctx_BTNC, actions, has_BL, rng, horizon, sampling, max_frames
        )[0]
    _check(model, sampling, z_ctx_BTNC, actions, has_BL, horizon)
    return _rollout_uncached(model, params, z_ctx_BTNC, actions, has_BL, rng, horizon, sampling)


def rollout_with_cache(
    model: Dynamics,
    params: Any,
    z_ctx_BTNC: jax.Array,
    actions: Mapping[str, Any],
    has_BL: jax.Array,
    rng: jax.Array,
    horizon: int,
    sampling: SamplingConfig = SamplingConfig(),
    max_frames: int | None = None,
) -> tuple[jax.Array, KVCache]:
    """`rollout` (cached) that also returns the final cache (for inspection and continuation)."""
    _check(model, sampling, z_ctx_BTNC, actions, has_BL, horizon)
    if model.config.transformer.time_window is None and max_frames is None:
        max_frames = z_ctx_BTNC.shape[1] + horizon
    return _rollout_cached(
        model, params, z_ctx_BTNC, actions, has_BL, rng, horizon, sampling, max_frames
    )
