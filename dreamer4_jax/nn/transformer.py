"""The block-causal axial space/time transformer shared by tokenizer and dynamics (PAPER 3).

`Transformer(config, layout)` maps frame blocks x_BTSD to y_BTSD:
  __call__(x, independent_frames_B=None)   full sequence (training), frames at positions 0..T-1.
  step(x, cache, commit=False, ...)         T new frames after the cached context (inference);
                                            commit=True appends them to the cache.
Both use the same parameters. `independent_frames_B` (PAPER 6.5) restricts the time attention
of flagged rows to their own frame, so they are trained as separate images.

With `config.scan_layers` the repeating groups of `time_every` layers run under `jax.lax.scan`
over stacked parameters ('groups' / 'block_j', leading axis named 'layers'); the remainder
layers and the cached `step` path run layer by layer on slices of the same parameters.

Dimension keys: B batch, T frames, S tokens per frame (layout.num_tokens), D width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer4_jax.nn.block import ACT_BTSD, Block
from dreamer4_jax.nn.config import TransformerConfig
from dreamer4_jax.nn.kv_cache import KVCache
from dreamer4_jax.nn.layout import TokenLayout
from dreamer4_jax.nn.norms import RMSNorm
from dreamer4_jax.nn.partitioning import constrain
from dreamer4_jax.nn.remat import late_remat

_REMAT_POLICY = {
    'full': None,  # keep only each half-block's input
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _block_train(cfg: TransformerConfig, kind: str, layout: TokenLayout, params, x_BTSD, pos_T,
                 independent_B):  # fmt: skip
    """One block of the full-sequence pass as a pure function of its parameters, remat'd."""
    detached = Block(cfg, kind, layout, parent=None)
    if cfg.remat == 'none':
        return detached.apply({'params': params}, x_BTSD, pos_T, independent_B, None)[0]
    # Each residual half as a pure function of its own variables, so `late_remat` can tie
    # its recomputation to the backward pass (remat.py says why nn.remat is not enough).
    # Separate halves: the attention intermediates are not alive during the MLP backward.
    policy = _REMAT_POLICY[cfg.remat]

    def attention_half(p, x):
        return detached.apply(
            {'params': p}, x, pos_T, independent_B, None, method=Block.attention_half
        )[0]

    def mlp_half(p, x):
        return detached.apply({'params': p}, x, method=Block.mlp_half)

    p_attn = {k: params[k] for k in ('attn_norm', 'attn')}
    p_mlp = {k: params[k] for k in ('mlp_norm', 'mlp')}
    x_BTSD = late_remat(attention_half, policy)(p_attn, x_BTSD)
    return late_remat(mlp_half, policy)(p_mlp, x_BTSD)


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


