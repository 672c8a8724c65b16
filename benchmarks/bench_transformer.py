"""Speed and memory of the axial transformer: training step and cached frame-by-frame inference.

Run: python -m benchmarks.bench_transformer [--quick]

Training: one jitted step (forward + backward + Adam) on random frames; model FLOPs from
`dreamer4_jax.nn.flops` (3x forward matmuls incl. attention, no remat recompute), GFLOP/s and
MFU against a large f32 matmul measured in the same run, peak memory per frame from XLA's
compiled memory analysis. Inference: one new frame with the KV cache (batch 1), per-frame time
at several context lengths (should be flat) and against recomputing the whole context.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamer4_jax.nn import (
    Transformer,
    TransformerConfig,
    dynamics_layout,
    encoder_layout,
    init_cache,
    param_count,
    train_step_flops,
)


def _best_time(fn, *args, reps: int) -> tuple[float, float]:
    """Best wall-clock and best process-CPU seconds of fn(*args) over `reps` runs.

    The CPU time makes results comparable on a machine shared with other jobs: a step that
    waits for a core accrues wall time but no CPU time.
    """
    jax.block_until_ready(fn(*args))
    wall, cpu = float('inf'), float('inf')
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def matmul_peak(n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """f32 GFLOP/s of an n x n x n matmul: (per wall second, per CPU second), best of reps."""
    a = jnp.ones((n, n), jnp.float32)
    wall, cpu = _best_time(jax.jit(lambda a, b: a @ b), a, a, reps=reps)
    return 2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9


def random_params(model: Transformer, x: jax.Array, seed: int = 0):
    """Fan-in scaled random parameters from shapes alone (compiling `init` costs seconds)."""
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))

    def fill(s):
        if len(s.shape) == 1:
            return jnp.ones(s.shape, s.dtype)
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), s.dtype)

    return jax.tree.map(fill, shapes)


def _train_step(cfg: TransformerConfig, layout, batch: int, frames: int):
    model = Transformer(cfg, layout)
    x = jax.random.normal(jax.random.key(0), (batch, frames, layout.num_tokens, cfg.width))
    params = random_params(model, x[:1, :1])
    opt = optax.adam(1e-4)

    def loss_fn(p, x):
        return jnp.mean(jnp.square(model.apply(p, x) - x))

    def step(p, o, x):
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params), x).compile()
    state = [params, opt.init(params)]

    def run(x):
        state[0], state[1], loss = compiled(state[0], state[1], x)
        return loss

    return compiled, run, x


def bench_train(
    name: str, cfg: TransformerConfig, layout, batch: int, frames: int, reps: int
) -> dict:
    """Training-step figures; MFU fields are filled in by `run` against the peak."""
    compiled, run, x = _train_step(cfg, layout, batch, frames)
    mem = compiled.memory_analysis()
    wall, cpu = _best_time(run, x, reps=reps)
    flops = train_step_flops(cfg, layout.num_tokens, batch, frames)
    n_frames = batch * frames
    total = (
        mem.temp_size_in_bytes
        + mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
    )
    return {
        'name': name,
        'params': param_count(cfg),
        'width': cfg.width,
        'depth': cfg.depth,
        'tokens_per_frame': layout.num_tokens,
        'frames_per_step': n_frames,
        'remat': cfg.remat,
        'step_s': wall,
        'step_cpu_s': cpu,
        'frames_per_s': n_frames / wall,
        'flops_per_step': flops,
        'gflops_per_s': flops / wall / 1e9,
        'gflops_per_cpu_s': flops / cpu / 1e9,
        'temp_mib_per_frame': mem.temp_size_in_bytes / n_frames / 2**20,
        'peak_mib_per_frame': total / n_frames / 2**20,
    }


def bench_inference(cfg: TransformerConfig, layout, contexts: list[int], reps: int) -> dict:
    """Per-frame time of a cached step (batch 1) after `context` committed frames."""
    model = Transformer(cfg, layout)
    s, d = layout.num_tokens, cfg.width
    x1 = jnp.ones((1, 1, s, d))
    params = random_params(model, x1)
    step = jax.jit(lambda p, x, c: model.apply(p, x, c, False, method='step'))
    commit = jax.jit(lambda p, x, c: model.apply(p, x, c, True, method='step'))
    full = jax.jit(model.apply)
    out = {'params': param_count(cfg), 'tokens_per_frame': s, 'window': cfg.time_window}
    for ctx in contexts:
        cache = init_cache(cfg, s, 1)
        if ctx:
            _, cache = commit(params, jnp.ones((1, ctx, s, d)), cache)
        out[f'cached_ms_ctx{ctx}'] = 1e3 * _best_time(step, params, x1, cache, reps=reps)[0]
        xs = jnp.ones((1, ctx + 1, s, d))
        out[f'uncached_ms_ctx{ctx}'] = 1e3 * _best_time(full, params, xs, reps=reps)[0]
    return out


def run(quick: bool) -> dict:
    peak_wall, peak_cpu = matmul_peak()
    base = TransformerConfig(
        width=256, depth=8, num_heads=4, num_kv_heads=2, time_every=4, softcap=50.0, remat='none'
    )
    flat = encoder_layout(num_patches=48, num_latents=16)  # 64 tokens per frame
    wide = encoder_layout(num_patches=64, num_latents=16)  # 80 tokens per frame
    remat = dataclasses.replace(base, remat='full')
    if quick:
        shapes = [('w256_d8_s64_remat', remat, flat, 4, 8)]
        reps = 2
    else:
        w512 = dataclasses.replace(base, width=512, num_heads=8)
        shapes = [
            ('w256_d8_s64', base, flat, 16, 16),
            ('w256_d8_s64_remat', remat, flat, 16, 16),
            ('w256_d8_s80_remat', remat, wide, 8, 32),
            ('w128_d8_s64_remat', dataclasses.replace(remat, width=128, num_heads=2), flat, 16, 16),
            ('w512_d8_s64_remat', dataclasses.replace(w512, remat='full'), flat, 8, 16),
        ]
        reps = 3
    train = []
    for name, cfg, lay, b, t in shapes:
        train.append(bench_train(name, cfg, lay, b, t, reps))
        # The machine may be shared: keep the best peak seen around the measurements.
        pw, pc = matmul_peak()
        peak_wall, peak_cpu = max(peak_wall, pw), max(peak_cpu, pc)
    for r in train:
        r['mfu'] = r['gflops_per_s'] / peak_wall
        r['mfu_cpu_time'] = r['gflops_per_cpu_s'] / peak_cpu
    gen_cfg = TransformerConfig(
        width=256,
        depth=4,
        num_heads=4,
        num_kv_heads=1,
        mlp_ratio=2.0,
        time_every=4,
        time_window=16 if quick else 64,
    )
    gen_layout = dynamics_layout(num_latents=16, num_actions=1, num_registers=2)
    contexts = [8, 15] if quick else [8, 32, 63]
    gen = bench_inference(gen_cfg, gen_layout, contexts, reps=5 if quick else 20)
    return {
        'matmul_peak_gflops': peak_wall,
        'matmul_peak_gflops_per_cpu_s': peak_cpu,
        'train': train,
        'inference': gen,
    }


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument('--quick', action='store_true')
    result = run(parser.parse_args().quick)
    print(json.dumps(result, indent=1, default=lambda v: float(np.asarray(v))))
