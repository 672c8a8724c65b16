"""Transformer building blocks shared by the tokenizer and the dynamics model (PAPER 3).

Public surface: `TransformerConfig`, `Transformer`, token layouts (`TokenLayout`,
`encoder_layout`, `decoder_layout`, `dynamics_layout`), the KV cache (`KVCache`, `init_cache`),
the attention interface `attend`, the logical-axis helpers `constrain` / `fitted_spec`, and
FLOP counting (`forward_flops`, `train_step_flops`, `param_count`).
"""

from dreamer4_jax.nn.attention import attend, softcap_logits
from dreamer4_jax.nn.block import Attention, Block
from dreamer4_jax.nn.config import TransformerConfig
from dreamer4_jax.nn.flops import forward_flops, param_count, train_step_flops
from dreamer4_jax.nn.kv_cache import KVCache, cache_capacity, init_cache
from dreamer4_jax.nn.layout import (
    TokenLayout,
    decoder_layout,
    dense_mask,
    dynamics_layout,
    encoder_layout,
    frame_mask,
)
from dreamer4_jax.nn.mlp import SwiGLU, swiglu
from dreamer4_jax.nn.norms import RMSNorm, rms_norm
from dreamer4_jax.nn.partitioning import constrain, fitted_spec, param_init
from dreamer4_jax.nn.rope import apply_rope, rope_angles
from dreamer4_jax.nn.transformer import Transformer

__all__ = [
    'Attention',
    'Block',
    'KVCache',
    'RMSNorm',
    'SwiGLU',
    'TokenLayout',
    'Transformer',
    'TransformerConfig',
    'apply_rope',
    'attend',
    'cache_capacity',
    'constrain',
    'decoder_layout',
    'dense_mask',
    'dynamics_layout',
    'encoder_layout',
    'fitted_spec',
    'forward_flops',
    'frame_mask',
    'init_cache',
    'param_count',
    'param_init',
    'rms_norm',
    'rope_angles',
    'softcap_logits',
    'swiglu',
    'train_step_flops',
]
