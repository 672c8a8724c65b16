"""Attention rules of the axial transformer, checked by perturbation (PAPER 3.1, 4.1, 6.5, 9.1).

Each test perturbs inputs that must not be seen and checks the protected outputs are unchanged;
it also checks that outputs which may see the perturbation do change, so it can fail.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_params import random_params

from dreamer4_jax.nn import (
    Transformer,
    TransformerConfig,
    decoder_layout,
    dynamics_layout,
    encoder_layout,
    param_count,
)

CFG = TransformerConfig(width=32, depth=4, num_heads=4, num_kv_heads=2, time_every=2, softcap=20.0)
B, T = 2, 5


@functools.cache
def _compiled(cfg, layout):
    model = Transformer(cfg, layout)
    params = random_params(model, jnp.zeros((1, 1, layout.num_tokens, cfg.width)))
    return jax.jit(model.apply), params


def _run(cfg, layout, x, indep=None):
    apply, params = _compiled(cfg, layout)
    return np.asarray(apply(params, x, indep))


def _x(layout, t=T, seed=0):
    return jax.random.normal(jax.random.key(seed), (B, t, layout.num_tokens, CFG.width))


def _bump(x, idx):
    return x.at[idx].add(3.0)


def _same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _differs(a, b):
    assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize('dense', [False, True])
def test_causal_in_time(dense):
    cfg = dataclasses.replace(CFG, dense=dense)
    lay = encoder_layout(4, 2)
    x = _x(lay)
    y = _run(cfg, lay, x)
    for t in range(T - 1):
        y2 = _run(cfg, lay, _bump(x, (slice(None), slice(t + 1, None))))
        _same(y[:, : t + 1], y2[:, : t + 1])
        _differs(y[:, t + 1 :], y2[:, t + 1 :])


@pytest.mark.parametrize('dense', [False, True])
def test_sliding_window(dense):
    # One time layer with C = 2: frame t reads frames t-1 and t only.
    cfg = dataclasses.replace(CFG, depth=3, pattern='sts', time_window=2, dense=dense)
    lay = encoder_layout(4, 2)
    x = _x(lay)
    y, y2 = _run(cfg, lay, x), _run(cfg, lay, _bump(x, (slice(None), 0)))
    _differs(y[:, :2], y2[:, :2])
    _same(y[:, 2:], y2[:, 2:])


def test_space_only_stack_keeps_frames_apart():
    cfg = dataclasses.replace(CFG, time_every=0)
    lay = encoder_layout(4, 2)
    x = _x(lay)
    y, y2 = _run(cfg, lay, x), _run(cfg, lay, _bump(x, (slice(None), 2)))
    _differs(y[:, 2], y2[:, 2])
    _same(np.delete(y, 2, axis=1), np.delete(y2, 2, axis=1))


@pytest.mark.parametrize('dense', [False, True])
def test_encoder_patches_never_read_latents(dense):
    cfg = dataclasses.replace(CFG, dense=dense)
    lay = encoder_layout(4, 2)
    p, z = lay.slice('patches'), lay.slice('latents')
    x = _x(lay)
    y, y2 = _run(cfg, lay, x), _run(cfg, lay, _bump(x, (slice(None), slice(None), z)))
    _same(y[:, :, p], y2[:, :, p])
    _differs(y[:, :, z], y2[:, :, z])
    # ...while latents do read patches.
    y3 = _run(cfg, lay, _bump(x, (slice(None), slice(None), p)))
    _differs(y[:, :, z], y3[:, :, z])


@pytest.mark.parametrize('dense', [False, True])
def test_decoder_latents_never_read_readouts(dense):
    cfg = dataclasses.replace(CFG, dense=dense)
    lay = decoder_layout(num_readouts=4, num_latents=2)
    r, z = lay.slice('readouts'), lay.slice('latents')
    x = _x(lay)
    y, y2 = _run(cfg, lay, x), _run(cfg, lay, _bump(x, (slice(None), slice(None), r)))
    _same(y[:, :, z], y2[:, :, z])
    _differs(y[:, :, r], y2[:, :, r])


@pytest.mark.parametrize('mode', ['space', 'time', 'dense'])
def test_agent_tokens_are_read_by_nobody(mode):
    cfg = dataclasses.replace(CFG, time_every=0 if mode == 'space' else 2, dense=mode == 'dense')
    lay = dynamics_layout(num_latents=3, num_actions=1, num_registers=1, num_agents=1)
    a = lay.slice('agents')
    others = np.setdiff1d(np.arange(lay.num_tokens), np.arange(lay.num_tokens)[a])
    x = _x(lay)
    y, y2 = _run(cfg, lay, x), _run(cfg, lay, _bump(x, (slice(None), slice(None), a)))
    _same(y[:, :, others], y2[:, :, others])
    _differs(y[:, :, a], y2[:, :, a])
    # Agents read the world tokens, in this frame and (time/dense) earlier frames.
    y3 = _run(cfg, lay, _bump(x, (slice(None), 0, lay.slice('latents'))))
    _differs(y[:, 0, a], y3[:, 0, a])
    if mode != 'space':
        _differs(y[:, 1:, a], y3[:, 1:, a])


@pytest.mark.parametrize('dense', [False, True])
def test_independent_rows_see_no_other_frames(dense):
    cfg = dataclasses.replace(CFG, dense=dense)
    lay = encoder_layout(4, 2)
    x = _x(lay)
    indep = jnp.array([True, False])
    y = _run(cfg, lay, x, indep)
    y2 = _run(cfg, lay, _bump(x, (slice(None), 0)), indep)
    _same(y[0, 1:], y2[0, 1:])  # the flagged row: later frames blind to frame 0
    _differs(y[1, 1:], y2[1, 1:])  # the ordinary row: they see it
    _differs(y[0, 0], y2[0, 0])


def test_remat_keeps_outputs_and_gradients():
    cfg = dataclasses.replace(CFG, depth=2, remat='none')
    lay = encoder_layout(4, 2)
    x = _x(lay)
    base = Transformer(cfg, lay)
    params = random_params(base, x)

    def loss(model):
        return jax.jit(
            jax.value_and_grad(
                lambda p: jnp.sum(jnp.sin(model.apply(p, x, jnp.array([True, False]))))
            )
        )

    l_ref, g_ref = loss(base)(params)
    for remat in ('full', 'dots'):
        l, g = loss(Transformer(dataclasses.replace(cfg, remat=remat), lay))(params)
        np.testing.assert_allclose(l, l_ref, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('dense', [False, True])
def test_attention_implementations_agree_in_the_model(dense):
    cfg = dataclasses.replace(CFG, softcap=None, dense=dense)
    lay = dynamics_layout(num_latents=3, num_registers=1, num_agents=1)
    x = _x(lay)
    indep = jnp.array([True, False])
    model = Transformer(cfg, lay)
    params = random_params(model, x)
    fused = Transformer(dataclasses.replace(cfg, attention_impl='dpa_xla'), lay)
    y = jax.jit(model.apply)(params, x, indep)
    _same(np.asarray(y), np.asarray(jax.jit(fused.apply)(params, x, indep)))


def test_layer_pattern_and_param_count():
    assert CFG.layer_kinds == ('space', 'time', 'space', 'time')
    paper = TransformerConfig(depth=8)
    assert paper.layer_kinds == ('space',) * 3 + ('time',) + ('space',) * 3 + ('time',)
    assert dataclasses.replace(paper, dense=True).layer_kinds[3] == 'dense'
    lay = encoder_layout(4, 2)
    params = jax.eval_shape(Transformer(CFG, lay).init, jax.random.key(0), _x(lay, t=1))
    assert sum(p.size for p in jax.tree.leaves(params)) == param_count(CFG)


def test_bad_input_is_rejected():
    lay = encoder_layout(4, 2)
    model = Transformer(CFG, lay)
    with pytest.raises(ValueError, match='expects x of shape'):
        model.init(jax.random.key(0), jnp.zeros((B, T, 5, CFG.width)))
    with pytest.raises(ValueError, match='num_kv_heads'):
        TransformerConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match='soft-cap'):
        TransformerConfig(attention_impl='dpa_xla', softcap=50.0)
    with pytest.raises(ValueError, match='pattern'):
        TransformerConfig(depth=3, pattern='stx')


def test_qk_norm_scale_sets_the_initial_q_and_k_scales():
    """qk_norm_scale=s starts every q/k norm scale at s: the same as a scale-1 model whose q/k
    scales are set to s by hand, and different from the scale-1 model itself."""
    lay = encoder_layout(4, 2)
    x = _x(lay)
    cfg2 = dataclasses.replace(CFG, qk_norm_scale=2.0)
    init1 = Transformer(CFG, lay).init(jax.random.key(0), x)
    init2 = Transformer(cfg2, lay).init(jax.random.key(0), x)
    leaves = jax.tree_util.tree_leaves_with_path(init2)
    scales = [v for p, v in leaves if 'q_norm' in jax.tree_util.keystr(p) or 'k_norm' in
              jax.tree_util.keystr(p)]  # fmt: skip
    assert scales and all(np.all(np.asarray(v) == 2.0) for v in scales)

    def by_hand(path, v):
        name = jax.tree_util.keystr(path)
        return jnp.full_like(v, 2.0) if ('q_norm' in name or 'k_norm' in name) else v

    hand = jax.tree_util.tree_map_with_path(by_hand, init1)
    apply1 = Transformer(CFG, lay).apply
    out2 = Transformer(cfg2, lay).apply(init2, x)
    _same(out2, apply1(hand, x))
    _differs(out2, apply1(init1, x))
    with pytest.raises(ValueError, match='qk_norm_scale must be > 0'):
        TransformerConfig(width=32, depth=1, num_heads=4, qk_norm_scale=0.0)
