"""Dynamics model (PAPER 5): token block, action embedding, alignment, attention rules."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import shortcut
from dreamer4_jax.dynamics import (
    ActionEmbed,
    Dynamics,
    DynamicsConfig,
    align_actions,
    check_actions,
    init_params,
)
from dreamer4_jax.nn import TransformerConfig, init_cache

COMPONENTS = (('discrete', 'categorical', 5), ('keys', 'binary', 3), ('cont', 'continuous', 2))
B, T = 2, 4


def make(num_agent_tokens=0, num_registers=2, pack=2, dense=False):
    tc = TransformerConfig(
        width=32, depth=2, num_heads=2, num_kv_heads=1, time_every=2, dense=dense
    )
    cfg = DynamicsConfig(
        num_latents=4,
        latent_dim=4,
        pack=pack,
        actions=COMPONENTS,
        num_action_tokens=2,
        num_registers=num_registers,
        num_agent_tokens=num_agent_tokens,
        k_max=8,
        transformer=tc,
    )
    model = Dynamics(cfg)
    return model, nn.unbox(init_params(model, jax.random.key(0)))


def inputs(seed=0, has_p=0.7):
    r = np.random.default_rng(seed)
    z = jnp.asarray(r.uniform(-1, 1, (B, T, 4, 4)), jnp.float32)
    tau = jnp.asarray(r.integers(0, 8, (B, T)) / 8, jnp.float32)
    d = jnp.asarray(1.0 / 2 ** r.integers(0, 4, (B, T)), jnp.float32)
    acts = {
        'discrete': jnp.asarray(r.integers(0, 5, (B, T)), jnp.int32),
        'keys': jnp.asarray(r.integers(0, 2, (B, T, 3)), jnp.int32),
        'cont': jnp.asarray(r.normal(size=(B, T, 2)), jnp.float32),
    }
    has = jnp.asarray(r.random((B, T)) < has_p)
    return z, tau, d, acts, has


@functools.cache
def _jitted(model, method):
    return jax.jit(lambda p, *a, **kw: model.apply({'params': p}, *a, method=method, **kw))


def apply(model, params, *args, method=None, **kw):
    """model.apply, compiled once per (model, method): tests call it many times per shape."""
    return _jitted(model, method)(params, *args, **kw)


def test_shapes_packing_and_layout():
    model, params = make(pack=2)
    z, tau, d, acts, has = inputs()
    out, agents = apply(model, params, z, tau, d, acts, has)
    assert out.shape == z.shape and agents is None
    layout = model.config.layout()
    # U=2 action tokens, 1 shortcut token, 4/2 packed latents, 2 registers.
    assert layout.modalities == (('actions', 2), ('shortcut', 1), ('latents', 2), ('registers', 2))
    assert params['latent_in']['kernel'].shape == (8, 32)  # pack * C -> D
    assert params['head']['kernel'].shape == (32, 8)
    assert params['tau_table'].shape == (9, 16) and params['d_table'].shape == (4, 16)
    with pytest.raises(ValueError, match=r'expects latents \[B, T, 4, 4\]'):
        apply(model, params, z[..., :3], tau, d, acts, has)
    with pytest.raises(ValueError, match='and divide num_latents=5'):
        DynamicsConfig(num_latents=5, pack=2)
    with pytest.raises(ValueError, match='kind must be one of'):
        DynamicsConfig(actions=(('a', 'discrete', 3),))


def test_tokens_hold_shortcut_and_packed_latents():
    """Token block: shortcut token = [tau_table[tau k_max] | d_table[log2 1/d]]; latents packed."""
    model, params = make(pack=2)
    z, tau, d, acts, has = inputs()
    x = model.apply(
        {'params': params}, z, tau, d, acts, has, None, method=lambda m, *a: m._tokens(*a)
    )
    assert x.shape == (B, T, 7, 32)
    ti = np.asarray(np.round(np.asarray(tau) * 8), int)
    di = np.asarray(np.round(-np.log2(np.asarray(d))), int)
    want = np.concatenate(
        [np.asarray(params['tau_table'])[ti], np.asarray(params['d_table'])[di]], axis=-1
    )
    np.testing.assert_allclose(x[:, :, 2], want, rtol=1e-6)
    packed = np.asarray(z).reshape(B, T, 2, 8)  # consecutive latent pairs share a token
    w, bias = np.asarray(params['latent_in']['kernel']), np.asarray(params['latent_in']['bias'])
    np.testing.assert_allclose(x[:, :, 3:5], packed @ w + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, :, 5:7], np.broadcast_to(params['registers'], (B, T, 2, 32)))


def test_action_embedding_matches_reference():
    emb = ActionEmbed(COMPONENTS, num_tokens=2, width=8)
    _, _, _, acts, has = inputs(1)
    p = nn.unbox(emb.init(jax.random.key(1), acts, has)['params'])
    got = np.asarray(emb.apply({'params': p}, acts, has))
    a = {k: np.asarray(v) for k, v in acts.items()}
    comp = (
        np.asarray(p['discrete_table'])[a['discrete']]
        + np.einsum('btn,nud->btud', a['keys'].astype(np.float32), p['keys_proj'])
        + np.einsum('btn,nud->btud', a['cont'], p['cont_proj'])
    )
    want = np.asarray(p['base']) + np.where(np.asarray(has)[..., None, None], comp, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unlabeled_frames_ignore_stored_action():
    model, params = make()
    z, tau, d, acts, has = inputs(2, has_p=0.5)
    assert 0 < int(has.sum()) < has.size
    out, _ = apply(model, params, z, tau, d, acts, has)
    unl = ~has
    garbage = {
        'discrete': jnp.where(unl, -1, acts['discrete']),  # the dataset placeholder
        'keys': jnp.where(unl[..., None], 999, acts['keys']),
        'cont': jnp.where(unl[..., None], jnp.nan, acts['cont']),
    }
    out2, _ = apply(model, params, z, tau, d, garbage, has)
    np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))
    # The same change on a LABELED frame does change the prediction (the test can fail).
    t = int(np.argwhere(np.asarray(has[0]))[0, 0])
    other = dict(acts, discrete=acts['discrete'].at[0, t].set((acts['discrete'][0, t] + 1) % 5))
    out3, _ = apply(model, params, z, tau, d, other, has)
    assert float(jnp.max(jnp.abs(out3[0, t] - out[0, t]))) > 1e-4


def test_align_actions_matches_reference_and_hides_placeholders():
    _, _, _, acts, has = inputs(3, has_p=0.6)
    is_first = jnp.zeros((B, T), bool).at[1, 2].set(True)
    shifted, has_prev = align_actions(acts, has, is_first)
    h = np.asarray(has)
    want_has = np.zeros_like(h)
    want_has[:, 1:] = h[:, :-1]
    want_has[1, 2] = False  # first frame of a new episode: no action led to it from this one
    np.testing.assert_array_equal(np.asarray(has_prev), want_has)
    np.testing.assert_array_equal(
        np.asarray(shifted['keys'])[:, 1:], np.asarray(acts['keys'])[:, :-1]
    )
    # End to end: the action stored at t (taken after frame t) acts on frame t + 1, not on t.
    model, params = make()
    z, tau, d, _, _ = inputs(3)
    full = jnp.ones((B, T), bool)
    base, _ = apply(model, params, z, tau, d, *align_actions(acts, full))
    moved = dict(acts, discrete=acts['discrete'].at[:, 1].add(1) % 5)
    out, _ = apply(model, params, z, tau, d, *align_actions(moved, full))
    np.testing.assert_allclose(out[:, :2], base[:, :2], atol=1e-6)
    assert float(jnp.max(jnp.abs(out[:, 2] - base[:, 2]))) > 1e-4
    # A stored action whose has_action is False never reaches the model.
    unl = dict(acts, discrete=acts['discrete'].at[:, 1].set(-1))
    hide = full.at[:, 1].set(False)
    a1, _ = apply(model, params, z, tau, d, *align_actions(acts, hide))
    a2, _ = apply(model, params, z, tau, d, *align_actions(unl, hide))
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))


@pytest.mark.parametrize('dense', [False, True])
def test_causal_in_time(dense):
    """Changing frame t (latents, tau, d, action) changes nothing at frames < t."""
    model, params = make(dense=dense)
    z, tau, d, acts, has = inputs(4, has_p=1.0)
    out, _ = apply(model, params, z, tau, d, acts, has)
    t = 2
    z2 = z.at[:, t:].add(0.5)
    tau2, d2 = tau.at[:, t].set(0.875), d.at[:, t].set(1.0)
    acts2 = dict(acts, cont=acts['cont'].at[:, t].add(3.0))
    out2, _ = apply(model, params, z2, tau2, d2, acts2, has)
    np.testing.assert_allclose(out2[:, :t], out[:, :t], atol=1e-6)
    assert float(jnp.max(jnp.abs(out2[:, t] - out[:, t]))) > 1e-4
    # The shortcut token alone (the noise level of frame t) is visible to frame t and later
    # frames: the model knows how noisy its context is.
    out3, _ = apply(model, params, z, tau.at[:, t].set(0.875), d, acts, has)
    np.testing.assert_allclose(out3[:, :t], out[:, :t], atol=1e-6)
    assert float(jnp.max(jnp.abs(out3[:, t + 1] - out[:, t + 1]))) > 1e-4


def test_independent_rows_see_only_their_frame():
    model, params = make()
    z, tau, d, acts, has = inputs(5)
    ind = jnp.asarray([True, False])
    out, _ = apply(model, params, z, tau, d, acts, has, independent_frames_B=ind)
    z2 = z.at[:, :3].add(0.7)
    out2, _ = apply(model, params, z2, tau, d, acts, has, independent_frames_B=ind)
    np.testing.assert_allclose(out2[0, 3], out[0, 3], atol=1e-6)
    assert float(jnp.max(jnp.abs(out2[1, 3] - out[1, 3]))) > 1e-4


def test_agent_tokens_read_everything_and_are_read_by_nothing():
    model, params = make(num_agent_tokens=1)
    z, tau, d, acts, has = inputs(6)
    agent = jax.random.normal(jax.random.key(7), (B, T, 1, 32))
    out, ag = apply(model, params, z, tau, d, acts, has, agent_in_BTAD=agent)
    assert ag.shape == (B, T, 1, 32)
    out2, ag2 = apply(model, params, z, tau, d, acts, has, agent_in_BTAD=agent * 5.0 + 1.0)
    np.testing.assert_allclose(out2, out, atol=1e-6)  # the world model never reads agents
    assert float(jnp.max(jnp.abs(ag2 - ag))) > 1e-4
    _, ag3 = apply(model, params, z.at[:, 0].add(0.5), tau, d, acts, has, agent_in_BTAD=agent)
    assert float(jnp.max(jnp.abs(ag3[:, 0] - ag[:, 0]))) > 1e-4  # agents read latents
    # Without agent tokens the same inputs give the same world-model outputs (same params).
    plain = Dynamics(DynamicsConfig(**{**model.config.__dict__, 'num_agent_tokens': 0}))
    kept = {k: v for k, v in params.items() if k != 'agent_tokens'}
    out4, none = apply(plain, kept, z, tau, d, acts, has)
    assert none is None
    np.testing.assert_allclose(out4, out, atol=1e-5)


def test_registers_are_read_and_can_be_ablated():
    model, params = make(num_registers=2)
    z, tau, d, acts, has = inputs(8)
    out, _ = apply(model, params, z, tau, d, acts, has)
    moved = dict(params, registers=params['registers'] + 1.0)
    out2, _ = apply(model, params | moved, z, tau, d, acts, has)
    assert float(jnp.max(jnp.abs(out2 - out))) > 1e-4
    bare, bare_params = make(num_registers=0)
    assert 'registers' not in bare_params
    assert 'registers' not in bare.config.layout().names
    assert apply(bare, bare_params, z, tau, d, acts, has)[0].shape == z.shape


def test_cached_step_matches_full_sequence():
    model, params = make()
    z, tau, d, acts, has = inputs(9)
    full, _ = apply(model, params, z, tau, d, acts, has)
    cache = init_cache(model.config.transformer, model.config.layout().num_tokens, B, max_frames=T)
    step = jax.jit(
        lambda *a: model.apply({'params': params}, *a, commit=True, method=Dynamics.step)
    )
    for t in range(T):
        sl = slice(t, t + 1)
        a = {k: v[:, sl] for k, v in acts.items()}
        (o, _), cache = step(z[:, sl], tau[:, sl], d[:, sl], a, has[:, sl], cache)
        np.testing.assert_allclose(o[:, 0], full[:, t], atol=2e-5)


def test_check_actions_messages():
    _, _, _, acts, has = inputs(10)
    a = {k: np.asarray(v) for k, v in acts.items()}
    check_actions(a, COMPONENTS, np.asarray(has))
    bad = dict(a, discrete=np.where(np.asarray(has), 7, -1))
    with pytest.raises(ValueError, match=r"'discrete' has values in \[7, 7\] outside \[0, 5\)"):
        check_actions(bad, COMPONENTS, np.asarray(has))
    check_actions(
        dict(a, discrete=np.where(np.asarray(has), a['discrete'], -1)), COMPONENTS, np.asarray(has)
    )  # placeholders on unlabeled steps are fine
    with pytest.raises(ValueError, match='expects'):
        check_actions({'discrete': a['discrete']}, COMPONENTS)
    with pytest.raises(ValueError, match=r'must be \[B, T, 3\]'):
        check_actions(dict(a, keys=a['keys'][..., :2]), COMPONENTS)


def test_tau_grid_indices_cover_tables():
    """Every (tau, d) the objective samples and the context level have a table row."""
    k_max = 8
    tau, d = shortcut.sample_tau_d(jax.random.key(0), (4096,), k_max)
    ti, di = shortcut.tau_index(tau, k_max), shortcut.d_index(d, k_max)
    assert int(ti.max()) < shortcut.num_tau_indices(k_max)
    assert int(di.max()) < shortcut.num_d_indices(k_max)
    np.testing.assert_allclose(np.asarray(ti) / k_max, np.asarray(tau))
