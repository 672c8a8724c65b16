"""Phase 1a's train state: the EMA of the tokenizer weights, its evaluation and who loads it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic_tokenizer import one_layer_tokenizer_settings, synthetic_tokenizer_config

from dreamer4_jax import pretrained
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.train import loop
from dreamer4_jax.train import tokenizer_phase as tp


def _config(tmp_path, **tokenizer):
    settings = one_layer_tokenizer_settings(f'{tmp_path}/data', 'tokphase')
    settings += [f'tokenizer.{k}={v}' for k, v in tokenizer.items()]
    settings += ['train.batch_size=2', 'data.eval_batch_size=2', 'tokenizer.lpips_frames=1']
    return synthetic_tokenizer_config(settings, episodes=6)


def test_ema_step_follows_the_update_equation(tmp_path):
    """One step: ema' = d * ema + (1 - d) * params', d = min(decay, (1 + step) / (10 + step))."""
    config = _config(tmp_path, ema_decay=0.9)
    config.train.warmup_steps = 0  # the optimizer's first update is not zero
    phase = tp.make_phase(config)
    state = phase.init(jax.random.key(0))
    state = state.replace(step=jnp.asarray(20, jnp.int32))  # d = min(0.9, 21 / 30) = 0.7
    # An EMA unmistakably away from the weights, so both terms of the update show.
    state = state.replace(aux={**state.aux, 'ema': jax.tree.map(lambda p: p + 1.0, state.params)})
    batch = {'image': np.random.default_rng(0).integers(0, 256, (2, 4, 64, 64, 3), np.uint8)}
    new, _ = jax.jit(phase.train_step)(state, batch, jax.random.key(1), phase.constants())
    want = jax.tree.map(lambda e, p: 0.7 * e + 0.3 * p, state.aux['ema'], new.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new.aux['ema'], want)
    # The raw weights moved by the optimizer, not toward the EMA.
    assert any(
        float(jnp.max(jnp.abs(a - b))) > 0
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)
    )


def test_later_phases_load_the_ema_and_evaluation_reports_both(tmp_path):
    config = _config(tmp_path, ema_decay=0.5)
    config.train.steps = 3
    config.train.checkpoint_every = 100
    config.mesh.num_devices = 2
    workdir = str(tmp_path / 'tok')
    result = loop.run(tp.make_phase(config), config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        evals = [r for r in map(json.loads, f) if 'eval/psnr_p0' in r]
    assert {'eval/psnr_p0', 'eval/psnr_p0_raw', 'eval/ssim_p75_raw'} <= set(evals[-1])
    assert evals[-1]['eval/psnr_p0'] != evals[-1]['eval/psnr_p0_raw']
    # The worst patch position's MSE is at least the mean over the frame, and the mean of
    # per-frame PSNRs is at least the PSNR of the mean MSE (Jensen), so it reads no higher.
    for suffix in ('', '_raw'):
        worst = evals[-1][f'eval/psnr_p0_worst_patch{suffix}']
        assert worst <= evals[-1][f'eval/psnr_p0{suffix}'] + 1e-4
    assert sorted(os.listdir(os.path.join(workdir, 'eval'))) == [
        'patch_error_000003.png',
        'reconstructions_000003.png',
    ]
    run = pretrained.load(workdir, expect='tokenizer')
    assert pretrained.uses_ema(run.config)
    got = run.params()
    jax.tree.map(np.testing.assert_array_equal, got, result.state.aux['ema'])
    assert any(
        not np.array_equal(g, p)
        for g, p in zip(jax.tree.leaves(got), jax.tree.leaves(result.state.params), strict=True)
    )


def test_ema_decay_out_of_range_is_a_config_error(tmp_path):
    config = _config(tmp_path, ema_decay=1.0)
    with pytest.raises(ConfigError, match=r'tokenizer.ema_decay=1.0 must be in \[0, 1\)'):
        tp.make_phase(config)
