"""Shortcut forcing (PAPER 6, 7): sampling, targets vs a NumPy reference with a closed-form
stand-in network, the (1 - tau)^2 equivalence, stop-gradient, and the K-step sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax.shortcut import (
    ShortcutConfig,
    corrupt_context,
    d_index,
    euler_step,
    num_d_indices,
    num_tau_indices,
    ramp_weight,
    sample_frame,
    sample_tau_d,
    sample_training_tau_d,
    shortcut_loss_terms,
    tau_index,
    v_to_x,
    x_to_v,
)

K_MAX = 8
PARAMS = np.array([0.7, 0.3, -0.5, 0.4, 0.2])


def test_sample_tau_d_matches_eq4():
    tau, d = sample_tau_d(jax.random.key(0), (64, 64), 16)
    tau, d = np.asarray(tau), np.asarray(d)
    assert tau.dtype == np.float32 and tau.shape == (64, 64)
    k = np.round(1 / d).astype(int)
    np.testing.assert_array_equal(1.0 / k, d)
    ks, counts = np.unique(k, return_counts=True)
    np.testing.assert_array_equal(ks, [1, 2, 4, 8, 16])
    np.testing.assert_allclose(counts / k.size, 0.2, atol=0.02)
    idx = tau * k
    np.testing.assert_array_equal(idx, np.round(idx))  # tau on the grid of its own d
    assert (tau >= 0).all() and (tau <= 1 - d).all() and (tau < 1).all()
    for kk in (2, 4):
        grid = np.bincount(idx[k == kk].astype(int), minlength=kk) / (k == kk).sum()
        np.testing.assert_allclose(grid, 1 / kk, atol=0.04)
    again = sample_tau_d(jax.random.key(0), (64, 64), 16)
    np.testing.assert_array_equal(again[0], tau)


def test_sample_tau_d_bootstrap_fraction_and_rows():
    tau, d = map(
        np.asarray, sample_tau_d(jax.random.key(1), (128, 32), 16, bootstrap_fraction=0.25)
    )
    boot = d > 1 / 16
    assert boot.mean() == pytest.approx(0.25, abs=0.02)
    assert set(np.round(1 / d[boot]).astype(int)) == {1, 2, 4, 8}
    assert (tau * 16 == np.round(tau * 16)).all()
    _, d = map(
        np.asarray,
        sample_tau_d(jax.random.key(2), (256, 8), 16, bootstrap_fraction=0.5, per_row=True),
    )
    rows = d > 1 / 16
    assert ((rows.all(1)) | (~rows.any(1))).all() and 0.35 < rows[:, 0].mean() < 0.65
    _, d = sample_tau_d(jax.random.key(3), (100,), 16, bootstrap_fraction=0.0)
    np.testing.assert_array_equal(d, 1 / 16)
    tau, d = sample_tau_d(jax.random.key(3), (100,), 1, bootstrap_fraction=0.5)
    np.testing.assert_array_equal(d, 1.0)
    np.testing.assert_array_equal(tau, 0.0)
    _, d = sample_training_tau_d(jax.random.key(4), (10, 10), ShortcutConfig(16, shortcut=False))
    np.testing.assert_array_equal(d, 1 / 16)


def test_bad_k_max_and_config():
    for bad in (0, 3, 12, 2.0):
        with pytest.raises(ValueError, match='power of two'):
            sample_tau_d(jax.random.key(0), (2,), bad)
    with pytest.raises(ValueError, match='prediction'):
        ShortcutConfig(prediction='eps')
    with pytest.raises(ValueError, match='bootstrap_fraction'):
        ShortcutConfig(bootstrap_fraction=1.5)


def test_last_frame_noise_levels_make_a_next_frame_regressor():
    """'last_frame' (a probe outside the paper): clean-ish context, the last frame from noise."""
    cfg = ShortcutConfig(k_max=K_MAX, shortcut=False, noise_levels='last_frame')
    tau, d = sample_training_tau_d(jax.random.key(0), (3, 5), cfg)
    expected = np.tile([1 - 1 / K_MAX] * 4 + [0.0], (3, 1))
    np.testing.assert_array_equal(np.asarray(tau), expected)
    np.testing.assert_array_equal(np.asarray(d), np.full((3, 5), 1 / K_MAX))
    with pytest.raises(ValueError, match='shortcut=False'):
        ShortcutConfig(noise_levels='last_frame')
    with pytest.raises(ValueError, match='noise_levels'):
        ShortcutConfig(noise_levels='uniform')
    # The default is diffusion forcing: levels differ across the frames of a row.
    tau_df, _ = sample_training_tau_d(jax.random.key(0), (64, 5), ShortcutConfig(k_max=K_MAX))
    assert len(np.unique(np.asarray(tau_df)[:, -1])) > 1


def test_ramp_weight_and_indices():
    np.testing.assert_allclose(ramp_weight(jnp.array([0.0, 0.5, 1.0])), [0.1, 0.55, 1.0])
    np.testing.assert_array_equal(tau_index(jnp.array([0.0, 0.125, 0.875, 1.0]), 8), [0, 1, 7, 8])
    np.testing.assert_array_equal(d_index(jnp.array([1.0, 0.5, 0.125]), 8), [0, 1, 3])
    assert num_tau_indices(8) == 9 and num_d_indices(8) == 4


def _causal_mean_t(z, xp):
    counts = xp.arange(1, z.shape[1] + 1).reshape(1, -1, 1, 1)
    return xp.cumsum(z, axis=1) / counts


def _net(p, z, tau, d, xp):
    """Closed-form stand-in: elementwise in (z, tau, d) plus causal mixing over time."""
    t, dd = tau[..., None, None], d[..., None, None]
    return p[0] * z + p[1] * t + p[2] * dd + p[3] * z * t + p[4] * _causal_mean_t(z, xp)


def _np_terms(p, z1, z0, tau, d, cfg):
    """Per-frame reference, bootstrap always in the v-space form (times (1 - tau)^2 for x)."""
    net = lambda z, t, dd: _net(p, z, t, dd, np)
    b, t_len = tau.shape
    t4 = tau[..., None, None]
    zt = (1 - t4) * z0 + t4 * z1

    def xv(out, z, lvl):
        if cfg.prediction == 'x':
            return out, (out - z) / (1 - lvl)
        return z + (1 - lvl) * out, out

    x_hat, v_hat = xv(net(zt, tau, d), zt, t4)
    boot = d > 1 / cfg.k_max
    dh = np.where(boot, d / 2, d)
    out1 = net(zt, tau, dh)
    z_mid, tau_mid = zt.copy(), tau.copy()
    b1 = np.zeros_like(zt)
    for i in range(b):
        for j in range(t_len):
            b1[i, j] = xv(out1[i, j], zt[i, j], tau[i, j])[1]
            if boot[i, j]:
                z_mid[i, j] = zt[i, j] + b1[i, j] * d[i, j] / 2
                tau_mid[i, j] = tau[i, j] + d[i, j] / 2
    out2 = net(z_mid, tau_mid, dh)
    flow, bootstrap = np.zeros_like(tau), np.zeros_like(tau)
    for i in range(b):
        for j in range(t_len):
            b2 = xv(out2[i, j], z_mid[i, j], tau_mid[i, j])[1]
            v_tgt = (b1[i, j] + b2) / 2
            v_err = np.mean((v_hat[i, j] - v_tgt) ** 2)
            if cfg.loss_space == 'x':
                flow[i, j] = np.mean((x_hat[i, j] - z1[i, j]) ** 2)
                bootstrap[i, j] = (1 - tau[i, j]) ** 2 * v_err
            else:
                flow[i, j] = np.mean((v_hat[i, j] - (z1[i, j] - z0[i, j])) ** 2)
                bootstrap[i, j] = v_err
    w = 0.9 * tau + 0.1 if cfg.ramp else np.ones_like(tau)
    return {
        'flow': flow,
        'bootstrap': bootstrap,
        'bootstrap_mask': boot.astype(float),
        'weight': w,
        'loss': w * np.where(boot, bootstrap, flow),
    }


def _batch(seed, shape=(3, 6, 4, 2)):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    z1 = jax.random.normal(k1, shape)
    z0 = jax.random.normal(k2, shape)
    tau, d = sample_tau_d(k3, shape[:2], K_MAX, bootstrap_fraction=0.5)
    assert 0 < float((d > 1 / K_MAX).mean()) < 1  # both kinds of frame present
    return z1, z0, tau, d


@pytest.mark.parametrize(
    'prediction,loss_space,ramp',
    [('x', 'x', True), ('x', 'v', True), ('v', 'x', False), ('v', 'v', True)],
)
def test_loss_terms_match_reference(prediction, loss_space, ramp):
    cfg = ShortcutConfig(K_MAX, prediction=prediction, loss_space=loss_space, ramp=ramp)
    z1, z0, tau, d = _batch(0)
    predict = lambda z, t, dd: _net(jnp.asarray(PARAMS, jnp.float32), z, t, dd, jnp)
    terms = jax.jit(lambda *a: shortcut_loss_terms(predict, *a, cfg))(z1, z0, tau, d)
    ref = _np_terms(PARAMS, *(np.asarray(a, np.float64) for a in (z1, z0, tau, d)), cfg)
    for name, val in ref.items():
        assert terms[name].shape == (3, 6)
        np.testing.assert_allclose(terms[name], val, rtol=2e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(terms['flow_mask'], 1 - ref['bootstrap_mask'])


def test_x_space_bootstrap_equals_scaled_v_space_form():
    """PAPER 6.3: ||x_hat - (z_t + (1-tau) v_tgt)||^2 == (1-tau)^2 ||v_hat - v_tgt||^2."""
    z1, z0, tau, d = _batch(1)
    predict = lambda z, t, dd: _net(jnp.asarray(PARAMS, jnp.float32), z, t, dd, jnp)
    x_terms = shortcut_loss_terms(predict, z1, z0, tau, d, ShortcutConfig(K_MAX))
    v_terms = shortcut_loss_terms(predict, z1, z0, tau, d, ShortcutConfig(K_MAX, loss_space='v'))
    mask = np.asarray(x_terms['bootstrap_mask']) > 0
    scaled = (1 - np.asarray(tau)) ** 2 * np.asarray(v_terms['bootstrap'])
    np.testing.assert_allclose(np.asarray(x_terms['bootstrap'])[mask], scaled[mask], rtol=1e-4)


@pytest.mark.parametrize('prediction', ['x', 'v'])
def test_perfect_network_has_zero_loss(prediction):
    """An oracle that knows z1 (x) or z1 - z0 (v) makes flow and bootstrap targets consistent."""
    z1, z0, tau, d = _batch(2)
    oracle = (lambda z, t, dd: z1) if prediction == 'x' else (lambda z, t, dd: z1 - z0)
    for space in ('x', 'v'):
        cfg = ShortcutConfig(K_MAX, prediction=prediction, loss_space=space)
        terms = shortcut_loss_terms(oracle, z1, z0, tau, d, cfg)
        np.testing.assert_allclose(terms['loss'], 0.0, atol=1e-9)


def test_diffusion_forcing_skips_bootstrap_and_ramp_off():
    z1, z0, tau, d = _batch(3)
    calls = []
    predict = lambda z, t, dd: calls.append(1) or 0.5 * z
    cfg = ShortcutConfig(K_MAX, shortcut=False, ramp=False)
    terms = shortcut_loss_terms(predict, z1, z0, tau, d, cfg)
    assert len(calls) == 1  # no teacher passes
    np.testing.assert_array_equal(terms['bootstrap_mask'], 0.0)
    np.testing.assert_array_equal(terms['weight'], 1.0)
    zt = (1 - tau[..., None, None]) * z0 + tau[..., None, None] * z1
    ref = np.mean((0.5 * np.asarray(zt) - np.asarray(z1)) ** 2, axis=(2, 3))
    np.testing.assert_allclose(terms['loss'], ref, rtol=1e-5)


def test_gradient_flows_only_through_main_prediction():
    z1, z0, tau, d = _batch(4)
    cfg = ShortcutConfig(K_MAX)
    p0 = jnp.asarray(PARAMS, jnp.float32)

    def loss(p):
        terms = shortcut_loss_terms(lambda z, t, dd: _net(p, z, t, dd, jnp), z1, z0, tau, d, cfg)
        return jnp.mean(terms['loss'])

    # Reference: the same loss with the teacher targets frozen as NumPy constants.
    z1_, z0_, tau_, d_ = (np.asarray(a, np.float64) for a in (z1, z0, tau, d))
    t4 = tau_[..., None, None]
    zt = (1 - t4) * z0_ + t4 * z1_
    boot = (d_ > 1 / K_MAX)[..., None, None]
    target = jnp.asarray(np.where(boot, _np_boot_x_target(PARAMS, zt, tau_, d_), z1_), jnp.float32)
    w, zt = jnp.asarray(0.9 * tau_ + 0.1, jnp.float32), jnp.asarray(zt, jnp.float32)
    frozen = lambda p: jnp.mean(w * jnp.mean((_net(p, zt, tau, d, jnp) - target) ** 2, (2, 3)))
    assert float(loss(p0)) == pytest.approx(float(frozen(p0)), rel=1e-5)
    g = jax.grad(loss)(p0)
    np.testing.assert_allclose(g, jax.grad(frozen)(p0), rtol=1e-4, atol=1e-6)
    # The teacher passes do depend on the parameters: the total derivative differs, so the check
    # above would fail if gradients leaked through them.
    eps = 1e-3
    fd = [(loss(p0.at[i].add(eps)) - loss(p0.at[i].add(-eps))) / (2 * eps) for i in range(5)]
    assert np.max(np.abs(np.asarray(fd) - np.asarray(g))) > 1e-2


def _np_boot_x_target(p, zt, tau, d):
    net = lambda z, t, dd: _net(p, z, t, dd, np)
    boot = d > 1 / K_MAX
    dh = np.where(boot, d / 2, d)
    t4, dh4, b4 = tau[..., None, None], dh[..., None, None], boot[..., None, None]
    b1 = (net(zt, tau, dh) - zt) / (1 - t4)
    z_mid = np.where(b4, zt + b1 * dh4, zt)
    tau_mid = np.where(boot, tau + dh, tau)
    b2 = (net(z_mid, tau_mid, dh) - z_mid) / (1 - tau_mid[..., None, None])
    return zt + (1 - t4) * (b1 + b2) / 2


def test_has_aux_and_shape_errors():
    z1, z0, tau, d = _batch(5)
    predict = lambda z, t, dd: (0.5 * z, {'t_seen': t})
    terms, aux = shortcut_loss_terms(predict, z1, z0, tau, d, ShortcutConfig(K_MAX), has_aux=True)
    np.testing.assert_array_equal(aux['t_seen'], tau)  # aux comes from the main pass
    assert terms['loss'].shape == (3, 6)
    with pytest.raises(ValueError, match='leading dims'):
        shortcut_loss_terms(predict, z1, z0, tau[:, :-1], d[:, :-1], ShortcutConfig(K_MAX))


def test_conversions_are_inverse():
    z, x = jax.random.normal(jax.random.key(0), (2, 2, 3, 4)), jnp.ones((2, 2, 3, 4))
    tau = jnp.array([[0.0, 0.25], [0.5, 0.875]])
    np.testing.assert_allclose(v_to_x(x_to_v(x, z, tau), z, tau), x, rtol=1e-6)


@pytest.mark.parametrize('k', [1, 2, 4, 8])
@pytest.mark.parametrize('prediction', ['x', 'v'])
def test_sampler_reaches_fixed_target(k, prediction):
    x_star = jax.random.normal(jax.random.key(7), (2, 3, 5, 4))
    if prediction == 'x':
        predict = lambda z, t, dd: jnp.broadcast_to(x_star, z.shape)
    else:
        predict = lambda z, t, dd: (x_star - z) / (1 - t[..., None, None])
    out = sample_frame(predict, jax.random.key(8), x_star.shape, k, prediction=prediction)
    np.testing.assert_allclose(out, x_star, atol=1e-6)


def test_sampler_matches_numpy_loop_and_network_d():
    shape, k = (2, 1, 3, 2), 4
    seen = []

    def predict(z, t, dd):
        jax.debug.callback(lambda a, b: seen.append((float(a), float(b))), t[0, 0], dd[0, 0])
        return 0.5 * z + t[..., None, None] + dd[..., None, None]

    rng = jax.random.key(9)
    out = sample_frame(predict, rng, shape, k, network_d=1 / 64)
    z = np.asarray(jax.random.normal(rng, shape), np.float64)  # the sampler's starting noise
    for i in range(k):
        tau = i / k
        x_hat = 0.5 * z + tau + 1 / 64
        z = z + (1 / k) * (x_hat - z) / (1 - tau)
    np.testing.assert_allclose(out, z, rtol=1e-5, atol=1e-6)
    assert seen == [(i / k, 1 / 64) for i in range(k)]


def test_euler_step_and_context_corruption():
    z, x = jnp.zeros((1, 1, 2, 2)), jnp.ones((1, 1, 2, 2))
    np.testing.assert_allclose(euler_step(z, x, jnp.full((1, 1), 0.5), 0.25), 0.5)
    clean = jax.random.normal(jax.random.key(10), (2, 3, 4))
    z_ctx, used = corrupt_context(jax.random.key(11), clean)
    noise = jax.random.normal(jax.random.key(11), clean.shape)
    assert used == 0.9
    np.testing.assert_allclose(z_ctx, 0.1 * noise + 0.9 * clean, rtol=1e-5, atol=1e-6)
    _, used = corrupt_context(jax.random.key(11), clean, 0.9, k_max=64)
    assert used == 58 / 64 and int(tau_index(jnp.asarray(used), 64)) == 58
    with pytest.raises(ValueError, match='signal level'):
        corrupt_context(jax.random.key(0), clean, 1.5)
