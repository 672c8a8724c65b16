"""benchmarks/agent_gradients.py: per-term gradient norms under RMS normalization (README 2)."""

import jax.numpy as jnp
import numpy as np

from benchmarks import agent_gradients as ag


def test_normalized_gradient_norms_match_numpy():
    """Terms a*w.x (linear) and (w.y)^2 on a 'shared' subtree; a head subtree is left out."""
    x = np.array([1.0, -2.0, 0.5], np.float32)
    y = np.array([0.5, 1.0, 3.0], np.float32)
    w = np.array([0.3, -0.1, 0.2], np.float32)
    params = {'shared': jnp.asarray(w), 'head': jnp.asarray(2.0)}

    def terms(p):
        lin = p['head'] * jnp.dot(p['shared'], x)
        quad = jnp.dot(p['shared'], y) ** 2
        return {'lin': lin, 'quad': quad, 'part': 0.25 * quad, 'off': jnp.zeros(())}

    norms, values = ag.normalized_gradient_norms(
        terms, params, 'shared', {'lin': 'lin', 'part': 'quad', 'off': 'off'}
    )
    lin = 2.0 * float(w @ x)
    quad = float(w @ y) ** 2
    assert np.isclose(values['lin'], lin) and np.isclose(values['quad'], quad)
    # d(lin / lin)/dw = 2 x / lin; d(0.25 quad / quad)/dw = 0.25 * 2 (w.y) y / quad.
    np.testing.assert_allclose(norms['lin'], np.linalg.norm(2.0 * x / lin), rtol=1e-5)
    want = np.linalg.norm(0.5 * float(w @ y) * y / quad)
    np.testing.assert_allclose(norms['part'], want, rtol=1e-5)
    assert norms['off'] == 0.0  # a term switched off (value 0) pulls nothing
