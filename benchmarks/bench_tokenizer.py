"""Tokenizer training throughput (frames/s), model FLOPs utilization and peak memory per frame.

The step is the real phase-1a loss (masking, encoder, tanh bottleneck, decoder, MSE, RMS
normalization, AdamW); measured with and without the LPIPS term (AlexNet forward + backward is
not model FLOPs). MFU = model FLOPs / s over the f32 matmul peak the harness measures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.run import time_fn
from dreamer4_jax import losses
from dreamer4_jax.model_configs import (
    tokenizer_config_dict,
    tokenizer_config_from,
    transformer_config_dict,
)
from dreamer4_jax.nn import train_step_flops
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.tokenizer_phase import make_loss_fn

SIZES = {
    # 64 patches + 16 latents = 80 tokens per frame, about 2.1M parameters.
    'tiny': dict(width=128, depth=4, num_heads=4),
    # 80 tokens per frame, about 12.6M parameters (the one-GPU config's shape).
    'small': dict(width=256, depth=6, num_heads=8),
}


def tokenizer_flops(cfg, batch: int, frames: int) -> int:
    s_enc = cfg.num_patches + cfg.num_latents
    flops = train_step_flops(cfg.encoder, s_enc, batch, frames)
    flops += train_step_flops(cfg.decoder, s_enc, batch, frames)
    # Patch embedding, bottleneck, latent up-projection and pixel head (3x for the backward).
    bt = batch * frames
    io = cfg.num_patches * cfg.patch_pixels * (cfg.encoder.width + cfg.decoder.width)
    io += cfg.num_latents * cfg.latent_dim * (cfg.encoder.width + cfg.decoder.width)
    return flops + 3 * 2 * bt * io


def measure(size: str, batch: int, frames: int, with_lpips: bool, remat: str = 'none') -> dict:
    c = ml_collections.ConfigDict()
    block = dict(time_every=4, remat=remat, **SIZES[size])
    c.tokenizer = tokenizer_config_dict(
        encoder=transformer_config_dict(**block), decoder=transformer_config_dict(**block)
    )
    c.tokenizer.loss_weights.lpips = 0.2 if with_lpips else 0.0
    train = ml_collections.ConfigDict(
        dict(steps=100, warmup_steps=1, learning_rate=1e-3, weight_decay=0.0, grad_clip=1.0)
    )
    cfg = tokenizer_config_from(c.tokenizer)
    model = Tokenizer(cfg)
    lpips_apply, lpips_params = losses.load_lpips('alexnet')
    loss_fn = make_loss_fn(model, lpips_apply, c)
    tx = state_lib.make_optimizer(train)
    x = jnp.zeros((batch, frames, cfg.height, cfg.width, 3), jnp.uint8)
    params = jax.jit(lambda r: model.init(r, x[:1, :1].astype(jnp.float32)))(jax.random.key(0))
    params = jax.tree.map(
        lambda p: p.value if hasattr(p, 'value') else p,
        params['params'],
        is_leaf=lambda p: hasattr(p, 'value'),
    )
    state = state_lib.create_train_state(
        params, tx, {'rms': losses.init_rms_state(['mse', 'lpips'])}
    )

    def step(state, batch, rng, lp):
        (_, (rms, m)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.aux, batch, rng, lp
        )
        return state_lib.apply_gradients(state, g, tx, aux={'rms': rms}), m['loss/total']

    jitted = jax.jit(step)
    batch_dict = {'image': x}
    compiled = jitted.lower(state, batch_dict, jax.random.key(1), lpips_params).compile()
    mem = compiled.memory_analysis()
    seconds = time_fn(jitted, state, batch_dict, jax.random.key(1), lpips_params, repeats=3)
    n_frames = batch * frames
    flops = tokenizer_flops(cfg, batch, frames)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    temp = getattr(mem, 'temp_size_in_bytes', 0) if mem is not None else 0
    return {
        'params': int(n_params),
        'tokens_per_frame': cfg.num_patches + cfg.num_latents,
        'batch_frames': n_frames,
        'step_seconds': seconds,
        'frames_per_sec': n_frames / seconds,
        'model_flops_per_step': flops,
        'flops_per_sec': flops / seconds,
        'peak_temp_bytes_per_frame': temp / n_frames,
    }


def run(quick: bool = False) -> dict:
    out = {}
    shapes = {'tiny': (4, 8), 'small': (2, 8)} if quick else {'tiny': (8, 16), 'small': (4, 16)}
    for size, (b, t) in shapes.items():
        r = measure(size, b, t, with_lpips=False)
        for k, v in r.items():
            out[f'{size}_{k}'] = v
        if size == 'tiny':
            r = measure(size, b, t, with_lpips=True)
            out['tiny_with_lpips_frames_per_sec'] = r['frames_per_sec']
            # Rematerializing each block trades recompute for activation memory.
            r = measure(size, b, t, with_lpips=False, remat='full')
            out['tiny_remat_full_frames_per_sec'] = r['frames_per_sec']
            out['tiny_remat_full_peak_temp_bytes_per_frame'] = r['peak_temp_bytes_per_frame']
    return out
