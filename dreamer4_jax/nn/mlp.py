"""SwiGLU MLP (PAPER 3.1): silu(x W_gate) * (x W_up) W_down.

Gate and up are one [D, 2, F] matmul; the gating has a hand-written backward that writes the
[N, 2, F] gradient in one pass (autodiff of the two slices gives pad + add chains on XLA:CPU).

Dimension keys: B batch, T frames, S tokens per frame, D width, F hidden.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer4_jax.nn.config import TransformerConfig
from dreamer4_jax.nn.linear import project
from dreamer4_jax.nn.partitioning import constrain, param_init

ACT_BTSD = ('batch', 'time', 'tokens', 'act_embed')


@jax.custom_vjp
def swiglu(h: jax.Array) -> jax.Array:
    """[..., 2, F] (gate, up) -> [..., F] silu(gate) * up."""
    return jax.nn.silu(h[..., 0, :]) * h[..., 1, :]


def _swiglu_fwd(h):
    return swiglu(h), h


def _swiglu_bwd(h, dy):
    g = h[..., 0, :].astype(jnp.float32)
    u = h[..., 1, :].astype(jnp.float32)
    dy = dy.astype(jnp.float32)
    sig = jax.nn.sigmoid(g)
    d_gate = dy * u * sig * (1.0 + g * (1.0 - sig))
    d_up = dy * g * sig
    return (jnp.stack([d_gate, d_up], axis=-2).astype(h.dtype),)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def fan_in_init(scale: float, in_axis, out_axis):
    """Truncated-normal fan-in initializer for multi-axis kernels."""
    return nn.initializers.variance_scaling(
        scale, 'fan_in', 'truncated_normal', in_axis=in_axis, out_axis=out_axis
    )


class SwiGLU(nn.Module):
    """SwiGLU MLP with fused gate/up projection."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BTSD: jax.Array) -> jax.Array:
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        d, f = cfg.width, cfg.mlp_dim
        w_in = self.param(
            'wi',
            param_init(fan_in_init(1.0, 0, (1, 2)), ('embed', None, 'mlp')),
            (d, 2, f),
            jnp.float32,
        )
        # Residual-branch output scaled by 1/sqrt(2 * depth) (GPT-2 style) for a stable start.
        w_out = self.param(
            'wo',
            param_init(fan_in_init(1.0 / (2 * cfg.depth), 0, 1), ('mlp', 'embed')),
            (f, d),
            jnp.float32,
        )
        h_BTS2F = constrain(
            project(x_BTSD, w_in, 1, dt), ('batch', 'time', 'tokens', None, 'act_mlp')
        )
        a_BTSF = swiglu(h_BTS2F)
        return constrain(project(a_BTSF, w_out, 1, dt), ACT_BTSD)
