"""Paper-scale speed on one accelerator: the 1.6B dynamics step's MFU and batch-1 generation.

Run on a GPU machine (one command, see README "Benchmarks"; not yet run on a GPU: the compiles
and timings should take minutes, and launch/gpu_bench.sh stops it after 8):
  launch/gpu_bench.sh OUT_DIR          (or python -m benchmarks.run --only=paper_scale)
On a CPU only the reduced shapes run (`--quick`: same code path, tiny widths); without it the
benchmark reports why it skipped: the paper's model with its AdamW state and EMA needs about
32 GB and minutes per step.

Shapes (experiments/minecraft_paper.py's dynamics variant, PAPER 4.2 / 5):
  training    30 blocks of width 1,920 (30 query heads of 64, 3 KV heads; 1.57B parameters),
              256 packed latent tokens + 1 action + 1 shortcut + 32 registers per frame, bf16
              matmuls, full remat, layers scanned by groups of 4; one row of T1 = 64 frames (the
              short batch; pre-tokenized latents, teacher passes on every row as the config says).
              The TPU splash kernel is swapped for the einsum path (same function: soft-cap
              included) where the backend is not a TPU.
  generation  the same model at batch 1: K = 4 denoising passes + the commit pass per frame as
              one compiled call with the KV cache donated (`generation.jit_frame_step`), after 1,
              64 and 191 frames of context (C = 192); frames per second of the steady state.

Figures: `train_mfu_chip_bf16` against the chip's nominal dense bf16 peak (CHIP_BF16_PEAK, by
device kind; absent for unknown chips), `train_mfu_measured_bf16` against a bf16 matmul timed in
the same run, and `gen_b1_*`. Issue targets: MFU >= 60 % of the bf16 peak; >= 30 frames/s
(PAPER 7: 21 FPS on one H100 for the whole interactive model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.bench_dynamics import step_flops
from benchmarks.bench_peer_shapes import (
    frame_ms,
    fresh_frame_ms,
    gen_setup,
    phase_runner,
    zero_actions,
)
from benchmarks.run import matmul_peak, time_fn, write_atomic
from dreamer4_jax import model_configs as mc
from dreamer4_jax.configs import base_config
from dreamer4_jax.nn import param_count
from dreamer4_jax.train import dynamics_phase
from experiments import minecraft_paper

# Dense bf16 FLOP/s per chip (vendor datasheets; the sparse figures are twice these).
CHIP_BF16_PEAK = {
    'NVIDIA H100 80GB HBM3': 989.4e12,  # SXM
    'NVIDIA H100 PCIe': 756.5e12,
    'NVIDIA H100 NVL': 835.5e12,
    'NVIDIA H200': 989.4e12,
    'NVIDIA A100-SXM4-80GB': 312e12,
    'NVIDIA A100-SXM4-40GB': 312e12,
    'NVIDIA A100 80GB PCIe': 312e12,
}

PAPER_CONTEXTS = (1, 64, 191)
# --quick: the same step and generation code at widths a CPU runs in seconds.
QUICK_TRANSFORMER = dict(
    width=64, depth=4, num_heads=2, num_kv_heads=1, head_dim=32, time_window=8, dtype='float32'
)
QUICK_CONTEXTS = (1, 7)


def log(msg: str) -> None:
    print(f'[paper_scale] {msg}', file=sys.stderr, flush=True)


def paper_config(batch: int, frames: int, quick: bool) -> ml_collections.ConfigDict:
    """minecraft_paper.py's dynamics shapes as one accelerator runs them: `batch` rows of
    `frames` frames of pre-tokenized latents (no data stack is imported)."""
    c = base_config()
    c.phase = 'dynamics'
    c.train.batch_size = batch
    c.data = ml_collections.ConfigDict({'window_length': frames})
    c.tokenizer = minecraft_paper.paper_tokenizer()
    c.dynamics = minecraft_paper.paper_dynamics()
    c.dynamics.short_length = frames  # one batch length: the short step T1 (no alternation)
    c.dynamics.latents = 'batch'
    if jax.default_backend() != 'tpu':
        c.dynamics.transformer.attention_impl = 'einsum'  # splash is a TPU kernel
    if quick:
        c.tokenizer.num_latents = 32
        c.dynamics.num_registers = 4
        c.dynamics.transformer.update(QUICK_TRANSFORMER)
    if frames > int(c.dynamics.transformer.time_window):
        raise ValueError(
            f'--frames={frames} exceeds the time window C={c.dynamics.transformer.time_window}'
        )
    return c


def train_step(config):
    """(run() -> loss, model FLOPs per step, DynamicsConfig) of the real phase-1b step."""
    tok_cfg = mc.tokenizer_config_from(config.tokenizer)
    model_cfg = mc.dynamics_config_from(config.dynamics, tok_cfg)
    phase = dynamics_phase.make_phase(config, (None, tok_cfg))
    b, t = int(config.train.batch_size), int(config.data.window_length)
    r = np.random.default_rng(0)
    data = {
        'latents': r.uniform(-1, 1, (b, t, tok_cfg.num_latents, tok_cfg.latent_dim)).astype(
            np.float32
        ),
        'action': zero_actions(model_cfg.actions, (b, t)),
        'has_action': np.ones((b, t), bool),
        'is_first': np.zeros((b, t), bool),
    }
    t0 = time.perf_counter()
    run = phase_runner(phase, data, {})  # compiles and runs one step
    log(f'train step compiled and ran in {time.perf_counter() - t0:.0f} s')
    flops = step_flops(model_cfg, dynamics_phase.make_plan(config), b, t)
    return run, flops, model_cfg


def train_figures(config, bf16_peak: float) -> dict:
    run, flops, model_cfg = train_step(config)
    seconds = time_fn(run, repeats=3, min_time=1.0)
    b, t = int(config.train.batch_size), int(config.data.window_length)
    out = {
        'params': param_count(model_cfg.transformer),
        'tokens_per_frame': model_cfg.layout().num_tokens,
        'train_batch': b,
        'train_frames': t,
        'train_step_seconds': seconds,
        'train_model_flops_per_step': flops,
        'train_flops_per_sec': flops / seconds,
        'train_mfu_measured_bf16': flops / seconds / bf16_peak,
    }
    chip = CHIP_BF16_PEAK.get(jax.devices()[0].device_kind)
    if chip:
        out['train_mfu_chip_bf16'] = flops / seconds / chip
    log(f'train step {seconds:.3f} s, {flops / seconds / 1e12:.1f} TFLOP/s')
    return out


def generation_figures(config, contexts: tuple[int, ...]) -> dict:
    model, params = gen_setup(config)
    out = {}
    for context in contexts:
        ms = fresh_frame_ms(model, params, context)
        out[f'gen_b1_ctx{context}_ms_per_frame'] = ms
        log(f'generation after {context} frames: {ms:.1f} ms per frame')
    ms, _ = frame_ms(model, params, 1, contexts[-1])
    out['gen_b1_steady_ms_per_frame'] = ms
    out['gen_b1_frames_per_sec'] = 1e3 / ms
    log(f'generation, steady: {1e3 / ms:.1f} frames/s')
    return out


def measure(quick: bool, batch: int = 1, frames: int = 64, train: bool = True, gen: bool = True):
    config = paper_config(batch, 8 if quick else frames, quick)
    n = 1024 if jax.default_backend() == 'cpu' else 8192
    bf16_peak = matmul_peak(jnp.bfloat16, n=n)
    out = {
        'shape': 'quick (reduced widths)' if quick else 'paper (minecraft_paper.py:dynamics)',
        'device_kind': jax.devices()[0].device_kind,
        'bf16_matmul_flops': bf16_peak,
    }
    log(f'{out["device_kind"]}: bf16 matmul {bf16_peak / 1e12:.1f} TFLOP/s')
    if train:
        out.update(train_figures(config, bf16_peak))
    if gen:
        out.update(generation_figures(config, QUICK_CONTEXTS if quick else PAPER_CONTEXTS))
    return out


def run(quick: bool = False) -> dict:
    """The harness entry point (`python -m benchmarks.run --only=paper_scale [--quick]`)."""
    if not quick and jax.default_backend() == 'cpu':
        return {
            'skipped': 'the paper-scale model needs an accelerator (1.57B parameters, about 32 GB '
            'with AdamW state and EMA); --quick runs the reduced shapes'
        }
    return measure(quick)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='reduced widths (CPU, seconds)')
    p.add_argument('--batch', type=int, default=1, help='training rows per step')
    p.add_argument('--frames', type=int, default=64, help='training frames per row (<= 192)')
    p.add_argument('--no_train', action='store_true', help='generation only')
    p.add_argument('--no_gen', action='store_true', help='training only')
    p.add_argument('--out', default='', help='also write the figures to this JSON file')
    args = p.parse_args(argv)
    if args.batch < 1 or args.frames < 1:
        p.error('--batch and --frames must be >= 1')
    if not args.quick and jax.default_backend() == 'cpu':
        p.error(run(quick=False)['skipped'] + f' (JAX sees only: {jax.devices()})')
    try:
        out = measure(args.quick, args.batch, args.frames, not args.no_train, not args.no_gen)
    except ValueError as e:
        p.error(str(e))
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.out:
        write_atomic(args.out, out)
    return out


if __name__ == '__main__':
    main()
