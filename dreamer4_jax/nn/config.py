"""The one documented place for the transformer's options (PAPER 3; DESIGN 5).

Everything the axial space/time transformer can do is switched here; model code reads this
dataclass and nothing else. It is frozen and hashable so it can be a Flax module attribute.

Layer pattern: a string over {'s', 't'} with one letter per layer ('s' = space layer, attends
within one frame; 't' = time layer, attends across frames). When `pattern` is None it is built
from `time_every`: groups of `time_every` layers whose LAST layer is the time layer (PAPER 3.1:
"three out of every four layers are only spatial"; the paper does not say where in the group the
time layer sits, PAPER 3.2; putting it last means the first group already has space context
before mixing time). `time_every=0` gives a space-only stack.
"""

from __future__ import annotations

import dataclasses

REMAT_POLICIES = ('none', 'full', 'dots')
ATTENTION_IMPLS = ('einsum', 'dpa_xla', 'dpa_cudnn', 'splash', 'splash_interpret')
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Options of the block-causal axial transformer.

    Attributes:
      width: model width D.
      depth: number of blocks.
      num_heads: query heads H.
      num_kv_heads: key/value heads (GQA, PAPER 3.1); must divide num_heads. None = num_heads.
      head_dim: per-head width K. None = width // num_heads.
      mlp_ratio: SwiGLU hidden size F = round(mlp_ratio * width) (ignored if mlp_hidden is set).
      mlp_hidden: explicit SwiGLU hidden size F.
      time_every: period of time layers (the last layer of every group); 0 = no time layers.
      pattern: explicit layer pattern over {'s', 't'} of length depth; overrides time_every.
      time_window: C, the sliding window of time attention in frames (the query frame included);
        None = unlimited (PAPER 3.1, 6.5: C = 192 for Minecraft).
      dense: ablation of PAPER 12.3 Table 2: every 't' layer becomes dense block-causal
        space-time attention (all allowed tokens of the current and earlier frames, same window
        C, modality rules applied across frames). With pattern 't' * depth this is the paper's
        dense baseline.
      softcap: attention logit soft-cap c, logits -> c * tanh(logits / c); None = off
        (PAPER 3.2 suggests the Gemma-2 value 50).
      qk_norm: RMSNorm on per-head queries and keys before the dot product (PAPER 3.2).
      qk_norm_scale: initial value of the learned q and k norm scales. A head's logits are at
        most sqrt(head dim) x q scale x k scale, so with small heads an initial 1 keeps attention
        flat early in training; the paper does not give it [U].
      rope_base: RoPE wavelength base, for both the frame axis and the token axis.
      norm_eps: epsilon of every RMSNorm.
      dtype: compute dtype of matmuls ('float32' or 'bfloat16'); parameters, norms, softmax and
        the residual stream stay float32. On CPU float32 is fastest.
      remat: rematerialization in training: 'full' (default; each residual half, attention and
        MLP, keeps only its input and is recomputed in the backward pass: ~7x less activation
        memory and, measured on CPU, about the same step time, as less memory traffic offsets
        the recompute), 'dots' (keep projection matmul outputs, recompute the rest), 'none'.
      attention_impl: 'einsum' (plain XLA einsums; supports every feature), 'dpa_xla' or
        'dpa_cudnn' (`jax.nn.dot_product_attention` with that implementation; no soft-cap;
        cuDNN needs a GPU and bfloat16), 'splash' (the Pallas splash kernel for TPU, with
        soft-cap; cached inference keeps the einsum path) or 'splash_interpret' (the same
        kernel in Pallas interpret mode, for CPU).
      final_norm: apply an RMSNorm to the stack's output.
      scan_layers: run the repeating groups of `time_every` layers (three space layers and a
        time layer) with `jax.lax.scan` over parameters stacked along a leading 'layers' axis;
        a remainder of depth % time_every layers stays unrolled. Same function; the compiled
        program holds each group once instead of depth / time_every times (compile time and
        host memory of paper-scale steps). Parameters then live under 'groups'/'block_j'
        (stacked) instead of 'block_i', so checkpoints of one layout do not load into the
        other.
    """

    width: int = 256
    depth: int = 8
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    time_every: int = 4
    pattern: str | None = None
    time_window: int | None = None
    dense: bool = False
    softcap: float | None = 50.0
    qk_norm: bool = True
    qk_norm_scale: float = 1.0
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    dtype: str = 'float32'
    remat: str = 'full'
    attention_impl: str = 'einsum'
    final_norm: bool = True
    scan_layers: bool = False

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f'TransformerConfig: {msg}')

        for name in ('width', 'depth', 'num_heads'):
            if getattr(self, name) < 1:
                bad(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.num_heads % self.kv_heads:
            bad(f'num_kv_heads={self.kv_heads} must divide num_heads={self.num_heads}')
        if self.head_dim is None and self.width % self.num_heads:
            bad(f'width={self.width} is not divisible by num_heads={self.num_heads}; set head_dim')
        if self.key_dim % 2:
            bad(f'head_dim must be even for RoPE, got {self.key_dim}')
        if not self.qk_norm_scale > 0:
            bad(f'qk_norm_scale must be > 0, got {self.qk_norm_scale}')
        if self.dense and self.key_dim % 4:
            bad(
                f'dense attention splits RoPE over (frame, token): head_dim % 4 == 0 needed, '
                f'got {self.key_dim}'
            )
        if self.pattern is not None:
            if len(self.pattern) != self.depth or set(self.pattern) - {'s', 't'}:
                bad(
                    f"pattern must have depth={self.depth} letters from 's'/'t', got "
                    f'{self.pattern!r}'
                )
        elif self.time_every < 0:
            bad(f'time_every must be >= 0, got {self.time_every}')
        if self.time_window is not None and self.time_window < 1:
            bad(f'time_window must be >= 1 frame or None, got {self.time_window}')
        if self.softcap is not None and self.softcap <= 0:
            bad(f'softcap must be > 0 or None, got {self.softcap}')
        if self.dtype not in DTYPES:
            bad(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
        if self.remat not in REMAT_POLICIES:
            bad(f'remat must be one of {REMAT_POLICIES}, got {self.remat!r}')
        if self.attention_impl not in ATTENTION_IMPLS:
            bad(f'attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}')
        if self.attention_impl.startswith('dpa') and self.softcap is not None:
            bad(
                f'attention_impl={self.attention_impl!r} has no logit soft-cap: set softcap=None '
                "or use attention_impl='einsum'"
            )
        if self.mlp_dim < 1:
            bad(f'MLP hidden size must be >= 1, got {self.mlp_dim}')
        if self.scan_layers and (self.pattern is not None or self.time_every < 1):
            bad('scan_layers needs the periodic layout of time_every >= 1 (no explicit pattern)')

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def key_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.width // self.num_heads

    @property
    def mlp_dim(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return int(round(self.mlp_ratio * self.width))

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Per layer: 'space', 'time' (axial) or 'dense' (block-causal space-time)."""
        if self.pattern is not None:
            letters = self.pattern
        elif self.time_every == 0:
            letters = 's' * self.depth
        else:
            letters = ''.join(
                't' if (i + 1) % self.time_every == 0 else 's' for i in range(self.depth)
            )
        cross = 'dense' if self.dense else 'time'
        return tuple(cross if c == 't' else 'space' for c in letters)

    @property
    def scanned_groups(self) -> tuple[int, int]:
        """(number of scanned groups, layers per group); (0, 0) without scan_layers."""
        if not self.scan_layers:
            return 0, 0
        return self.depth // self.time_every, self.time_every

    @property
    def time_layers(self) -> tuple[int, ...]:
        """Indices of the layers that read other frames (and own a KV cache)."""
        return tuple(i for i, k in enumerate(self.layer_kinds) if k != 'space')
