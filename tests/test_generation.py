"""Frame-by-frame generation (PAPER 7): KV cache vs recomputation, cache bounds, commit pass."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import generation, shortcut
from dreamer4_jax.dynamics import Dynamics, DynamicsConfig, init_params
from dreamer4_jax.eval import open_loop as open_loop_lib
from dreamer4_jax.eval.open_loop import (
    OpenLoopEvaluator,
    counterfactual_actions,
    latent_mse_per_horizon,
    side_by_side,
)
from dreamer4_jax.generation import SamplingConfig
from dreamer4_jax.nn import TransformerConfig
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig

B, CTX = 2, 2


def make(window=3, dense=False):
    tc = TransformerConfig(
        width=32,
        depth=2,
        num_heads=2,
        num_kv_heads=1,
        time_every=2,
        time_window=window,
        dense=dense,
    )
    cfg = DynamicsConfig(
        num_latents=4,
        latent_dim=4,
        pack=2,
        actions=(('a', 'categorical', 5),),
        num_registers=1,
        k_max=8,
        transformer=tc,
    )
    model = Dynamics(cfg)
    return model, nn.unbox(init_params(model, jax.random.key(0)))


def data(horizon, seed=0):
    r = np.random.default_rng(seed)
    z = jnp.asarray(r.uniform(-1, 1, (B, CTX, 4, 4)), jnp.float32)
    acts = {'a': jnp.asarray(r.integers(0, 5, (B, CTX + horizon)), jnp.int32)}
    has = jnp.asarray(r.random((B, CTX + horizon)) < 0.8)
    return z, acts, has


@pytest.mark.parametrize('dense', [False, True])
def test_cached_generation_equals_recomputation(dense):
    """Same noise: the KV-cache path equals recomputing every frame, across window eviction."""
    horizon = 5  # window C = 3 < CTX + horizon, so frames leave the window and the cache
    model, params = make(window=3, dense=dense)
    z, acts, has = data(horizon)

    def run(cached):
        return jax.jit(
            lambda p, z, r: generation.rollout(model, p, z, acts, has, r, horizon, cached=cached)
        )(params, z, jax.random.key(1))

    fast, slow = run(True), run(False)
    assert fast.shape == (B, horizon, 4, 4)
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    assert float(jnp.std(fast)) > 0.1  # not a degenerate constant output


def test_cache_stays_bounded_over_a_long_rollout():
    horizon = 12
    model, params = make(window=3)
    z, acts, has = data(horizon, 1)
    f = jax.jit(lambda p, z, r: generation.rollout_with_cache(model, p, z, acts, has, r, horizon))
    out, cache = f(params, z, jax.random.key(2))
    assert out.shape == (B, horizon, 4, 4) and bool(jnp.all(jnp.isfinite(out)))
    assert cache.capacity == 2  # C - 1 frames, whatever the rollout length
    assert all(k.shape == (B, 2, model.config.layout().num_tokens, 1, 16) for k in cache.k)
    assert int(cache.next_frame) == CTX + horizon
    assert sorted(np.asarray(cache.pos_F).tolist()) == [CTX + horizon - 2, CTX + horizon - 1]


def test_denoising_passes_do_not_write_and_commit_is_at_context_level():
    """generate_frame's cache == one commit pass of the frame re-noised to signal 0.9."""
    model, params = make(window=4)
    z, acts, has = data(1, 2)
    sampling = SamplingConfig(num_steps=4, context_signal=0.9)
    prefill = jax.jit(lambda *a: generation.prefill(model, *a, sampling=sampling))
    cache = prefill(params, z, {'a': acts['a'][:, :CTX]}, has[:, :CTX], jax.random.key(3))
    act = {'a': acts['a'][:, CTX:]}
    rng = jax.random.key(4)
    gen = jax.jit(lambda *a: generation.generate_frame(model, *a, sampling=sampling))
    z_new, cache1 = gen(params, cache, act, has[:, CTX:], rng)
    _, rng_ctx = jax.random.split(rng)
    z_ctx, tau_ctx = shortcut.corrupt_context(rng_ctx, z_new, 0.9, k_max=8)
    assert tau_ctx == 7 / 8  # 0.9 snapped to the k_max = 8 grid of the tau table
    level = jnp.full((B, 1), tau_ctx)
    commit = jax.jit(
        lambda z: model.apply(
            {'params': params},
            z,
            level,
            jnp.full((B, 1), 1 / 8),
            act,
            has[:, CTX:],
            cache,
            True,
            method=Dynamics.step,
        )
    )
    _, cache2 = commit(z_ctx)
    assert int(cache1.next_frame) == CTX + 1
    for a, b in zip(cache1.k + cache1.v, cache2.k + cache2.v, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(cache1.pos_F, cache2.pos_F)
    # The committed keys differ from those of the clean frame: the context really is noisy.
    _, cache3 = commit(z_new)
    assert float(jnp.max(jnp.abs(cache3.k[0] - cache1.k[0]))) > 1e-3


def test_generation_input_errors():
    model, params = make()
    z, acts, has = data(3)
    with pytest.raises(ValueError, match='power of two'):
        generation.rollout(
            model, params, z, acts, has, jax.random.key(0), 3, SamplingConfig(num_steps=3)
        )
    with pytest.raises(ValueError, match='context \\+ horizon'):
        generation.rollout(model, params, z, acts, has[:, :-1], jax.random.key(0), 3)


def test_counterfactual_actions_change_only_the_future():
    comps = (('c', 'categorical', 1000), ('k', 'binary', 64), ('x', 'continuous', 2))
    acts = {
        'c': jnp.zeros((2, 6), jnp.int32),
        'k': jnp.zeros((2, 6, 64), jnp.int32),
        'x': jnp.ones((2, 6, 2)),
    }
    has = jnp.zeros((2, 6), bool)
    new, new_has = counterfactual_actions(jax.random.key(0), acts, has, comps, start=4)
    for name in acts:
        np.testing.assert_array_equal(new[name][:, :4], acts[name][:, :4])
        assert not np.array_equal(np.asarray(new[name][:, 4:]), np.asarray(acts[name][:, 4:]))
    np.testing.assert_array_equal(new['x'][:, 4:], -1.0)
    np.testing.assert_array_equal(new_has, np.arange(6)[None].repeat(2, 0) >= 4)
    frames = side_by_side(
        np.zeros((3, 6, 16, 16, 3)), np.ones((3, 6, 16, 16, 3)), context=4, num_rows=2
    )
    assert frames.shape == (6, 2 * 18 + 2, 2 * 18 + 2, 3) and frames.dtype == np.uint8
    assert tuple(frames[0, 2, 20]) == (0, 200, 0) and tuple(frames[5, 2, 20]) == (220, 0, 0)
    # A third column (the sample average) gets its own bars; the real column none.
    three = side_by_side(
        np.zeros((3, 6, 16, 16, 3)),
        np.ones((3, 6, 16, 16, 3)),
        np.full((3, 6, 16, 16, 3), 0.5),
        context=4,
        num_rows=2,
    )
    assert three.shape == (6, 2 * 18 + 2, 3 * 18 + 2, 3)
    assert tuple(three[5, 2, 38]) == (220, 0, 0) and tuple(three[5, 10, 42]) == (128, 128, 128)
    assert tuple(three[5, 2, 2]) == (0, 0, 0)


def test_latent_mse_per_horizon_matches_numpy_and_scores_copying():
    r = np.random.default_rng(0)
    pred, target = r.normal(size=(3, 4, 5, 2)), r.normal(size=(3, 4, 5, 2))
    got = np.asarray(latent_mse_per_horizon(jnp.asarray(pred), jnp.asarray(target)))
    want = [np.mean([(pred[b, h] - target[b, h]) ** 2 for b in range(3)]) for h in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Copying the last latent: exact where the future stays put, growing as it drifts away.
    last = target[:, :1]
    drift = last + 0.1 * np.arange(4)[None, :, None, None]
    copy = np.asarray(latent_mse_per_horizon(jnp.asarray(last), jnp.asarray(drift)))
    np.testing.assert_allclose(copy, (0.1 * np.arange(4)) ** 2, atol=1e-6)


def test_copy_latent_baseline_decodes_the_last_context_latent_repeated():
    """With a decoder that sees one frame (time window 1) every static frame is the decoded last
    context latent; with a longer window the earlier context still shapes them."""
    for window in (1, 4):
        tc = TransformerConfig(width=16, depth=2, num_heads=2, time_every=2, time_window=window)
        tok = Tokenizer(
            TokenizerConfig(
                height=16, width=16, patch=8, num_latents=4, latent_dim=3, encoder=tc, decoder=tc
            )
        )
        init = jax.jit(lambda k, tok=tok: nn.unbox(tok.init(k, jnp.zeros((1, 1, 16, 16, 3)))))
        params = init(jax.random.key(window))['params']
        ev = OpenLoopEvaluator(None, tok, SamplingConfig())
        z_ctx = jax.random.uniform(jax.random.key(2), (2, 3, 4, 3), minval=-1, maxval=1)
        static = np.asarray(ev.decode_static(params, z_ctx, 5))
        assert static.shape == (2, 5, 16, 16, 3)
        last_alone = np.asarray(ev.decode(params, z_ctx[:, -1:]))
        if window == 1:
            for h in range(5):
                np.testing.assert_allclose(static[:, h], last_alone[:, 0], atol=1e-5)
        else:
            # Frame h sees the context frames still inside the window, so it is not the last
            # latent decoded alone; beyond the window it is (4 static frames fill it).
            assert np.max(np.abs(static[:, 0] - last_alone[:, 0])) > 1e-4
            np.testing.assert_allclose(static[:, 4], static[:, 3], atol=1e-5)


def test_sample_mean_psnr_averages_the_requested_number_of_futures():
    """Futures that are the truth plus independent noise of variance s2: one sample's MSE is s2,
    the average of S samples' s2 / S, so psnr_sample_mean sits 10 log10(S) dB above psnr."""
    b, ctx, horizon, size, s2 = 16, 2, 3, 32, 0.01
    real = np.random.default_rng(0).uniform(0.3, 0.7, (b, ctx + horizon, size, size, 3))
    ev = OpenLoopEvaluator.__new__(OpenLoopEvaluator)
    ev.model = types.SimpleNamespace(config=types.SimpleNamespace(actions=()))
    # Latents are the pixels here (one 3-channel latent per pixel), so decoding changes nothing.
    ev.encode = lambda p, x: x.reshape(*x.shape[:2], -1, 3)
    ev.decode = lambda p, z: z.reshape(*z.shape[:2], size, size, 3)
    ev.scores = jax.jit(open_loop_lib._scores)
    truth = jnp.asarray(real[:, ctx:], jnp.float32).reshape(b, horizon, -1, 3)
    calls = []

    def rollout(params, z_ctx, actions, has, key, horizon):
        calls.append(key)
        return truth + np.sqrt(s2) * jax.random.normal(key, truth.shape)

    ev.rollout = rollout
    batch = {
        'image': (real * 255).astype(np.float32),
        'action': {'discrete': np.zeros((b, ctx + horizon), np.int32)},
        'has_action': np.ones((b, ctx + horizon), bool),
    }
    for samples in (0, 8):
        calls.clear()
        out = ev(None, None, batch, context=ctx, rng=jax.random.key(0), mean_samples=samples)
        if samples == 0:
            assert len(calls) == 2 and not any('sample_mean' in k for k in out)
            continue
        # The first sample, the noise sample and 6 more, all with different noise.
        assert len(calls) == samples
        assert len({tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in calls}) == samples
        for h in range(1, horizon + 1):
            gain = out[f'psnr_sample_mean_h{h:02d}'] - out[f'psnr_h{h:02d}']
            assert gain == pytest.approx(10 * np.log10(samples), abs=0.15)
        assert out['psnr_h01'] == pytest.approx(-10 * np.log10(s2), abs=0.1)
