"""The Pallas splash kernel (TPU attention) in interpret mode equals the XLA einsum path.

Small shapes on CPU: the kernel itself (GQA, soft-cap, a static mask, segment ids, padding to
128), the transformer with attention_impl='splash_interpret' against 'einsum' (space, axial time
and dense layers, rows trained as separate images), forward and gradients, and the same under a
(data, fsdp, model) mesh where the kernel runs inside shard_map.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh
from nn_params import random_params

from dreamer4_jax.configs import DEFAULT_SHARDING_RULES
from dreamer4_jax.nn import (
    Transformer,
    TransformerConfig,
    attend,
    dynamics_layout,
    frame_mask,
    init_cache,
)
from dreamer4_jax.nn.splash import pad_mask, splash_attend

CAP = 50.0


def _qkv(x=(2,), length=21, n=2, g=2, k=16, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(*x, length, n, g, k)) * 3, jnp.float32)
    kk = jnp.asarray(rng.normal(size=(*x, length, n, k)) * 3, jnp.float32)
    v = jnp.asarray(rng.normal(size=(*x, length, n, k)), jnp.float32)
    return q, kk, v


def test_kernel_matches_einsum_with_mask_segments_and_softcap():
    q, k, v = _qkv()
    mask = dynamics_layout(num_latents=16, num_registers=2, num_agents=1).space_mask()  # 21
    got = splash_attend(q, k, v, mask, softcap=CAP, interpret=True)
    np.testing.assert_allclose(got, attend(q, k, v, mask, softcap=CAP), atol=5e-6)
    # A causal window of 5 plus segment ids (query and key must share one).
    window = frame_mask(np.arange(21), np.arange(21), 5)
    seg = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=(2, 21)))
    got = splash_attend(q, k, v, window, segments=seg, softcap=CAP, interpret=True)
    want = attend(q, k, v, window, softcap=CAP, segments=seg)
    np.testing.assert_allclose(got, want, atol=5e-6)
    # The einsum path reads segments as an extra mask; check that against the explicit mask.
    explicit = window[None] & (seg[:, :, None] == seg[:, None, :])
    np.testing.assert_allclose(want, attend(q, k, v, explicit, softcap=CAP), atol=1e-6)
    assert not np.allclose(got, attend(q, k, v, window, softcap=CAP), atol=1e-3)  # seg matter


def test_padding_keeps_real_queries_off_padded_keys():
    mask = np.tril(np.ones((3, 3), bool))
    padded = pad_mask(mask)
    assert padded.shape == (128, 128)
    assert (padded[:3, :3] == mask).all() and not padded[:3, 3:].any()
    assert padded[3:, 3:].all() and not padded[3:, :3].any()
    with pytest.raises(ValueError, match='key in every row'):
        splash_attend(*_qkv(length=3), np.zeros((3, 3), bool), interpret=True)


# remat='none': the kernel's path does not depend on remat, and it halves the CPU time.
CFG = TransformerConfig(width=32, depth=2, num_heads=4, num_kv_heads=2, pattern='st',
                        time_window=2, softcap=CAP, remat='none')  # fmt: skip
LAYOUT = dynamics_layout(num_latents=3, num_registers=1, num_agents=1)
X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, LAYOUT.num_tokens, 32)))
INDEP = jnp.array([True, False])  # row 0 trained as separate images (PAPER 6.5)


def _splash(cfg):
    return dataclasses.replace(cfg, attention_impl='splash_interpret')


def test_transformer_with_splash_matches_einsum_with_gradients():
    params = random_params(Transformer(CFG, LAYOUT), X)

    def value_and_grad(cfg):
        model = Transformer(cfg, LAYOUT)
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(model.apply(p, X, INDEP)))))

    ref_loss, ref_grad = value_and_grad(CFG)(params)
    got_loss, got_grad = value_and_grad(_splash(CFG))(params)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_grad), jax.tree.leaves(got_grad), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_dense_layers_with_splash_match_einsum():
    cfg = dataclasses.replace(CFG, dense=True)
    params = random_params(Transformer(cfg, LAYOUT), X)
    want = jax.jit(Transformer(cfg, LAYOUT).apply)(params, X, INDEP)
    got = jax.jit(Transformer(_splash(cfg), LAYOUT).apply)(params, X, INDEP)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_splash_under_a_mesh_runs_per_shard():
    """(data, fsdp, model) = (2, 2, 2): batch over data x fsdp, KV heads over model."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ('data', 'fsdp', 'model'),
                axis_types=(AxisType.Auto,) * 3)  # fmt: skip
    params = random_params(Transformer(CFG, LAYOUT), X)
    x4, indep4 = jnp.concatenate([X, X[::-1]]), jnp.array([True, False, False, True])
    want = jax.jit(Transformer(CFG, LAYOUT).apply)(params, x4, indep4)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_SHARDING_RULES):
        apply = jax.jit(Transformer(_splash(CFG), LAYOUT).apply)
        text = apply.lower(params, x4, indep4).as_text()
        got = apply(params, x4, indep4)
    assert 'shard_map' in text or 'sdy.manual_computation' in text
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_cached_steps_with_splash_equal_einsum():
    """Frame by frame with the KV cache (generation, imagination): space layers run the kernel,
    time layers read the cache through the einsum path (the kernel needs static masks)."""
    params = random_params(Transformer(CFG, LAYOUT), X)
    outs = []
    for cfg in (CFG, _splash(CFG)):
        model = Transformer(cfg, LAYOUT)
        step = jax.jit(lambda p, x, c, m=model: m.apply(p, x, c, True, INDEP, method='step'))
        cache = init_cache(cfg, LAYOUT.num_tokens, 2)
        y0, cache = step(params, X[:, :2], cache)  # two context frames at once
        y1, _ = step(params, X[:, 2:], cache)
        outs.append(np.concatenate([y0, y1], axis=1))
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-5)


def test_config_accepts_softcap_with_splash():
    assert TransformerConfig(attention_impl='splash', softcap=CAP).softcap == CAP
    with pytest.raises(ValueError, match='attention_impl'):
        TransformerConfig(attention_impl='flash')
