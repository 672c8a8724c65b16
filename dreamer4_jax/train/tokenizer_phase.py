"""Phase 1a: train the causal tokenizer (PAPER 4.3, Eq. 5) on the shared loop.

Loss: MSE + 0.2 * LPIPS, each divided by a running RMS of itself (PAPER 6.6); the normalizer
state lives in TrainState.aux and is checkpointed. LPIPS weights are a jit argument (constants).
With `tokenizer.ema_decay > 0` the phase also keeps an EMA of its weights (PAPER 8 samples the
dynamics with EMA weights [U for the tokenizer]); evaluation, the latent cache and every later
phase then use the EMA weights, and the raw weights' PSNR is logged next to it.
Evaluation: PSNR / SSIM on held-out episodes with no masking (the inference setting) and at a
high mask rate, plus a PNG grid (originals over reconstructions) per evaluation.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dreamer4_jax import losses, world_model
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.eval import images as image_io
from dreamer4_jax.eval import patch_error
from dreamer4_jax.tokenizer import Tokenizer, sample_patch_mask
from dreamer4_jax.train import data_sources
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.dynamics_phase import ema_decay_at, ema_update
from dreamer4_jax.train.loop import Phase


def frames_to_float(image_BTHWC: jax.Array) -> jax.Array:
    return image_BTHWC.astype(jnp.float32) / 255.0


def make_loss_fn(model: Tokenizer, lpips_apply, config: ml_collections.ConfigDict):
    tc = config.tokenizer
    weights = {'mse': float(tc.loss_weights.mse), 'lpips': float(tc.loss_weights.lpips)}
    lpips_frames = int(tc.lpips_frames)

    def loss_fn(params, aux, batch, rng, lpips_params):
        x_BTHWC = frames_to_float(batch['image'])
        b, t = x_BTHWC.shape[:2]
        mask_BTP = sample_patch_mask(
            rng, (b, t), model.config.num_patches, model.config.max_mask_prob
        )
        recon, _ = model.apply({'params': params}, x_BTHWC, mask_BTP)
        terms = {'mse': jnp.mean((recon - x_BTHWC) ** 2)}
        if weights['lpips'] > 0:
            # LPIPS on the last `lpips_frames` frames of every row (0 = all): its AlexNet
            # backward dominates the step on CPU; MSE still covers every frame.
            sub = slice(-lpips_frames, None) if lpips_frames else slice(None)
            terms['lpips'] = jnp.mean(lpips_apply(lpips_params, recon[:, sub], x_BTHWC[:, sub]))
        used = {k: weights[k] for k in terms}
        total, rms, metrics = losses.update_and_normalize(
            aux['rms'], terms, used, beta=float(tc.rms_beta)
        )
        return total, (rms, metrics)

    return loss_fn


def train_step(model_loss, tx, ema_decay, state, batch, rng, consts):
    """One tokenizer step (PAPER 4.3): masked autoencoding, RMS-normalized MSE + LPIPS."""
    grad_fn = jax.value_and_grad(model_loss, has_aux=True)
    (_, (rms, metrics)), grads = grad_fn(state.params, state.aux, batch, rng, consts['lpips'])
    metrics['grad_norm'] = optax.tree.norm(grads)
    new = state_lib.apply_gradients(state, grads, tx, aux={**state.aux, 'rms': rms})
    if ema_decay > 0:
        decay = ema_decay_at(state.step, ema_decay)
        new = new.replace(aux={**new.aux, 'ema': ema_update(state.aux['ema'], new.params, decay)})
    return new, metrics


def ema_decay_of(config: ml_collections.ConfigDict) -> float:
    """`config.tokenizer.ema_decay` (0 = off; runs saved before the field existed have none)."""
    decay = float(config.tokenizer.get('ema_decay', 0.0))
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f'config.tokenizer.ema_decay={decay} must be in [0, 1) (0 = off)')
    return decay


def make_phase(config: ml_collections.ConfigDict) -> Phase:
    model = world_model.tokenizer_of(config.tokenizer)
    tx = state_lib.make_optimizer(config.train)
    ema_decay = ema_decay_of(config)
    lpips_apply, lpips_params = losses.load_lpips(config.tokenizer.lpips_net)

    def init(rng):
        params = world_model.init_tokenizer_params(model, rng)
        aux = {'rms': losses.init_rms_state(['mse', 'lpips'])}
        if ema_decay > 0:
            aux['ema'] = params
        return state_lib.create_train_state(params, tx, aux)

    reconstruct = jax.jit(lambda p, x, m: model.apply({'params': p}, x, m)[0])

    def evaluate(state, step, workdir):
        if ema_decay <= 0:
            return evaluate_reconstructions(config, model, reconstruct, state.params, step, workdir)
        # The EMA weights are what later phases load; the raw weights' PSNR says what it adds.
        results = evaluate_reconstructions(
            config, model, reconstruct, state.aux['ema'], step, workdir
        )
        raw = evaluate_reconstructions(
            config, model, reconstruct, state.params, step, workdir, grid=False
        )
        return {**results, **{f'{k}_raw': v for k, v in raw.items()}}

    return Phase(
        name='tokenizer',
        init=init,
        train_step=functools.partial(
            train_step, make_loss_fn(model, lpips_apply, config), tx, ema_decay
        ),
        make_data=lambda pi, pc: data_sources.train_windows(config, pi, pc),
        evaluate=evaluate,
        main_metrics=('loss/total', 'loss/mse', 'loss/lpips'),
        checked_metrics=('loss/total', 'loss/mse', 'loss/lpips'),
        constants=lambda: {'lpips': lpips_params},
    )


def evaluate_reconstructions(
    config, model, reconstruct, params, step, workdir, grid: bool = True
) -> dict:
    """PSNR/SSIM on held-out windows at p = 0 and at the eval mask rate; writes a PNG grid.

    Also the PSNR of the worst patch position at p = 0 (`psnr_p0_worst_patch`) and, with the
    grid, a heat map of every patch position's PSNR (`eval/patch_error_<step>.png`).
    """
    batch = data_sources.eval_batch(config)
    x = frames_to_float(jnp.asarray(batch['image']))
    b, t = x.shape[:2]
    results = {}
    recon0 = None
    for name, p in (
        ('p0', 0.0),
        (f'p{int(100 * config.tokenizer.eval_mask_prob)}', float(config.tokenizer.eval_mask_prob)),
    ):
        rng = jax.random.key(1234)
        mask = jax.random.uniform(rng, (b, t, model.config.num_patches)) < p
        recon = jnp.clip(reconstruct(params, x, mask), 0.0, 1.0)
        results[f'psnr_{name}'] = float(jnp.mean(losses.psnr(recon, x)))
        results[f'ssim_{name}'] = float(jnp.mean(losses.ssim(recon, x)))
        recon0 = recon if recon0 is None else recon0
    tok = model.config
    mse_RC = patch_error.patch_mse(np.asarray(recon0), np.asarray(x), tok.patch, tok.grid_hw)
    results['psnr_p0_worst_patch'] = float(patch_error.psnr_of_mse(mse_RC.max()))
    if grid and jax.process_index() == 0:
        patch_error.save_patch_error_map(
            os.path.join(workdir, 'eval', f'patch_error_{step:06d}.png'),
            mse_RC,
            f'held-out PSNR per patch position (p = 0), step {step}',
        )
        n = min(8, t)
        rows = []
        for i in range(min(4, b)):
            rows += [np.asarray(x[i, :n]), np.asarray(recon0[i, :n])]
        path = os.path.join(workdir, 'eval', f'reconstructions_{step:06d}.png')
        image_io.save_png(path, image_io.grid(rows), scale=2)
    return results
