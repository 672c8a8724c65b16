"""lambda-returns, advantages and PMPO (PAPER 10.2, 10.3) against plain-Python references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import rl
from dreamer4_jax.rl import (
    advantages,
    alive_mask,
    lambda_returns,
    pmpo_loss,
    pmpo_loss_and_metrics,
)


def _np_lambda_returns(r, v, c, gamma, lam):
    b, t = r.shape
    out = np.zeros((b, t - 1))
    for i in range(b):
        nxt = v[i, t - 1]
        for j in reversed(range(t - 1)):
            nxt = r[i, j] + gamma * c[i, j] * ((1 - lam) * v[i, j + 1] + lam * nxt)
            out[i, j] = nxt
    return out


def _random_rollout(seed, b=3, t=7):
    rs = np.random.RandomState(seed)
    r = rs.randn(b, t).astype(np.float32)
    v = rs.randn(b, t).astype(np.float32)
    c = (rs.rand(b, t) > 0.25).astype(np.float32)
    return r, v, c


@pytest.mark.parametrize('gamma,lam', [(0.997, 0.95), (0.9, 0.0), (0.8, 1.0), (1.0, 0.5)])
def test_lambda_returns_matches_loop(gamma, lam):
    r, v, c = _random_rollout(0)
    out = jax.jit(lambda_returns, static_argnums=(3, 4))(r, v, c, gamma, lam)
    assert out.shape == (3, 6)
    np.testing.assert_allclose(out, _np_lambda_returns(r, v, c, gamma, lam), rtol=1e-5, atol=1e-6)


def test_lambda_returns_hand_cases():
    r = np.array([[1.0, 2.0, 3.0, 4.0]])
    v = np.array([[10.0, 20.0, 30.0, 40.0]])
    c = np.array([[1.0, 0.0, 1.0, 1.0]])  # the transition 1 -> 2 terminates
    g = 0.5
    # lam = 0: one-step TD targets r_t + g c_t v_{t+1}.
    np.testing.assert_allclose(lambda_returns(r, v, c, g, 0.0), [[11.0, 2.0, 23.0]])
    # lam = 1: discounted sums cut at the terminal and bootstrapped with v_{T-1} = 40.
    r2 = 3.0 + g * 40.0
    np.testing.assert_allclose(lambda_returns(r, v, c, g, 1.0), [[1.0 + g * 2.0, 2.0, r2]])
    # No termination and lam = 1: the Monte Carlo return with the final bootstrap.
    c1 = np.ones_like(c)
    mc = 1 + g * 2 + g**2 * 3 + g**3 * 40
    assert float(lambda_returns(r, v, c1, g, 1.0)[0, 0]) == pytest.approx(mc)


def test_lambda_returns_bad_shapes():
    r, v, c = _random_rollout(1)
    with pytest.raises(ValueError, match=r'\[B, T\]'):
        lambda_returns(r, v[:, :-1], c, 0.9, 0.9)
    with pytest.raises(ValueError, match='T >= 2'):
        lambda_returns(r[:, :1], v[:, :1], c[:, :1], 0.9, 0.9)


def test_advantages_are_stop_gradient():
    r, v, c = _random_rollout(2)
    ret = lambda_returns(r, v, c, 0.99, 0.95)
    np.testing.assert_allclose(advantages(ret, v), np.asarray(ret) - v[:, :-1], rtol=1e-6)
    grad = jax.grad(lambda vv: jnp.sum(advantages(lambda_returns(r, vv, c, 0.99, 0.95), vv)))(v)
    np.testing.assert_array_equal(grad, 0.0)
    with pytest.raises(ValueError, match='advantages'):
        advantages(ret, v[:, :-1])


def test_alive_mask():
    c = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], np.float32)
    ref = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    np.testing.assert_array_equal(alive_mask(c), ref)


def _np_pmpo(logp, adv, kl, alpha, beta, mask):
    pos = [
        (lp, m)
        for lp, a, m in zip(logp.ravel(), adv.ravel(), mask.ravel(), strict=True)
        if a >= 0 and m
    ]
    neg = [
        (lp, m)
        for lp, a, m in zip(logp.ravel(), adv.ravel(), mask.ravel(), strict=True)
        if a < 0 and m
    ]
    valid_kl = [k for k, m in zip(kl.ravel(), mask.ravel(), strict=True) if m]
    loss = 0.0
    if neg:
        loss += (1 - alpha) * sum(lp for lp, _ in neg) / len(neg)
    if pos:
        loss -= alpha * sum(lp for lp, _ in pos) / len(pos)
    if valid_kl:
        loss += beta * sum(valid_kl) / len(valid_kl)
    return loss


@pytest.mark.parametrize('alpha,beta', [(0.5, 0.3), (0.8, 0.0), (0.2, 1.5)])
def test_pmpo_matches_reference(alpha, beta):
    rs = np.random.RandomState(3)
    logp, adv, kl = rs.randn(4, 6), rs.randn(4, 6), rs.rand(4, 6)
    adv[0, :2] = 0.0  # A = 0 belongs to the positive set
    mask = rs.rand(4, 6) > 0.3
    got = pmpo_loss(logp, adv, kl, alpha, beta, mask=mask)
    assert float(got) == pytest.approx(_np_pmpo(logp, adv, kl, alpha, beta, mask), rel=1e-5)
    ones = np.ones_like(mask)
    got = pmpo_loss(logp, adv, kl, alpha, beta)
    assert float(got) == pytest.approx(_np_pmpo(logp, adv, kl, alpha, beta, ones), rel=1e-5)


def test_pmpo_empty_sets_contribute_zero():
    rs = np.random.RandomState(4)
    logp, kl = rs.randn(2, 5), rs.rand(2, 5)
    all_neg, all_pos = -np.ones((2, 5)), np.ones((2, 5))
    a, b = 0.5, 0.3
    assert float(pmpo_loss(logp, all_neg, kl, a, b)) == pytest.approx(
        (1 - a) * logp.mean() + b * kl.mean(), rel=1e-5
    )
    assert float(pmpo_loss(logp, all_pos, kl, a, b)) == pytest.approx(
        -a * logp.mean() + b * kl.mean(), rel=1e-5
    )
    nothing = pmpo_loss(logp, all_pos, kl, a, b, mask=np.zeros((2, 5), bool))
    assert float(nothing) == 0.0


def test_pmpo_masked_steps_may_hold_garbage():
    logp = np.array([[-1.0, -np.inf, -2.0]])
    kl = np.array([[0.5, np.nan, 0.1]])
    adv = np.array([[1.0, -1.0, -1.0]])
    mask = np.array([[True, False, True]])
    loss, grads = jax.value_and_grad(
        lambda lp, k: pmpo_loss(lp, adv, k, 0.5, 0.3, mask=mask), argnums=(0, 1)
    )(logp, kl)
    assert float(loss) == pytest.approx(0.5 * -2.0 - 0.5 * -1.0 + 0.3 * 0.3)
    assert np.isfinite(grads[0]).all() and np.isfinite(grads[1]).all()


def test_pmpo_gradients_flow_only_through_logp_and_kl():
    logp = jnp.array([[-1.0, -2.0, -0.5, -3.0]])
    adv = jnp.array([[0.5, -1.0, 0.0, -2.0]])
    kl = jnp.array([[0.1, 0.2, 0.3, 0.4]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    alpha, beta = 0.3, 0.7
    g_logp, g_adv, g_kl = jax.grad(
        lambda lp, ad, k: pmpo_loss(lp, ad, k, alpha, beta, mask=mask), argnums=(0, 1, 2)
    )(logp, adv, kl)
    # D+ = {0, 2}, D- = {1} (index 3 is masked), N = 3.
    np.testing.assert_allclose(g_logp, [[-alpha / 2, (1 - alpha) / 1, -alpha / 2, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(g_kl, [[beta / 3, beta / 3, beta / 3, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(g_adv, 0.0)


def test_pmpo_metrics():
    logp = np.array([[-1.0, -2.0, -4.0]])
    adv = np.array([[1.0, -1.0, 2.0]])
    kl = np.array([[0.3, 0.6, 0.9]])
    loss, m = pmpo_loss_and_metrics(logp, adv, kl, 0.5, 0.3)
    assert float(m['pmpo/frac_positive']) == pytest.approx(2 / 3)
    assert float(m['pmpo/logp_positive']) == pytest.approx(-2.5)
    assert float(m['pmpo/logp_negative']) == pytest.approx(-2.0)
    assert float(m['pmpo/kl']) == pytest.approx(0.6)
    assert float(loss) == pytest.approx(0.5 * -2.0 - 0.5 * -2.5 + 0.3 * 0.6)


def test_pmpo_deadzone_leaves_small_advantages_out_of_both_sets():
    """deadzone 0.5: A = 0.2 and -0.3 join neither set; 0.5 is positive, -0.6 negative; the KL
    still averages over every state. deadzone 0 is Eq. 11 (A = 0 is positive)."""
    logp = np.array([[-1.0, -2.0, -3.0, -4.0, -5.0]])
    adv = np.array([[0.2, -0.3, 0.5, -0.6, 0.0]])
    kl = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    loss, m = pmpo_loss_and_metrics(logp, adv, kl, 0.5, 0.3, deadzone=0.5)
    assert float(m['pmpo/frac_positive']) == pytest.approx(1 / 5)
    assert float(m['pmpo/frac_negative']) == pytest.approx(1 / 5)
    assert float(loss) == pytest.approx(0.5 * -4.0 - 0.5 * -3.0 + 0.3 * 0.3)
    loss0, m0 = pmpo_loss_and_metrics(logp, adv, kl, 0.5, 0.3)
    assert float(m0['pmpo/frac_positive']) == pytest.approx(3 / 5)
    assert float(loss0) == pytest.approx(0.5 * -3.0 - 0.5 * -3.0 + 0.3 * 0.3)
    with pytest.raises(ValueError, match='deadzone'):
        pmpo_loss_and_metrics(logp, adv, kl, 0.5, 0.3, deadzone=-0.1)


def test_imagination_reward_scale_scales_the_rewards_and_zero_is_a_null_control():
    rs = np.random.RandomState(1)
    b, s = 2, 6
    logp, kl = jnp.asarray(rs.randn(b, s)), jnp.asarray(np.abs(rs.randn(b, s)))
    value, reward = jnp.asarray(rs.randn(b, s)), jnp.asarray(rs.rand(b, s))

    def terms(r, **kw):
        return rl.imagination_loss_terms(
            logp, kl, value, lambda t: t**2, r, gamma=0.9, lam=0.8, alpha=0.5, beta=0.3,
            num_value_offsets=1, **kw,
        )  # fmt: skip

    half, m_half = terms(reward, reward_scale=0.5)
    want, m_want = terms(0.5 * reward)
    np.testing.assert_allclose(half['policy'], want['policy'], rtol=1e-6)
    np.testing.assert_allclose(m_half['imagine/return'], m_want['imagine/return'], rtol=1e-6)
    null, m_null = terms(reward, reward_scale=0.0)
    _, m_zero = terms(jnp.zeros_like(reward))
    np.testing.assert_allclose(m_null['imagine/return'], m_zero['imagine/return'], rtol=1e-6)
    assert float(m_null['imagine/return']) != pytest.approx(float(m_want['imagine/return']))


def test_running_max_credit_pays_each_rollout_its_best_reward_once():
    """Hand values: state 0 (a context frame) keeps its reward; after it a state earns the rise of
    the best reward so far (negatives never count), so repeated 0.08 presses pay once."""
    r = jnp.array(
        [[5.0, 0.08, 0.08, 0.3, -1.0, 0.2, 0.9, 0.1], [0.0, -0.5, 0.0, 0.0, 0.4, 0.4, 0.4, 0.4]]
    )
    got = rl.credited_rewards(r, 'running_max')
    want = [[5.0, 0.08, 0.0, 0.22, 0.0, 0.0, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The undiscounted return of every rollout is its best imagined reward (at least 0).
    np.testing.assert_allclose(jnp.sum(got[:, 1:], axis=1), [0.9, 0.4], atol=1e-6)
    np.testing.assert_array_equal(rl.credited_rewards(r, 'sum'), r)
    with pytest.raises(ValueError, match='reward credit must be one of'):
        rl.credited_rewards(r, 'mean')


def _undiscounted_return(reward, **kw):
    """imagine/return of rl.imagination_loss_terms with gamma = lam = 1 and zero values: the mean
    over rollouts of R_0, the sum of the (transformed) rewards of states 1..S-1."""
    zeros = jnp.zeros_like(reward)
    _, m = rl.imagination_loss_terms(
        zeros, zeros, zeros, lambda t: t**2, reward, gamma=1.0, lam=1.0, alpha=0.5, beta=0.3,
        num_value_offsets=1, **kw,
    )  # fmt: skip
    return float(m['imagine/return'])


def test_imagination_loss_terms_apply_the_reward_credit_after_the_scale():
    """With gamma = lam = 1 and zero values, R_0 of a rollout is the sum of its credited rewards:
    sixteen presses paid 0.08 each return 16 * 0.08 summed and 0.08 under running_max."""
    b, s = 1, 17
    reward = jnp.concatenate([jnp.zeros((b, 1)), jnp.full((b, s - 1), 0.08)], axis=1)

    def ret(**kw):
        return _undiscounted_return(reward, **kw)

    assert ret() == pytest.approx(16 * 0.08, rel=1e-5)
    assert ret(reward_credit='running_max') == pytest.approx(0.08, rel=1e-5)
    assert ret(reward_credit='running_max', reward_scale=0.5) == pytest.approx(0.04, rel=1e-5)
    # A floor above the presses' pay takes it all away; one at or below it keeps every press.
    assert ret(reward_floor=0.1) == 0.0
    assert ret(reward_floor=0.08) == pytest.approx(16 * 0.08, rel=1e-5)


def test_reward_floor_zeroes_only_the_rewards_below_it_before_the_scale():
    """gamma = lam = 1, zero values: R_0 sums the rewards of states 1..S-1 that survive the
    floor (0.3 and 0.9 of 0.3, 0.2, 0.9, -0.4 at floor 0.25; a negative reward is below every
    floor), and the floor reads the head's rewards, not the scaled ones."""
    reward = jnp.array([[0.7, 0.3, 0.2, 0.9, -0.4]])

    def ret(**kw):
        return _undiscounted_return(reward, **kw)

    assert ret() == pytest.approx(0.3 + 0.2 + 0.9 - 0.4, rel=1e-5)
    assert ret(reward_floor=0.25) == pytest.approx(1.2, rel=1e-5)
    assert ret(reward_floor=0.25, reward_scale=0.5) == pytest.approx(0.6, rel=1e-5)
    assert ret(reward_floor=0.25, reward_credit='running_max') == pytest.approx(0.9, rel=1e-5)