class Transformer(nn.Module):
    """Stack of pre-norm blocks with the config's space/time layer pattern."""

    config: TransformerConfig
    layout: TokenLayout

    def setup(self):
        cfg = self.config
        groups, period = cfg.scanned_groups
        first = groups * period  # layers before this one are scanned
        self.blocks = [
            Block(cfg, kind, self.layout, name=f'block_{i}')
            for i, kind in enumerate(cfg.layer_kinds)
            if i >= first
        ]
        if groups:
            self.groups = self.param('groups', self._init_groups)
        self.out_norm = RMSNorm(cfg.norm_eps, name='out_norm') if cfg.final_norm else None

    def _init_groups(self, rng: jax.Array):
        """{'block_j': params stacked over the groups}, boxes named ('layers', ...)."""
        cfg = self.config
        groups, period = cfg.scanned_groups
        kinds = cfg.layer_kinds[:period]
        x = jnp.zeros((1, 1, self.layout.num_tokens, cfg.width), jnp.float32)
        pos = jnp.zeros((1,), jnp.int32)

        def one(key):
            keys = jax.random.split(key, period)
            return {
                f'block_{j}': Block(cfg, kind, self.layout, parent=None).init(keys[j], x, pos)[
                    'params'
                ]
                for j, kind in enumerate(kinds)
            }

        stacked = jax.vmap(one)(jax.random.split(rng, groups))
        return jax.tree.map(
            lambda b: b.replace(names=('layers', *b.names)) if _is_box(b) else b,
            stacked,
            is_leaf=_is_box,
        )

    def _layers(self):
        """Per layer, in order: (kind, bound Block or None, params slice or None)."""
        cfg = self.config
        groups, period = cfg.scanned_groups
        kinds = cfg.layer_kinds
        out = []
        for i in range(groups * period):
            g, j = divmod(i, period)
            p = jax.tree.map(lambda a, g=g: a[g], self.groups[f'block_{j}'])
            out.append((kinds[i], None, p))
        out += [(blk.kind, blk, None) for blk in self.blocks]
        return out

    def _check(self, x_BTSD, independent_B):
        s, d = self.layout.num_tokens, self.config.width
        if x_BTSD.ndim != 4 or x_BTSD.shape[2:] != (s, d):
            raise ValueError(
                f'Transformer expects x of shape [B, T, {s}, {d}] (layout tokens, '
                f'width), got {x_BTSD.shape}'
            )
        if independent_B is not None and independent_B.shape != x_BTSD.shape[:1]:
            raise ValueError(
                f'independent_frames_B must have shape [{x_BTSD.shape[0]}], got '
                f'{independent_B.shape}'
            )

    def _finish(self, x_BTSD):
        if self.out_norm is not None:
            x_BTSD = self.out_norm(x_BTSD)
        return constrain(x_BTSD, ACT_BTSD)

    def __call__(
        self, x_BTSD: jax.Array, independent_frames_B: jax.Array | None = None
    ) -> jax.Array:
        """Full-sequence forward: block-causal in time, frames at absolute positions 0..T-1."""
        self._check(x_BTSD, independent_frames_B)
        x_BTSD = constrain(x_BTSD.astype(jnp.float32), ACT_BTSD)
        pos_T = jnp.arange(x_BTSD.shape[1], dtype=jnp.int32)
        cfg = self.config
        groups, period = cfg.scanned_groups
        if groups:
            kinds = cfg.layer_kinds[:period]

            def group(x, p_group):
                for j, kind in enumerate(kinds):
                    x = _block_train(cfg, kind, self.layout, p_group[f'block_{j}'], x, pos_T,
                                     independent_frames_B)  # fmt: skip
                return x, None

            x_BTSD, _ = jax.lax.scan(group, x_BTSD, self.groups)
        for blk in self.blocks:
            x_BTSD = self._train_block(blk, x_BTSD, pos_T, independent_frames_B)
        return self._finish(x_BTSD)

    def _train_block(self, blk: Block, x_BTSD, pos_T, independent_B):
        """One unrolled block of the full-sequence pass, rematerialized per the config."""
        if self.config.remat == 'none' or self.is_initializing():
            return blk(x_BTSD, pos_T, independent_B, None)[0]
        params = blk.variables['params']
        return _block_train(blk.config, blk.kind, blk.layout, params, x_BTSD, pos_T, independent_B)

    def step(
        self,
        x_BTSD: jax.Array,
        cache: KVCache,
        commit: bool = False,
        independent_frames_B: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Process T new frames after the cached ones (PAPER 7: frame-by-frame generation).

        Denoising passes call this with commit=False (the cache is returned unchanged); the
        commit pass with commit=True appends the frames' keys/values, evicting frames that left
        the window. Returns (y_BTSD, cache).
        """
        self._check(x_BTSD, independent_frames_B)
        if cache.num_layers != len(self.config.time_layers):
            raise ValueError(
                f'cache has {cache.num_layers} layers, the config has '
                f'{len(self.config.time_layers)} time layers'
            )
        x_BTSD = constrain(x_BTSD.astype(jnp.float32), ACT_BTSD)
        pos_T = cache.next_frame + jnp.arange(x_BTSD.shape[1], dtype=jnp.int32)
        new_kv = []
        for kind, blk, params in self._layers():
            layer_cache = None if kind == 'space' else cache.layer(len(new_kv))
            if blk is None:  # a scanned layer: its slice of the stacked parameters
                blk_fn = Block(self.config, kind, self.layout, parent=None)
                x_BTSD, kv = blk_fn.apply(
                    {'params': params}, x_BTSD, pos_T, independent_frames_B, layer_cache
                )
            else:
                x_BTSD, kv = blk(x_BTSD, pos_T, independent_frames_B, layer_cache)
            if kind != 'space':
                new_kv.append(kv)
        if commit:
            cache = cache.append(new_kv, pos_T)
        return self._finish(x_BTSD), cache
