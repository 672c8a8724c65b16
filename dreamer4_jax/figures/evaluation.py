"""What the figures measure on a finished dynamics run (PAPER 12.3 Table 2, 12.5 Fig. 7).

open_loop: held-out windows; `context` real frames, then `horizon` frames generated with the
  real actions (the open-loop evaluator's jitted encode / rollout / decode); returns the real
  and generated future videos and PSNR / SSIM per horizon step (PSNR of the MSE averaged over
  the videos, as eval/open_loop.py).
frames_per_second: batch-1 generation speed with `generation.jit_frame_step` (one compiled call
  per frame: K denoising passes and the commit), after two warm-up frames that compile it.
  The tokenizer's decoder is not timed: every arm shares it (PAPER 12.3 times the world model).

Dimension keys: B videos, L = T + H frames, T context, H horizon, N latents, C channels.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import checkpoint, generation, pretrained, world_model
from dreamer4_jax.dynamics import align_actions
from dreamer4_jax.eval import fvd
from dreamer4_jax.eval import open_loop as open_loop_lib
from dreamer4_jax.figures.output import read_json, write_json
from dreamer4_jax.train import data_sources


@dataclasses.dataclass(frozen=True)
class OpenLoopResult:
    real_BHHWC: np.ndarray  # the real future frames, float32 in [0, 1] ([B, H, H', W', 3])
    gen_BHHWC: np.ndarray  # the generated ones
    psnr_H: np.ndarray  # [H] per horizon step
    ssim_H: np.ndarray
    psnr_copy_last_H: np.ndarray  # the copy-last-context-frame baseline
    psnr_copy_latent_H: np.ndarray  # the last context latent repeated, decoded

    def summary(self) -> dict:
        return {
            'psnr': float(np.mean(self.psnr_H)),
            'ssim': float(np.mean(self.ssim_H)),
            'psnr_copy_last': float(np.mean(self.psnr_copy_last_H)),
            'psnr_copy_latent': float(np.mean(self.psnr_copy_latent_H)),
            'psnr_h': [float(v) for v in self.psnr_H],
            'ssim_h': [float(v) for v in self.ssim_H],
        }


@dataclasses.dataclass
class LoadedRun:
    """A dynamics run ready to sample: model, weights (EMA where kept), its tokenizer."""

    run: pretrained.Pretrained
    model: object
    params: object
    tokenizer_params: object
    evaluator: open_loop_lib.OpenLoopEvaluator


def load_dynamics(workdir: str) -> LoadedRun:
    run = pretrained.load(workdir, expect='dynamics')
    tok_run = run.earlier()
    tok_cfg = tok_run.tokenizer_config()
    model = world_model.dynamics_of(run.config.dynamics, tok_cfg)
    evaluator = open_loop_lib.OpenLoopEvaluator(
        model, world_model.tokenizer_of(tok_run.config.tokenizer),
        world_model.sampling_config(run.config.dynamics),
    )  # fmt: skip
    return LoadedRun(run, model, run.params(), tok_run.params(), evaluator)


def eval_windows(loaded: LoadedRun, videos: int, length: int) -> dict:
    """`videos` held-out windows of `length` frames (the same ones for every arm)."""
    return data_sources.eval_batch(loaded.run.config, batch_size=videos, window_length=length)


def open_loop(loaded: LoadedRun, batch: dict, context: int, horizon: int, seed: int = 0):
    ev = loaded.evaluator
    length = context + horizon
    real = jnp.asarray(batch['image'][:, :length], jnp.float32) / 255.0
    acts, has = align_actions(
        {k: jnp.asarray(v)[:, :length] for k, v in batch['action'].items()},
        jnp.asarray(batch['has_action'])[:, :length],
        jnp.asarray(batch['is_first'])[:, :length] if 'is_first' in batch else None,
    )
    z = ev.encode(loaded.tokenizer_params, real)
    gen = ev.rollout(
        loaded.params, z[:, :context], acts, has, jax.random.key(seed), horizon=horizon
    )
    # The decoder is causal in time: decode the generated latents after the real context.
    pix = ev.decode(loaded.tokenizer_params, jnp.concatenate([z[:, :context], gen], axis=1))
    target, gen_pix = real[:, context:], pix[:, context:]
    s = ev.score_future(loaded.tokenizer_params, real, z, gen, gen_pix, context)
    return OpenLoopResult(
        np.asarray(target),
        np.asarray(gen_pix),
        s['psnr'],
        s['ssim'],
        s['psnr_copy_last'],
        s['psnr_copy_latent'],
    )


def frames_per_second(
    loaded: LoadedRun, batch: dict, context: int, frames: int, clock=time.perf_counter
) -> float:
    """Frames per second generating one video (batch 1) after `context` real frames."""
    model, params = loaded.model, loaded.params
    sampling = loaded.evaluator.sampling
    length = context + frames + 2
    row = jax.tree.map(lambda a: jnp.asarray(a)[:1], batch)
    # The window's actions, repeated when the timed frames outnumber them.
    cycle = np.arange(length) % np.asarray(row['has_action']).shape[1]
    acts, has = align_actions(
        {k: v[:, cycle] for k, v in row['action'].items()}, jnp.ones((1, length), bool)
    )
    z = loaded.evaluator.encode(
        loaded.tokenizer_params, jnp.asarray(row['image'][:, :context], jnp.float32) / 255.0
    )
    window = model.config.transformer.time_window
    cache = jax.jit(
        lambda p, z_, a, h, r: generation.prefill(
            model, p, z_, a, h, r, sampling, None if window else length
        )
    )(params, z, _frames(acts, 0, context), has[:, :context], jax.random.key(0))
    step = generation.jit_frame_step(model, sampling)
    rng = jax.random.key(1)

    def one(cache, rng, t):
        return step(params, cache, _frames(acts, t, 1), has[:, t : t + 1], rng)

    # Two warm-up frames: the first compiles for the prefilled cache, the second for the cache
    # the step itself returns (their array types differ, so jit compiles once for each).
    for t in (context, context + 1):
        z_new, cache, rng = one(cache, rng, t)
    jax.block_until_ready(z_new)
    start = clock()
    for t in range(context + 2, context + 2 + frames):
        z_new, cache, rng = one(cache, rng, t)
    jax.block_until_ready(z_new)
    return frames / max(clock() - start, 1e-9)


def _frames(tree, start: int, size: int):
    return jax.tree.map(lambda a: a[:, start : start + size], tree)


def evaluate_arm(workdir: str, sizes, *, frechet: bool, fps: bool, log=print) -> dict:
    """Open-loop scores (and the Frechet metric, batch-1 FPS) of the dynamics run in `workdir`.

    Stored in workdir/figure_eval.json with the checkpoint step and sizes they were measured
    with; a re-run with the same ones reads them back instead of measuring again.
    """
    step = checkpoint.saved_config(workdir)[1]
    key = {
        'step': int(step),
        'videos': sizes.videos,
        'context': sizes.context,
        'horizon': sizes.horizon,
        'frechet': frechet,
        'fps_frames': sizes.fps_frames if fps else 0,
    }
    path = os.path.join(workdir, 'figure_eval.json')
    stored = read_json(path)
    if stored and stored.get('key') == key:
        return stored['results']
    log(f'[figures] evaluating {workdir}')
    loaded = load_dynamics(workdir)
    batch = eval_windows(loaded, sizes.videos, sizes.context + sizes.horizon)
    result = open_loop(loaded, batch, sizes.context, sizes.horizon)
    results = result.summary()
    if frechet:
        frechet = fvd.standin_frechet_distance(result.real_BHHWC, result.gen_BHHWC)
        results['frechet'] = float(frechet)
    if fps:
        results['fps'] = frames_per_second(loaded, batch, sizes.context, sizes.fps_frames)
    write_json(path, {'key': key, 'results': results})
    return results
