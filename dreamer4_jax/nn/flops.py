"""Analytic parameter and FLOP counts of the transformer (for benchmarks and MFU).

A matmul [m, k] x [k, n] costs 2*m*n*k FLOPs. Attention counts the score and value matmuls
as computed by the einsum path (full [Q, M] blocks, masked entries included). A training step
counts 3x the forward matmuls (forward, and two matmuls per matmul in the backward); remat
recomputation and elementwise ops are not counted (model FLOPs, as for MFU).

Dimension keys: B batch, T frames, S tokens per frame.
"""

from __future__ import annotations

from dreamer4_jax.nn.config import TransformerConfig


def param_count(config: TransformerConfig) -> int:
    """Number of parameters of Transformer(config, layout) (independent of the layout)."""
    d, h, n, k, f = (
        config.width,
        config.num_heads,
        config.kv_heads,
        config.key_dim,
        config.mlp_dim,
    )
    attn = d * (h + 2 * n) * k + h * k * d + (2 * k if config.qk_norm else 0)
    block = attn + 3 * d * f + 2 * d
    return config.depth * block + (d if config.final_norm else 0)


def forward_flops(config: TransformerConfig, num_tokens: int, batch: int, frames: int) -> dict:
    """FLOPs of one full-sequence forward pass, split into 'matmul' and 'attention'."""
    d, h, n, k, f = (
        config.width,
        config.num_heads,
        config.kv_heads,
        config.key_dim,
        config.mlp_dim,
    )
    s, b, t = num_tokens, batch, frames
    tokens = b * t * s
    proj = 2 * tokens * (d * (h + 2 * n) * k + h * k * d + 3 * d * f)
    attention = 0
    for kind in config.layer_kinds:
        if kind == 'space':
            attention += 4 * b * t * s * s * h * k
        elif kind == 'time':
            attention += 4 * b * s * t * t * h * k
        else:
            attention += 4 * b * (t * s) ** 2 * h * k
    matmul = config.depth * proj
    return {'matmul': matmul, 'attention': attention, 'total': matmul + attention}


def train_step_flops(config: TransformerConfig, num_tokens: int, batch: int, frames: int) -> int:
    """Model FLOPs of forward + backward (3x forward)."""
    return 3 * forward_flops(config, num_tokens, batch, frames)['total']
