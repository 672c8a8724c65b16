"""Dynamics model speed: training throughput + MFU, and frame-by-frame generation latency.

Training: the real phase-1b step (shortcut forcing with its stop-gradient teacher passes on the
bootstrap rows, RMS normalization, AdamW, EMA) on pre-tokenized latents, for a tiny and a small
config; the same step encoding images with a frozen tokenizer on the fly shows what that costs.
Model FLOPs count what the step really runs: forward + backward of the main pass over all rows
and the two teacher forwards over the teacher rows (elementwise ops and remat not counted).

Generation: one frame = K = 4 denoising passes + one commit pass, batch 1, 16 latent tokens per
frame, with the KV cache (per-frame time at a context of 8 frames and at a full window of C - 1),
against recomputing the whole context for every pass without a cache.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.run import matmul_peak, time_fn
from dreamer4_jax import model_configs as mc
from dreamer4_jax import shortcut
from dreamer4_jax.configs import base_config
from dreamer4_jax.dynamics import Dynamics, DynamicsConfig, init_params
from dreamer4_jax.generation import SamplingConfig, generate_frame, prefill
from dreamer4_jax.nn import TransformerConfig, forward_flops, param_count
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import dynamics_phase

TRAIN_SIZES = {
    'tiny': dict(width=128, depth=4, num_heads=4, num_kv_heads=1),
    'small': dict(width=256, depth=8, num_heads=4, num_kv_heads=1),
}
# About 2M parameters (2.16M); 16 latent tokens + 1 action + 1 shortcut + 4 registers = 22
# tokens per frame. Four blocks (the last one a time layer, PAPER 3.1) at width 192: at batch 1
# a frame is a chain of small matmuls, so fewer, wider layers run faster than 8 x 128 (1.9M).
GEN_SIZE = dict(width=192, depth=4, num_heads=3, num_kv_heads=1)


def _config(size: dict, batch: int, frames: int, latents: str) -> ml_collections.ConfigDict:
    c = base_config()
    c.phase = 'dynamics'
    c.tokenizer = mc.tokenizer_config_dict()  # the default 64x64 tokenizer (on-the-fly cost)
    c.data = ml_collections.ConfigDict({'window_length': frames})
    c.dynamics = mc.dynamics_config_dict(
        transformer=mc.transformer_config_dict(time_every=4, time_window=frames, **size),
        latents=latents,
    )
    c.train.batch_size = batch
    return c


def _batch(batch: int, frames: int, tok_cfg, with_images: bool) -> dict:
    r = np.random.default_rng(0)
    out = {
        'latents': r.uniform(
            -1, 1, (batch, frames, tok_cfg.num_latents, tok_cfg.latent_dim)
        ).astype(np.float32),
        'action': {'discrete': r.integers(0, 17, (batch, frames)).astype(np.int32)},
        'has_action': np.ones((batch, frames), bool),
        'is_first': np.zeros((batch, frames), bool),
    }
    if with_images:
        out['image'] = r.integers(0, 256, (batch, frames, 64, 64, 3), dtype=np.uint8)
    return out


def step_flops(model_cfg: DynamicsConfig, plan, batch: int, frames: int) -> int:
    """Model FLOPs of one training step (main fwd + bwd, teacher forwards on teacher rows)."""
    s = model_cfg.layout().num_tokens
    fwd = forward_flops(model_cfg.transformer, s, batch, frames)['total']
    io = 2 * batch * frames * model_cfg.num_tokens * model_cfg.token_dim
    io *= 2 * model_cfg.transformer.width  # latent_in and head
    teacher_rows = batch // plan.teacher_stride if plan.teacher_stride else 0
    teacher = (
        2
        * (
            forward_flops(model_cfg.transformer, s, teacher_rows, frames)['total']
            + io * teacher_rows // batch
        )
        if teacher_rows
        else 0
    )
    return 3 * (fwd + io) + teacher


def _train_step_fn(name: str, batch: int, frames: int, on_the_fly: bool):
    """(run(), model FLOPs per step, config) for the real phase-1b step of one size."""
    config = _config(TRAIN_SIZES[name], batch, frames, 'on_the_fly' if on_the_fly else 'batch')
    tok_cfg = mc.tokenizer_config_from(config.tokenizer)
    tok_params = jax.jit(
        lambda r: nn.unbox(Tokenizer(tok_cfg).init(r, jnp.zeros((1, 1, 64, 64, 3)))['params'])
    )(jax.random.key(0))
    phase = dynamics_phase.make_phase(config, (tok_params, tok_cfg))
    holder = {'state': jax.jit(lambda r: nn.unbox(phase.init(r)))(jax.random.key(1))}
    data = _batch(batch, frames, tok_cfg, on_the_fly)
    step = jax.jit(phase.train_step, donate_argnums=(0,))
    consts = {'tokenizer': tok_params}

    def run():
        holder['state'], metrics = step(holder['state'], data, jax.random.key(2), consts)
        return metrics['loss/total']

    jax.block_until_ready(run())  # compile
    plan = dynamics_phase.make_plan(config)
    model_cfg = mc.dynamics_config_from(config.dynamics, tok_cfg)
    return run, step_flops(model_cfg, plan, batch, frames), model_cfg


def train_figures(name: str, batch: int, frames: int, on_the_fly: bool, rounds: int) -> dict:
    """Step time, and MFU against f32 matmul peaks measured right before each timing.

    This CPU is shared: the peak the harness measures once can differ from the one during a
    timing, so each round pairs a peak with a step timing and the median ratio is reported.
    """
    run, flops, model_cfg = _train_step_fn(name, batch, frames, False)
    fly = _train_step_fn(name, batch, frames, True)[0] if on_the_fly else None
    times, fly_times, ratios = [], [], []
    for _ in range(rounds):
        peak = matmul_peak(jnp.float32)
        times.append(time_fn(run, repeats=2, min_time=0.5))
        ratios.append(flops / times[-1] / peak)
        if fly is not None:
            fly_times.append(time_fn(fly, repeats=2, min_time=0.5))
    seconds = min(times)
    out = {
        'params': param_count(model_cfg.transformer),
        'tokens_per_frame': model_cfg.layout().num_tokens,
        'step_seconds': seconds,
        'frames_per_sec': batch * frames / seconds,
        'model_flops_per_step': flops,
        'flops_per_sec': flops / seconds,
        'mfu_vs_adjacent_peak': float(np.median(ratios)),
    }
    if fly is not None:
        out['on_the_fly_step_seconds'] = min(fly_times)
        out['on_the_fly_overhead'] = float(np.median(np.asarray(fly_times) / np.asarray(times)))
    return out


def _gen_model(window: int) -> tuple[Dynamics, dict]:
    tc = TransformerConfig(time_every=4, time_window=window, **GEN_SIZE)
    model = Dynamics(DynamicsConfig(num_latents=16, latent_dim=16, transformer=tc))
    params = jax.jit(lambda r: nn.unbox(init_params(model, r)))(jax.random.key(0))
    return model, params


@functools.cache
def _jitted_sampler(model: Dynamics, steps: int):
    """(prefill, generate_frame) compiled once per model (the rounds reuse them)."""
    sampling = SamplingConfig(num_steps=steps)
    return (
        jax.jit(functools.partial(prefill, model, sampling=sampling)),
        jax.jit(functools.partial(generate_frame, model, sampling=sampling)),
    )


def cached_frame_seconds(model: Dynamics, params, context: int, steps: int = 4) -> float:
    """One frame (K passes + commit) after `context` cached frames, batch 1."""
    fill, gen = _jitted_sampler(model, steps)
    z = jax.random.uniform(jax.random.key(1), (1, context, 16, 16), minval=-1, maxval=1)
    acts = {'discrete': jnp.zeros((1, context), jnp.int32)}
    cache = fill(params, z, acts, jnp.ones((1, context), bool), jax.random.key(2))
    act = {'discrete': jnp.zeros((1, 1), jnp.int32)}
    has = jnp.ones((1, 1), bool)
    return time_fn(
        lambda c, r: gen(params, c, act, has, r)[0],
        cache,
        jax.random.key(3),
        repeats=5,
        min_time=0.3,
    )


def uncached_frame_seconds(model: Dynamics, params, context: int, steps: int = 4) -> float:
    """K passes over context + the new frame, recomputing the whole context each time."""
    z_ctx = jax.random.uniform(jax.random.key(1), (1, context, 16, 16), minval=-1, maxval=1)
    acts = {'discrete': jnp.zeros((1, context + 1), jnp.int32)}
    has = jnp.ones((1, context + 1), bool)
    ctx_tau = jnp.full((1, context), 0.875)
    ctx_d = jnp.full((1, context), 1 / 64)

    @jax.jit
    def frame(params, z_ctx, rng):
        def predict(z, tau, d):
            zs = jnp.concatenate([z_ctx, z], axis=1)
            out, _ = model.apply(
                {'params': params},
                zs,
                jnp.concatenate([ctx_tau, tau], 1),
                jnp.concatenate([ctx_d, d], 1),
                acts,
                has,
            )
            return out[:, -1:]

        return shortcut.sample_frame(predict, rng, (1, 1, 16, 16), steps)

    return time_fn(frame, params, z_ctx, jax.random.key(2), repeats=5, min_time=0.3)


def run(quick: bool = False) -> dict:
    out = {}
    sizes = ('tiny',) if quick else ('tiny', 'small')
    batch, frames = (4, 8) if quick else (8, 16)
    for name in sizes:
        figs = train_figures(name, batch, frames, on_the_fly=not quick, rounds=1 if quick else 3)
        out.update({f'train_{name}_{k}': v for k, v in figs.items()})

    # Generation: both windows interleaved over several rounds, best time per figure (the
    # machine is shared; a round that overlaps someone else's job only loses).
    windows = (32,) if quick else (32, 64)
    models = {w: _gen_model(w) for w in windows}
    out['gen_params'] = param_count(models[windows[0]][0].config.transformer)
    best: dict[str, float] = {}
    for _ in range(1 if quick else 3):
        out['gen_adjacent_f32_peak'] = matmul_peak(jnp.float32)
        for window, (model, params) in models.items():
            for context in sorted({8, window - 1}):
                key = f'gen_C{window}_ctx{context}_cached_ms_per_frame'
                ms = 1e3 * cached_frame_seconds(model, params, context)
                best[key] = min(best.get(key, ms), ms)
    out.update(best)
    for window in windows:
        out[f'gen_C{window}_frames_per_sec'] = (
            1e3 / best[f'gen_C{window}_ctx{window - 1}_cached_ms_per_frame']
        )
    model, params = models[windows[-1]]
    for context in (8, 32) if quick else (8, 32, 64):
        out[f'gen_uncached_ctx{context}_ms_per_frame'] = 1e3 * uncached_frame_seconds(
            model, params, context
        )
    return out


if __name__ == '__main__':
    import json
    import sys

    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