def test_imagination_loss_terms_are_pmpo_and_masked_mtp_value():
    """Named terms: 'policy' is PMPO on sg(R - v); 'value' sums each offset's mean NLL over the
    targets that exist (offset n at state t needs R_{t+n}, so later states drop out)."""
    rs = np.random.RandomState(0)
    b, s, n = 3, 5, 2
    logp, kl = rs.randn(b, s), np.abs(rs.randn(b, s))
    value, reward = rs.randn(b, s), rs.randn(b, s)
    gamma, lam, alpha, beta = 0.9, 0.8, 0.5, 0.3

    def nll(target_BHN):  # squared error stands in for the two-hot NLL
        v = jnp.asarray(value[:, : s - 1, None])
        return (target_BHN - v) ** 2

    terms, metrics = rl.imagination_loss_terms(
        jnp.asarray(logp),
        jnp.asarray(kl),
        jnp.asarray(value),
        nll,
        jnp.asarray(reward),
        gamma=gamma,
        lam=lam,
        alpha=alpha,
        beta=beta,
        num_value_offsets=n,
    )
    assert set(terms) == {'policy', 'value'}
    # Returns by hand: transition t -> t+1 earns reward[t+1]; bootstrap R_{S-1} = v_{S-1}.
    ret = np.zeros((b, s))
    ret[:, -1] = value[:, -1]
    for t in range(s - 2, -1, -1):
        ret[:, t] = reward[:, t + 1] + gamma * ((1 - lam) * value[:, t + 1] + lam * ret[:, t + 1])
    ret = ret[:, :-1]
    adv = ret - value[:, :-1]
    want_policy = rl.pmpo_loss(
        jnp.asarray(logp[:, :-1]), jnp.asarray(adv), jnp.asarray(kl[:, :-1]), alpha, beta
    )
    np.testing.assert_allclose(float(terms['policy']), float(want_policy), rtol=1e-5)
    want_value = np.mean((ret - value[:, :-1]) ** 2) + np.mean((ret[:, 1:] - value[:, :-2]) ** 2)
    np.testing.assert_allclose(float(terms['value']), want_value, rtol=1e-5)
    np.testing.assert_allclose(float(metrics['imagine/return']), ret[:, 0].mean(), rtol=1e-5)
