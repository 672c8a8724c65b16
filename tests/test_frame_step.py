"""One compiled call per generated frame (generation.jit_frame_step) equals the existing path."""

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import generation
from tests.test_generation import CTX, B, data, make


def test_frame_step_equals_generate_frame_over_window_eviction():
    """Frame by frame, with the cache donated, the one-call step equals generate_frame."""
    horizon = 5  # window C = 3: the ring buffer wraps during the run
    model, params = make(window=3)
    z, acts, has = data(horizon)
    sampling = generation.SamplingConfig()
    acts_ctx = {k: v[:, :CTX] for k, v in acts.items()}
    fill = jax.jit(lambda p, z, r: generation.prefill(model, p, z, acts_ctx, has[:, :CTX], r))
    cache_ref = fill(params, z, jax.random.key(1))
    cache = jax.tree.map(jnp.copy, cache_ref)
    step = generation.jit_frame_step(model, sampling)
    ref = jax.jit(lambda p, c, a, h, r: generation.generate_frame(model, p, c, a, h, r))
    rng = rng_ref = jax.random.key(2)
    for h in range(horizon):
        act = {k: v[:, CTX + h][:, None] for k, v in acts.items()}
        has_b1 = has[:, CTX + h][:, None]
        z_new, cache, rng = step(params, cache, act, has_b1, rng)
        rng_ref, sub = jax.random.split(rng_ref)
        z_ref, cache_ref = ref(params, cache_ref, act, has_b1, sub)
        assert z_new.shape == (B, 1, 4, 4)
        np.testing.assert_allclose(z_new, z_ref, atol=1e-6)
        for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(cache_ref), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(cache.next_frame) == CTX + horizon
    assert float(jnp.std(z_new)) > 0.1  # real samples, not a constant
