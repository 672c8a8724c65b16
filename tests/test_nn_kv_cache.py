"""KV cache of the time layers: frame-by-frame inference equals the full causal forward
(PAPER 3.1, 7), within and beyond the sliding window, with bounded memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_params import random_params

from dreamer4_jax.nn import Transformer, TransformerConfig, dynamics_layout, init_cache

CFG = TransformerConfig(
    width=32, depth=4, num_heads=4, num_kv_heads=2, time_every=2, time_window=3, softcap=20.0
)
LAYOUT = dynamics_layout(num_latents=3, num_registers=1, num_agents=1)
B, T = 2, 7


def _setup(cfg):
    model = Transformer(cfg, LAYOUT)
    x = jax.random.normal(jax.random.key(0), (B, T, LAYOUT.num_tokens, cfg.width))
    params = random_params(model, x)
    step = jax.jit(
        lambda p, x, c, indep, commit: model.apply(p, x, c, commit, indep, method='step'),
        static_argnums=4,
    )
    full = jax.jit(model.apply)
    return params, x, step, full


@pytest.mark.parametrize('dense', [False, True])
def test_frame_by_frame_equals_full_sequence_beyond_window(dense):
    cfg = dataclasses.replace(CFG, dense=dense)
    params, x, step, full = _setup(cfg)
    indep = jnp.array([False, True])
    y_full = np.asarray(full(params, x, indep))
    cache = init_cache(cfg, LAYOUT.num_tokens, B)
    shapes = jax.tree.map(lambda a: a.shape, cache)
    for t in range(T):
        x_t = x[:, t : t + 1]
        # A denoising pass reads the cache but leaves it as it was.
        y_read, same = step(params, x_t + 0.5, cache, indep, False)
        for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(cache), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        y_t, cache = step(params, x_t, cache, indep, True)
        np.testing.assert_allclose(np.asarray(y_t[:, 0]), y_full[:, t], rtol=2e-5, atol=2e-5)
        assert np.max(np.abs(np.asarray(y_read) - np.asarray(y_t))) > 1e-3
        assert jax.tree.map(lambda a: a.shape, cache) == shapes  # bounded: C - 1 frame slots
    assert cache.k[0].shape[1] == cfg.time_window - 1
    assert sorted(np.asarray(cache.pos_F).tolist()) == [T - 2, T - 1]
    assert int(cache.next_frame) == T


def test_prefill_then_steps_equals_full_sequence():
    params, x, step, full = _setup(CFG)
    y_full = np.asarray(full(params, x))
    cache = init_cache(CFG, LAYOUT.num_tokens, B)
    y_pre, cache = step(params, x[:, :4], cache, None, True)
    np.testing.assert_allclose(np.asarray(y_pre), y_full[:, :4], rtol=2e-5, atol=2e-5)
    for t in range(4, T):
        y_t, cache = step(params, x[:, t : t + 1], cache, None, True)
        np.testing.assert_allclose(np.asarray(y_t[:, 0]), y_full[:, t], rtol=2e-5, atol=2e-5)


def test_unlimited_window_needs_capacity_and_matches_full():
    cfg = dataclasses.replace(CFG, time_window=None)
    with pytest.raises(ValueError, match='max_frames'):
        init_cache(cfg, LAYOUT.num_tokens, B)
    params, x, step, full = _setup(cfg)
    y_full = np.asarray(full(params, x))
    cache = init_cache(cfg, LAYOUT.num_tokens, B, max_frames=T)
    for t in range(T):
        y_t, cache = step(params, x[:, t : t + 1], cache, None, True)
        np.testing.assert_allclose(np.asarray(y_t[:, 0]), y_full[:, t], rtol=2e-5, atol=2e-5)


def test_window_of_one_frame_keeps_no_cache():
    cfg = dataclasses.replace(CFG, time_window=1)
    params, x, step, full = _setup(cfg)
    y_full = np.asarray(full(params, x))
    cache = init_cache(cfg, LAYOUT.num_tokens, B)
    assert cache.capacity == 0
    for t in range(3):
        y_t, cache = step(params, x[:, t : t + 1], cache, None, True)
        np.testing.assert_allclose(np.asarray(y_t[:, 0]), y_full[:, t], rtol=2e-5, atol=2e-5)


def test_append_of_several_frames_wraps_around_the_ring():
    cfg = dataclasses.replace(CFG, time_window=4)  # 3 slots
    cache = init_cache(cfg, 1, 1)
    frames = [jnp.full((1, 2, 1, cfg.kv_heads, cfg.key_dim), v, jnp.float32) for v in (1.0, 2.0)]
    kv = [(frames[0], frames[0])] * cache.num_layers
    cache = cache.append(kv, jnp.array([0, 1]))
    # frames 2 and 3 land in slots 2 and 0 (frame 0 is evicted); frame 1 stays in slot 1
    kv = [(frames[1] * jnp.array([1.0, 2.0])[None, :, None, None, None],) * 2] * cache.num_layers
    cache = cache.append(kv, jnp.array([2, 3]))
    assert np.asarray(cache.pos_F).tolist() == [3, 1, 2] and int(cache.next_frame) == 4
    assert np.asarray(cache.k[0][0, :, 0, 0, 0]).tolist() == [4.0, 1.0, 2.0]
