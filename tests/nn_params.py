"""Test helpers shared by the transformer tests."""

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, x, seed=1):
    """Random parameters of the right shapes without compiling `init` (slow on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def fill(s):
        if len(s.shape) == 1:
            return jnp.asarray(1 + 0.1 * rng.normal(size=s.shape), s.dtype)
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), s.dtype)

    return jax.tree.map(fill, shapes)
