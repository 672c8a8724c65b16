"""RMSNorm (PAPER 3.1: pre-layer RMSNorm; 3.2: QK-norm on per-head queries and keys).

Dimension keys: any leading dims, normalized over the last one (D width or K head dim).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer4_jax.nn.partitioning import param_init


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the last axis, computed in float32, returned in x.dtype."""
    x32 = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * inv * scale.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nn.Module):
    """Learned-scale RMSNorm over the last axis; `axis_name` is the scale's logical name."""

    eps: float = 1e-6
    axis_name: str = 'embed'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            'scale',
            param_init(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            jnp.float32,
        )
        return rms_norm(x, scale, self.eps)
