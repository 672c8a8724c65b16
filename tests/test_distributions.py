"""symlog/symexp, symexp two-hot and factorized action distributions vs NumPy/SciPy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from dreamer4_jax.distributions import ActionDist, TwoHot, symexp, symlog

SPACE = (('keys', 'binary', 3), ('mouse', 'categorical', 5), ('arm', 'continuous', 2))


def test_symlog_symexp_values_and_inverse():
    x = np.array([0.0, np.e - 1, -(np.e**2 - 1), 1e-3, -1e6, 1e6], np.float32)
    np.testing.assert_allclose(symlog(x)[:3], [0.0, 1.0, -2.0], atol=1e-6)
    np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-7)


def _np_twohot(x, n, low, high):
    bins = np.linspace(low, high, n)
    out = np.zeros((len(x), n))
    for i, v in enumerate(x):
        y = np.clip(np.sign(v) * np.log1p(abs(v)), low, high)
        j = np.searchsorted(bins, y, side='right') - 1
        j = min(max(j, 0), n - 2)
        frac = (y - bins[j]) / (bins[j + 1] - bins[j])
        out[i, j], out[i, j + 1] = 1 - frac, frac
    return out


def test_twohot_encode_matches_numpy_reference():
    th = TwoHot()
    bins = np.linspace(-20, 20, 255)
    x = np.array([0.0, 1.0, -3.5, 250.0, np.expm1(bins[200]), 1e12, -1e12], np.float32)
    probs = np.asarray(th.encode(x))
    np.testing.assert_allclose(probs, _np_twohot(x, 255, -20, 20), atol=2e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert (probs >= 0).all() and ((probs > 1e-6).sum(-1) <= 2).all()
    # Beyond the range the whole mass sits on the end bins.
    assert probs[5, -1] == pytest.approx(1.0) and probs[6, 0] == pytest.approx(1.0)


def test_twohot_round_trip_and_mean():
    th = TwoHot(num_bins=41, low=-8.0, high=8.0)
    x = np.array([-1000.0, -3.2, 0.0, 0.4, 17.0, 2900.0], np.float32)
    np.testing.assert_allclose(th.decode(th.encode(x)), x, rtol=1e-4, atol=1e-5)
    logits = jax.random.normal(jax.random.key(0), (3, 41))
    bins = np.linspace(-8, 8, 41)
    p = np.exp(np.asarray(logits, np.float64))
    p /= p.sum(-1, keepdims=True)
    ref = (p * bins).sum(-1)
    np.testing.assert_allclose(th.mean(logits), np.sign(ref) * np.expm1(abs(ref)), rtol=1e-5)


def test_twohot_log_prob_and_its_gradient():
    th = TwoHot()
    logits = 2.0 * jax.random.normal(jax.random.key(1), (4, 255))
    x = jnp.array([0.3, -7.0, 120.0, 0.0])
    lp = np.asarray(logits, np.float64)
    log_softmax = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    target = _np_twohot(np.asarray(x), 255, -20, 20)
    np.testing.assert_allclose(th.log_prob(logits, x), (target * log_softmax).sum(-1), rtol=1e-5)
    # Cross-entropy gradient: d(-log_prob)/d logits = softmax - target.
    grad = jax.grad(lambda lg: -th.log_prob(lg, x).sum())(logits)
    np.testing.assert_allclose(grad, np.exp(log_softmax) - target, atol=5e-5)


def test_twohot_bad_input():
    with pytest.raises(ValueError, match='num_bins'):
        TwoHot(num_bins=1)
    with pytest.raises(ValueError, match='low < high'):
        TwoHot(low=1.0, high=1.0)
    with pytest.raises(ValueError, match='255 bins'):
        TwoHot().mean(jnp.zeros((2, 10)))


def _params(key, batch=(2,)):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        'keys': 2.0 * jax.random.normal(k1, batch + (3,)),
        'mouse': 2.0 * jax.random.normal(k2, batch + (5,)),
        'arm': jax.random.normal(k3, batch + (4,)),
    }


def _np_std(raw, lo=0.1, hi=1.0):
    return lo + (hi - lo) / (1 + np.exp(-raw))


def _all_discrete_actions():
    for bits in itertools.product([0, 1], repeat=3):
        for m in range(5):
            yield np.array(bits), m


def _np_discrete_logp(params, b, bits, m):
    kl = np.asarray(params['keys'][b], np.float64)
    ml = np.asarray(params['mouse'][b], np.float64)
    p_bits = 1 / (1 + np.exp(-kl))
    lp = np.sum(bits * np.log(p_bits) + (1 - bits) * np.log(1 - p_bits))
    return lp + ml[m] - np.log(np.exp(ml).sum())


def test_action_log_prob_matches_reference():
    dist = ActionDist(SPACE)
    params = _params(jax.random.key(2))
    actions = {
        'keys': jnp.array([[1, 0, 1], [0, 0, 1]]),
        'mouse': jnp.array([4, 0]),
        'arm': jnp.array([[0.3, -1.2], [2.0, 0.1]]),
    }
    arm = np.asarray(params['arm'], np.float64)
    for b in range(2):
        ref = _np_discrete_logp(params, b, np.asarray(actions['keys'][b]), int(actions['mouse'][b]))
        ref += stats.norm(arm[b, :2], _np_std(arm[b, 2:])).logpdf(actions['arm'][b]).sum()
        assert float(dist.log_prob(params, actions)[b]) == pytest.approx(ref, rel=1e-5)
    parts = dist.component_log_probs(params, actions)
    assert set(parts) == {'keys', 'mouse', 'arm'} and parts['mouse'].shape == (2,)


def test_action_entropy_and_kl_by_enumeration_and_integration():
    dist = ActionDist(SPACE)
    p, q = _params(jax.random.key(3)), _params(jax.random.key(4))
    ent, kl = np.asarray(dist.entropy(p)), np.asarray(dist.kl(p, q))
    for b in range(2):
        logps = np.array([_np_discrete_logp(p, b, bits, m) for bits, m in _all_discrete_actions()])
        logqs = np.array([_np_discrete_logp(q, b, bits, m) for bits, m in _all_discrete_actions()])
        ent_ref, kl_ref = -np.sum(np.exp(logps) * logps), np.sum(np.exp(logps) * (logps - logqs))
        ap, aq = np.asarray(p['arm'][b], np.float64), np.asarray(q['arm'][b], np.float64)
        for i in range(2):
            gp = stats.norm(ap[i], _np_std(ap[2 + i]))
            gq = stats.norm(aq[i], _np_std(aq[2 + i]))
            ent_ref += gp.entropy()
            integrand = lambda a, gp=gp, gq=gq: gp.pdf(a) * (gp.logpdf(a) - gq.logpdf(a))
            kl_ref += integrate.quad(integrand, -30, 30)[0]
        assert ent[b] == pytest.approx(ent_ref, rel=1e-5)
        assert kl[b] == pytest.approx(kl_ref, rel=1e-4)
    np.testing.assert_allclose(dist.kl(p, p), 0.0, atol=1e-6)


def test_action_kl_with_masked_categorical_class_is_finite():
    dist = ActionDist((('a', 'categorical', 3),))
    p = {'a': jnp.array([[0.0, 1.0, -jnp.inf]])}
    q = {'a': jnp.array([[0.5, 0.0, 0.0]])}
    pr = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    qr = np.exp([0.5, 0.0, 0.0]) / np.exp([0.5, 0.0, 0.0]).sum()
    ref = np.sum(pr * (np.log(pr) - np.log(qr[:2])))
    assert float(dist.kl(p, q)[0]) == pytest.approx(ref, rel=1e-5)
    assert np.isfinite(dist.entropy(p)).all()


def test_action_sample_frequencies_and_mode():
    dist = ActionDist(SPACE)
    n = 20000
    params = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a[0], (n,) + a.shape[1:]), _params(jax.random.key(5))
    )
    s = dist.sample(jax.random.key(6), params)
    assert s['keys'].dtype == jnp.int32 and s['mouse'].dtype == jnp.int32
    assert s['arm'].dtype == jnp.float32 and s['keys'].shape == (n, 3)
    p_keys = 1 / (1 + np.exp(-np.asarray(params['keys'][0], np.float64)))
    np.testing.assert_allclose(np.asarray(s['keys']).mean(0), p_keys, atol=0.015)
    ml = np.asarray(params['mouse'][0], np.float64)
    freq = np.bincount(np.asarray(s['mouse']), minlength=5) / n
    np.testing.assert_allclose(freq, np.exp(ml) / np.exp(ml).sum(), atol=0.015)
    arm = np.asarray(params['arm'][0], np.float64)
    np.testing.assert_allclose(np.asarray(s['arm']).mean(0), arm[:2], atol=0.03)
    np.testing.assert_allclose(np.asarray(s['arm']).std(0), _np_std(arm[2:]), rtol=0.03)
    mode = dist.mode(_params(jax.random.key(5)))
    p0 = _params(jax.random.key(5))
    np.testing.assert_array_equal(mode['mouse'], np.argmax(p0['mouse'], -1))
    np.testing.assert_array_equal(mode['keys'], np.asarray(p0['keys'] > 0, np.int32))
    np.testing.assert_allclose(mode['arm'], p0['arm'][:, :2])


def test_action_space_forms_and_errors():
    class Comp:
        def __init__(self, name, kind, size):
            self.name, self.kind, self.size = name, kind, size

    class Space:
        components = (Comp('act', 'categorical', 17),)

    dist = ActionDist(Space())
    assert dist.components == (('act', 'categorical', 17),)
    assert ActionDist(SPACE).param_sizes() == {'keys': 3, 'mouse': 5, 'arm': 4}
    assert hash(ActionDist(list(SPACE))) == hash(ActionDist(SPACE))
    with pytest.raises(ValueError, match='kind'):
        ActionDist((('a', 'gaussian', 2),))
    with pytest.raises(ValueError, match='unique'):
        ActionDist((('a', 'binary', 2), ('a', 'binary', 1)))
    with pytest.raises(ValueError, match='keys'):
        dist.log_prob({'other': jnp.zeros((2, 17))}, {'act': jnp.zeros(2, jnp.int32)})
    with pytest.raises(ValueError, match='last dim'):
        dist.entropy({'act': jnp.zeros((2, 16))})
    # An out-of-range categorical action is NaN, never a silent log-prob of 0.
    lp = dist.log_prob({'act': jnp.zeros((1, 17))}, {'act': jnp.array([17])})
    assert np.isnan(lp).all()
