"""How fast a tokenizer learns on real frames: MSE-only steps on single frames, held-out PSNR.

  python -m benchmarks.tokenizer_probe [--experiment=experiments/craftax_tiny.py] \
      [--steps=300] [--frames_per_step=8] [--optimizer=muon] [--mask] \
      [--set tokenizer.encoder.num_heads=4 --set train.learning_rate=5e-3 ...]

The README's "Tokenizer probes" table comes from this. Frames are the experiment's dataset
(build it first, e.g. `make demo DEMO_ARGS=--stages=data`); the held-out set is 256 frames of its
eval split, fixed by --seed. Without --mask no patch is masked (the phase masks with
p ~ U(0, tokenizer.max_mask_prob)); the loss is the pixel MSE alone (the phase adds LPIPS and its
running-RMS normalization), so a probe of a few hundred steps runs in about a minute on 2 cores.
The optimizer is the phases' own (`train/state.py: make_optimizer`) with the experiment's
tokenizer-variant `train` settings. Prints the held-out PSNR at the start and every 100 steps with
the held-out MSE of each row of patches (on Craftax rows 0-6 are the map, 7 the status digits and
8 the inventory), and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamer4_jax import config_checks, parallel
from dreamer4_jax import model_configs as mc
from dreamer4_jax.configs import OPTIMIZERS
from dreamer4_jax.data.build import load_meta
from dreamer4_jax.eval.open_loop import psnr_of_mean_mse
from dreamer4_jax.eval.patch_error import patch_mse
from dreamer4_jax.tokenizer import Tokenizer, sample_patch_mask
from dreamer4_jax.train import state as state_lib


def load_frames(data_config, split: str) -> np.ndarray:
    """Every frame of one split as uint8 [N, H, W, 3]."""
    import tensorflow_datasets as tfds  # deferred: seconds to import

    meta = load_meta(data_config)
    source = tfds.builder_from_directory(str(meta.tfds_dir)).as_data_source(split=split)
    return np.stack([r['image'] for r in source.__getitems__(list(range(len(source))))])


def run_probe(config, *, steps: int, frames_per_step: int, mask: bool, seed: int, log=print):
    """Trains config.tokenizer for `steps` steps; {'psnr': [(step, dB), ...] from step 0, ...}."""
    tok_config = mc.tokenizer_config_from(config.tokenizer)
    train, held_out = load_frames(config.data, 'train'), load_frames(config.data, 'eval')
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(held_out), min(256, len(held_out)), replace=False)
    eval_x = jnp.asarray(held_out[pick][:, None], jnp.float32) / 255.0
    model = Tokenizer(tok_config)
    params = parallel.unboxed(model.init(jax.random.key(seed), eval_x[:1])['params'])
    train_config = config.train.copy_and_resolve_references()
    train_config.steps = steps
    tx = state_lib.make_optimizer(train_config)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, key):
        hide = (
            sample_patch_mask(key, x.shape[:2], tok_config.num_patches, tok_config.max_mask_prob)
            if mask
            else None
        )

        def loss(p):
            return jnp.mean((model.apply({'params': p}, x, hide)[0] - x) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    # Held-out frames are [N, 1, ...] windows: the PSNR of the MSE over all N frames.
    reconstruct = jax.jit(lambda p: jnp.clip(model.apply({'params': p}, eval_x)[0], 0.0, 1.0))
    target = np.asarray(eval_x)
    row_mse = []  # held-out MSE of each row of patches, at every evaluation

    def held_out_psnr(p) -> float:
        recon = reconstruct(p)
        mse_RC = patch_mse(np.asarray(recon), target, tok_config.patch, tok_config.grid_hw)
        row_mse.append(mse_RC.mean(axis=1))
        return float(psnr_of_mean_mse(recon, eval_x)[0])

    key, start = jax.random.key(seed + 1), time.time()
    curve = [(0, held_out_psnr(params))]
    for i in range(1, steps + 1):
        x = jnp.asarray(train[rng.choice(len(train), frames_per_step)][:, None], jnp.float32)
        key, sub = jax.random.split(key)
        params, opt_state, loss_value = step(params, opt_state, x / 255.0, sub)
        if i % 100 == 0 or i == steps:
            curve.append((i, held_out_psnr(params)))
            rows = ' '.join(f'{m:.4f}' for m in row_mse[-1])
            log(
                f'step {i}/{steps}  train mse {float(loss_value):.4f}  held-out PSNR '
                f'{curve[-1][1]:.2f} dB  MSE per patch row [{rows}]  ({time.time() - start:.0f} s)'
            )
    return {
        'psnr': curve,
        'patch_row_mse': [[float(m) for m in r] for r in row_mse],
        'seconds': time.time() - start,
        'frames': [len(train), len(held_out)],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--experiment', default='experiments/craftax_tiny.py')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--frames_per_step', type=int, default=8)
    parser.add_argument('--optimizer', choices=OPTIMIZERS, default=None)
    parser.add_argument('--mask', action='store_true', help='mask patches as the phase does')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--set', action='append', default=[], metavar='FIELD=VALUE', help='config override'
    )
    args = parser.parse_args(argv)
    settings = ','.join(args.set)
    config = config_checks.load_config(
        f'{args.experiment}:tokenizer' + (f',{settings}' if settings else '')
    )
    if args.optimizer:
        config.train.optimizer = args.optimizer
    result = run_probe(
        config,
        steps=args.steps,
        frames_per_step=args.frames_per_step,
        mask=args.mask,
        seed=args.seed,
    )
    result.update(
        optimizer=str(config.train.optimizer), steps=args.steps, settings=args.set, mask=args.mask
    )
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
