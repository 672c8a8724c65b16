"""Attention core, RoPE, soft-cap, norms and the hand-written backward passes (PAPER 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax.nn import apply_rope, attend, rms_norm, rope_angles, softcap_logits
from dreamer4_jax.nn.linear import project, split
from dreamer4_jax.nn.mlp import swiglu
from dreamer4_jax.nn.remat import late_remat
from dreamer4_jax.nn.rope import rope_tables


def _np_mha(q, k, v, mask, cap):
    """Plain multi-head attention, one head at a time. q [Q,H,K], k/v [M,H,K], mask [Q,M]."""
    out = np.zeros_like(q)
    for h in range(q.shape[1]):
        logits = q[:, h] @ k[:, h].T / np.sqrt(q.shape[-1])
        if cap is not None:
            logits = cap * np.tanh(logits / cap)
        logits = np.where(mask, logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        out[:, h] = (w / w.sum(-1, keepdims=True)) @ v[:, h]
    return out


def _inputs(n_q=5, n_m=7, heads=4, kv_heads=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, n_q, heads, dim)).astype(np.float32) * 2
    k = rng.normal(size=(2, n_m, kv_heads, dim)).astype(np.float32) * 2
    v = rng.normal(size=(2, n_m, kv_heads, dim)).astype(np.float32)
    mask = rng.random((n_q, n_m)) < 0.6
    mask[:, 0] = True  # every query keeps a key
    return q, k, v, mask


@pytest.mark.parametrize('cap', [None, 5.0, 100.0])
def test_gqa_with_all_kv_heads_is_plain_mha(cap):
    q, k, v, mask = _inputs()
    got = attend(q.reshape(2, 5, 4, 1, 8), k, v, mask, softcap=cap)
    for b in range(2):
        ref = _np_mha(q[b], k[b], v[b], mask, cap)
        np.testing.assert_allclose(np.asarray(got[b]).reshape(5, 4, 8), ref, rtol=1e-5, atol=1e-5)


def test_gqa_shares_kv_heads_across_query_groups():
    q, k, v, mask = _inputs(heads=6, kv_heads=2)
    got = attend(q.reshape(2, 5, 2, 3, 8), k, v, mask, softcap=None)
    # Query head h = n * G + g reads KV head n.
    k_rep, v_rep = np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2)
    for b in range(2):
        ref = _np_mha(q[b], k_rep[b], v_rep[b], mask, None)
        np.testing.assert_allclose(np.asarray(got[b]).reshape(5, 6, 8), ref, rtol=1e-5, atol=1e-5)


def test_dpa_xla_matches_einsum_path():
    q, k, v, mask = _inputs(heads=4, kv_heads=2)
    q5 = q.reshape(2, 5, 2, 2, 8)
    a = attend(q5, k, v, mask, impl='einsum')
    b = attend(q5, k, v, mask, impl='dpa_xla')
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    per_row = np.broadcast_to(mask, (2, 5, 7))  # a per-batch-row mask takes the other branch
    c = attend(q5, k, v, per_row, impl='dpa_xla')
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='soft-cap'):
        attend(q5, k, v, mask, softcap=5.0, impl='dpa_xla')


def test_softcap_bounds_logits_and_is_identity_near_zero():
    x = jnp.array([-1e4, -60.0, -1.0, 0.0, 1e-3, 30.0, 1e6])
    y = np.asarray(softcap_logits(x, 50.0))
    assert np.all(np.abs(y) <= 50.0)
    assert np.abs(y[0] + 50) < 1e-3 and np.abs(y[-1] - 50) < 1e-3
    np.testing.assert_allclose(y[4], 1e-3, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(softcap_logits(x, None)), np.asarray(x))


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(16,)).astype(np.float32)
    k = rng.normal(size=(16,)).astype(np.float32)

    def score(pq, pk):
        cq, sq = rope_tables(rope_angles(jnp.array([pq]), 8, 10_000.0))
        ck, sk = rope_tables(rope_angles(jnp.array([pk]), 8, 10_000.0))
        return float(apply_rope(q[None], cq, sq)[0] @ apply_rope(k[None], ck, sk)[0])

    for pq, pk in [(3, 1), (7, 7), (2, 9)]:
        for shift in (1, 5, 40):
            np.testing.assert_allclose(
                score(pq + shift, pk + shift), score(pq, pk), rtol=1e-4, atol=1e-4
            )
    assert abs(score(3, 1) - score(3, 2)) > 1e-3  # ...and do depend on it
    cq, sq = rope_tables(rope_angles(jnp.array([5]), 8, 10_000.0))
    np.testing.assert_allclose(
        np.linalg.norm(apply_rope(q[None], cq, sq)), np.linalg.norm(q), rtol=1e-5
    )


def test_rms_norm_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 10)).astype(np.float32) * 3
    scale = rng.normal(size=(10,)).astype(np.float32)
    ref = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(np.asarray(rms_norm(x, scale, 1e-6)), ref, rtol=1e-5, atol=1e-6)


def test_swiglu_and_split_gradients_match_autodiff():
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(4, 2, 6)).astype(np.float32))
    ct = jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32))
    ref_fn = lambda h: jax.nn.silu(h[:, 0]) * h[:, 1]
    np.testing.assert_allclose(np.asarray(swiglu(h)), np.asarray(ref_fn(h)), rtol=1e-6)
    g = jax.vjp(swiglu, h)[1](ct)[0]
    g_ref = jax.vjp(ref_fn, h)[1](ct)[0]
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-6)

    x = jnp.asarray(rng.normal(size=(3, 5, 2)).astype(np.float32))
    f = lambda x: sum(jnp.sum(p * (i + 1)) for i, p in enumerate(split(x, (2, 1, 2), axis=1)))
    f_ref = lambda x: jnp.sum(x[:, :2]) + 2 * jnp.sum(x[:, 2:3]) + 3 * jnp.sum(x[:, 3:])
    np.testing.assert_allclose(np.asarray(jax.grad(f)(x)), np.asarray(jax.grad(f_ref)(x)))


def test_project_is_a_tensordot():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    w = rng.normal(size=(4, 5, 6)).astype(np.float32)
    got = project(jnp.asarray(x), jnp.asarray(w), 2, jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.tensordot(x, w, 2), rtol=1e-5, atol=1e-5)


def test_late_remat_gradients_equal_plain_gradients():
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(6, 6)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(4, 6)).astype(np.float32))
    f = lambda w, x: jnp.tanh(x @ w) @ w
    loss = lambda fn: lambda w, x: jnp.sum(fn(w, x) ** 2)
    for policy in (None, jax.checkpoint_policies.dots_with_no_batch_dims_saveable):
        got = jax.grad(loss(late_remat(f, policy)), argnums=(0, 1))(w, x)
        ref = jax.grad(loss(f), argnums=(0, 1))(w, x)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
