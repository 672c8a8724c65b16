"""Open-loop evaluation of the dynamics model on held-out windows (PAPER 7, 12.5).

From the first T real frames (encoded by the frozen tokenizer) and the real actions, generate the
next H frames with the cached sampler, decode them, and compare with the real frames:
  psnr_hXX / ssim_hXX     per horizon step XX (1-based); PSNR of the MSE averaged over the
                          batch's windows (a static window that a copy gets exactly right
                          stays finite), SSIM averaged over the windows;
  psnr_copy_last_hXX      the same PSNR for the baseline that repeats the last context frame
                          (a model must beat it where the scene moves);
  psnr_copy_latent_hXX    the baseline that repeats the last context frame's LATENT and decodes
                          it: the same tokenizer error as the model's frames, so the gap to
                          psnr_hXX is what the dynamics model adds over a static world;
  psnr / ssim / psnr_copy_last / psnr_copy_latent / psnr_recon
                          means over the horizon; psnr_recon is the tokenizer's own
                          reconstruction of the same frames (upper bound);
  counterfactual_mse      pixel MSE between futures generated from the SAME context and noise
                          with the real vs. random actions (action conditioning at work);
  noise_mse               pixel MSE between two futures with the same actions and different
                          noise (what sampling alone changes; the counterfactual should exceed it);
  psnr_sample_mean_hXX    with `mean_samples` = S >= 2: the PSNR of the pixel average of S futures
                          sampled with the real actions (the model's estimate of the expected
                          frame). A single sample's squared error is the mean's plus the
                          samples' variance, so a sharp sample of an uncertain future scores
                          below the average it is drawn around; a deterministic baseline such
                          as copy-last pays no such term. Reported next to psnr_hXX, not
                          instead of it.
Writes a GIF: per row [real | context reconstruction, then one generated sample | the same context,
then the average of the `mean_samples` futures (when >= 2)], a green bar over context frames and a
red bar over generated ones.

Dimension keys: B batch, L = T + H frames, T context, H horizon, N latents, C channels, H/W pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import losses
from dreamer4_jax.dynamics import Dynamics, align_actions
from dreamer4_jax.eval import images as image_io
from dreamer4_jax.generation import SamplingConfig, rollout
from dreamer4_jax.tokenizer import Tokenizer


def counterfactual_actions(
    rng: jax.Array, actions: Mapping[str, jax.Array], has_BL: jax.Array, components, start: int
):
    """Block actions with frames >= start replaced by random ones (all labeled).

    Categorical: uniform; binary: Bernoulli(0.5); continuous: the real values negated (their
    scale is data-specific, negation keeps it while changing the direction).
    """
    out = {}
    keys = jax.random.split(rng, max(len(components), 1))
    b, length = has_BL.shape
    future = (jnp.arange(length) >= start)[None, :]
    for key, (name, kind, size) in zip(keys, components, strict=False):
        a = actions[name]
        if kind == 'categorical':
            new = jax.random.randint(key, a.shape, 0, size).astype(a.dtype)
            out[name] = jnp.where(future, new, a)
        elif kind == 'binary':
            new = jax.random.bernoulli(key, 0.5, a.shape).astype(a.dtype)
            out[name] = jnp.where(future[..., None], new, a)
        else:
            out[name] = jnp.where(future[..., None], -a, a)
    return out, has_BL | future


def side_by_side(
    real_BLHWC: np.ndarray, *model_BLHWC: np.ndarray, context: int, num_rows: int
) -> np.ndarray:
    """[L, H', W', 3] uint8 frames: rows of [real | model | model ...], colored bars mark the
    context (green) and generated (red) frames of every model column."""
    columns = [image_io.to_uint8(real_BLHWC[:num_rows])]
    for gen_BLHWC in model_BLHWC:
        gen = image_io.to_uint8(gen_BLHWC[:num_rows]).copy()
        bar = max(1, gen.shape[2] // 32)
        gen[:, :context, :bar] = (0, 200, 0)
        gen[:, context:, :bar] = (220, 0, 0)
        columns.append(gen)
    frames = []
    for t in range(columns[0].shape[1]):
        rows = [np.stack([col[i, t] for col in columns]) for i in range(columns[0].shape[0])]
        frames.append(image_io.grid(rows))
    return np.stack(frames)


def psnr_of_mean_mse(x_BHWC, y_BHWC, max_val: float = 1.0):
    """Per horizon step [H]: PSNR of the pixel MSE averaged over the batch's windows.

    Averaging per-window PSNR is infinite as soon as one window is reproduced exactly (a static
    scene under the copy-last baseline); the PSNR of the mean MSE is finite unless every window is.
    """
    err = (jnp.asarray(x_BHWC, jnp.float32) - jnp.asarray(y_BHWC, jnp.float32)) ** 2
    mse_H = jnp.mean(err, axis=(0, 2, 3, 4))
    return 10.0 * jnp.log10(max_val**2 / mse_H)


def latent_mse_per_horizon(pred_BHNC, target_BHNC):
    """[H] mean squared latent error per horizon step over windows, tokens and channels.

    `pred_BHNC` may hold one frame (H = 1), e.g. the last context latent, to score copying it.
    """
    pred = jnp.broadcast_to(pred_BHNC, target_BHNC.shape)
    return jnp.mean((pred - target_BHNC) ** 2, axis=(0, 2, 3))


def _scores(
    gen_BHWC, target_BHWC, last_BWC, recon_BHWC, copy_latent_BHWC, gen_BHNC, z_BHNC, z_last_BNC
) -> dict:
    """Per-horizon-step scores over the batch: [H] arrays.

    The latent ones make the same comparison before the decoder: the model's latents and the
    last context latent against the encoder's latents of the real future frames.
    """
    copy = jnp.broadcast_to(last_BWC[:, None], target_BHWC.shape)
    return {
        'psnr': psnr_of_mean_mse(gen_BHWC, target_BHWC),
        'ssim': jnp.mean(losses.ssim(gen_BHWC, target_BHWC), axis=0),
        'psnr_copy_last': psnr_of_mean_mse(copy, target_BHWC),
        'psnr_copy_latent': psnr_of_mean_mse(copy_latent_BHWC, target_BHWC),
        'psnr_recon': psnr_of_mean_mse(recon_BHWC, target_BHWC),
        'latent_mse': latent_mse_per_horizon(gen_BHNC, z_BHNC),
        'latent_mse_copy': latent_mse_per_horizon(z_last_BNC[:, None], z_BHNC),
    }


class OpenLoopEvaluator:
    """Jitted encode / rollout / decode, compiled once and reused across evaluations."""

    def __init__(self, model: Dynamics, tokenizer: Tokenizer, sampling: SamplingConfig):
        self.model = model
        self.sampling = sampling
        self.encode = jax.jit(
            lambda p, x: tokenizer.apply({'params': p}, x, method=Tokenizer.encode)
        )
        self.decode = jax.jit(
            lambda p, z: jnp.clip(
                tokenizer.apply({'params': p}, z, method=Tokenizer.decode), 0.0, 1.0
            )
        )
        self.rollout = jax.jit(
            functools.partial(rollout, model, sampling=sampling), static_argnames=('horizon',)
        )
        self.scores = jax.jit(_scores)

    def decode_static(self, tokenizer_params: Any, z_ctx_BTNC: jax.Array, horizon: int):
        """The copy-latent baseline's frames [B, H, ...]: the last context latent repeated."""
        last = jnp.repeat(z_ctx_BTNC[:, -1:], horizon, axis=1)
        pix = self.decode(tokenizer_params, jnp.concatenate([z_ctx_BTNC, last], axis=1))
        return pix[:, z_ctx_BTNC.shape[1] :]

    def score_future(self, tokenizer_params, real, z, gen, gen_pix, context: int) -> dict:
        """Host copies of every per-horizon score of generated futures against the real ones
        (`_scores`), the reconstruction and copy baselines computed here.

        real [B, T, H, W, C] and z [B, T, N, C] hold the context and the real future (T =
        context + horizon); gen [B, horizon, N, C] and gen_pix [B, horizon, ...] are the rollout.
        """
        horizon = gen.shape[1]
        recon = self.decode(tokenizer_params, z)
        copy_latent = self.decode_static(tokenizer_params, z[:, :context], horizon)
        return jax.device_get(
            self.scores(
                gen_pix,
                real[:, context:],
                real[:, context - 1],
                recon[:, context:],
                copy_latent,
                gen,
                z[:, context:],
                z[:, context - 1],
            )
        )

    def __call__(
        self,
        params: Any,
        tokenizer_params: Any,
        batch: Mapping[str, Any],
        *,
        context: int,
        horizon: int | None = None,
        rng: jax.Array,
        video_path: str | None = None,
        num_videos: int = 4,
        mean_samples: int = 0,
    ) -> dict:
        real = jnp.asarray(batch['image'], jnp.float32) / 255.0
        b, length = real.shape[:2]
        horizon = length - context if horizon is None else horizon
        if context < 1 or horizon < 1 or context + horizon > length:
            raise ValueError(
                f'open loop: context={context} and horizon={horizon} must be >= 1 '
                f'and fit the eval window of {length} frames; change '
                'dynamics.eval_context / eval_horizon or data.window_length'
            )
        real = real[:, : context + horizon]
        acts, has = align_actions(
            {k: jnp.asarray(v)[:, : context + horizon] for k, v in batch['action'].items()},
            jnp.asarray(batch['has_action'])[:, : context + horizon],
            jnp.asarray(batch['is_first'])[:, : context + horizon] if 'is_first' in batch else None,
        )
        z = self.encode(tokenizer_params, real)
        z_ctx = z[:, :context]
        rng_cf, rng_noise = jax.random.split(jax.random.fold_in(rng, 1))

        def future(actions, has_BL, key):
            gen = self.rollout(params, z_ctx, actions, has_BL, key, horizon=horizon)
            # The decoder is causal in time: decode after the real context latents.
            pix = self.decode(tokenizer_params, jnp.concatenate([z_ctx, gen], axis=1))
            return gen, pix

        gen, pix = future(acts, has, rng)
        gen_pix = pix[:, context:]
        s = self.score_future(tokenizer_params, real, z, gen, gen_pix, context)
        out = {k: float(v.mean()) for k, v in s.items()}
        for k, v in s.items():  # and per horizon step: psnr_h01, latent_mse_copy_h03, ...
            out.update({f'{k}_h{h + 1:02d}': float(v[h]) for h in range(horizon)})

        comps = self.model.config.actions
        if comps:
            cf_acts, cf_has = counterfactual_actions(rng_cf, acts, has, comps, context)
            gen_cf, pix_cf = future(cf_acts, cf_has, rng)
            out['counterfactual_mse'] = float(jnp.mean((pix_cf - pix)[:, context:] ** 2))
            out['counterfactual_latent_mse'] = float(jnp.mean((gen_cf - gen) ** 2))
        _, pix_noise = future(acts, has, rng_noise)
        out['noise_mse'] = float(jnp.mean((pix_noise - pix)[:, context:] ** 2))
        columns = [gen_pix]  # what the GIF shows after the context: a sample, then the mean
        if mean_samples >= 2:
            total = gen_pix + pix_noise[:, context:]
            for i in range(mean_samples - 2):
                key = jax.random.fold_in(rng_noise, i + 1)
                total = total + future(acts, has, key)[1][:, context:]
            columns.append(total / mean_samples)
            mean_psnr = jax.device_get(psnr_of_mean_mse(columns[-1], real[:, context:]))
            out['psnr_sample_mean'] = float(mean_psnr.mean())
            out.update(
                {f'psnr_sample_mean_h{h + 1:02d}': float(mean_psnr[h]) for h in range(horizon)}
            )

        if video_path is not None and jax.process_index() == 0:
            # The context as the tokenizer sees it (the decoder is causal: equal to the first
            # frames of a decode of the whole window).
            ctx_pix = self.decode(tokenizer_params, z_ctx)
            shown = [np.asarray(jnp.concatenate([ctx_pix, c], axis=1)) for c in columns]
            frames = side_by_side(np.asarray(real), *shown, context=context, num_rows=num_videos)
            image_io.save_video(video_path, frames, fps=4, scale=2)
        return out
