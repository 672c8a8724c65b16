"""Causal video tokenizer (PAPER 4): masked autoencoding through a tanh bottleneck.

Encoder frame block: P patch tokens (a learned mask embedding replaces each patch with
probability p ~ U(0, 0.9) per image) followed by N learned latent tokens; latents read
everything in the frame, patches read patches; causal in time. The latent outputs are projected
to C bottleneck channels and squashed by tanh: z_BTNC in [-1, 1].
Decoder frame block: the N latents (projected up) followed by P learned read-out tokens;
read-outs read read-outs and latents, latents read latents; causal in time. Pixels come out of
the read-out tokens through a linear head and are unpatchified.

Dimension keys: B batch, T frames, H, W image height/width, P patches per frame, Q pixels per
patch (patch*patch*3), N latent tokens, C bottleneck channels, D encoder width, E decoder width.
Images are float in [0, 1], channels last.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax.nn import (
    KVCache,
    Transformer,
    TransformerConfig,
    constrain,
    decoder_layout,
    encoder_layout,
    init_cache,
    param_init,
)

ACT = ('batch', 'time', 'tokens', 'act_embed')


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Shapes of the tokenizer. Frames are zero-padded to (height, width) before patchifying.

    The patch grid covers the top-left content_height x content_width pixels (0: the whole
    frame); the rest of the frame is zero padding that the encoder never reads and the decoder
    returns as zeros. Craftax frames are a 9 x 9 grid of 7-pixel tiles (63 x 63, stored padded to
    64 x 64): with content 63 x 63 and 7-pixel patches every patch is exactly one tile.
    """

    height: int = 64
    width: int = 64
    patch: int = 8
    content_height: int = 0  # 0: the whole frame height
    content_width: int = 0  # 0: the whole frame width
    # Absolute 2D positions of the encoder's patch tokens: 'sincos' (fixed, as in MAE) or 'none'
    # (space layers then know positions only through 1D RoPE over the token index).
    patch_positions: str = 'none'
    num_latents: int = 16  # N_b (PAPER 4.2: 512 for Minecraft)
    latent_dim: int = 16  # D_b (PAPER 4.2: 16)
    max_mask_prob: float = 0.9  # PAPER 4.3: p ~ U(0, 0.9)
    encoder: TransformerConfig = TransformerConfig()
    decoder: TransformerConfig = TransformerConfig()

    def __post_init__(self):
        if self.patch_positions not in ('none', 'sincos'):
            raise ValueError(
                f"TokenizerConfig: patch_positions={self.patch_positions!r} must be 'none' or "
                "'sincos'"
            )
        h, w = self.grid_hw
        if not (0 < h <= self.height and 0 < w <= self.width):
            raise ValueError(
                f'TokenizerConfig: content {h}x{w} must be positive and fit the frame '
                f'{self.height}x{self.width}'
            )
        if h % self.patch or w % self.patch:
            raise ValueError(
                f'TokenizerConfig: content {h}x{w} is not a multiple of the patch size '
                f'{self.patch}; pad the frames, set content_height/content_width to the part '
                'the patches cover, or pick another patch size.'
            )

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Pixels the patch grid covers (top-left of the frame)."""
        return (self.content_height or self.height, self.content_width or self.width)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_hw
        return (h // self.patch) * (w // self.patch)

    @property
    def patch_pixels(self) -> int:
        return self.patch * self.patch * 3


def sincos_positions_2d(rows: int, cols: int, dim: int) -> np.ndarray:
    """[rows*cols, dim] fixed 2D sine-cosine embedding (row-major, like `patchify`).

    Half the channels encode the row, half the column, each as sin and cos of the index times
    frequencies 10000^(-k / (dim/4)) (the MAE encoder's patch positions).
    """
    if dim % 4:
        raise ValueError(f'sincos positions need a width divisible by 4, got {dim}')
    freq = 1.0 / 10000.0 ** (np.arange(dim // 4) / (dim // 4))
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
    parts = [f(a.reshape(-1, 1) * freq) for a in (r, c) for f in (np.sin, np.cos)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def patchify(images_BTHWC: jax.Array, patch: int) -> jax.Array:
    """[B,T,H,W,3] -> [B,T,P,Q], patches in row-major order, pixels (dy, dx, rgb) inside."""
    b, t, h, w, c = images_BTHWC.shape
    x = images_BTHWC.reshape(b, t, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches_BTPQ: jax.Array, patch: int, height: int, width: int) -> jax.Array:
    """Inverse of patchify: [B,T,P,Q] -> [B,T,H,W,3]."""
    b, t, _, _ = patches_BTPQ.shape
    gh, gw = height // patch, width // patch
    x = patches_BTPQ.reshape(b, t, gh, gw, patch, patch, 3)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, height, width, 3)


def _frame_cache(part: TransformerConfig, tokens: int, batch: int, max_frames: int) -> KVCache:
    """C - 1 past frames for a time window C; without one, `max_frames` - 1 (the frames of time
    context the tokenizer should see, e.g. its training window length)."""
    window = part.time_window
    return init_cache(part, tokens, batch, None if window is not None else max(max_frames - 1, 0))


def new_encoder_cache(config: TokenizerConfig, batch: int, max_frames: int) -> KVCache:
    """Empty KV cache of the encoder for `Tokenizer.encode_step`."""
    tokens = config.num_patches + config.num_latents
    return _frame_cache(config.encoder, tokens, batch, max_frames)


def new_decoder_cache(config: TokenizerConfig, batch: int, max_frames: int) -> KVCache:
    """Empty KV cache of the decoder for `Tokenizer.decode_step`."""
    tokens = config.num_latents + config.num_patches
    return _frame_cache(config.decoder, tokens, batch, max_frames)


def sample_patch_mask(
    rng: jax.Array, shape_BT: tuple[int, int], num_patches: int, max_prob: float
) -> jax.Array:
    """[B,T,P] bool, True = replaced by the mask embedding (PAPER 4.3: p ~ U(0, max) per image)."""
    rng_p, rng_m = jax.random.split(rng)
    p_BT = jax.random.uniform(rng_p, shape_BT, maxval=max_prob)
    return jax.random.uniform(rng_m, (*shape_BT, num_patches)) < p_BT[..., None]


class Tokenizer(nn.Module):
    """Encoder + decoder; `encode`, `decode` and `__call__` (both) share one parameter tree."""

    config: TokenizerConfig

    def setup(self):
        c = self.config
        d, e = c.encoder.width, c.decoder.width
        emb_init = nn.initializers.normal(0.02)
        self.patch_in = nn.Dense(
            d,
            kernel_init=param_init(nn.initializers.lecun_normal(), ('io', 'embed')),
            name='patch_in',
        )
        self.mask_embed = self.param('mask_embed', param_init(emb_init, ('embed',)), (d,))
        self.latent_tokens = self.param(
            'latent_tokens', param_init(emb_init, (None, 'embed')), (c.num_latents, d)
        )
        self.encoder = Transformer(
            c.encoder, encoder_layout(c.num_patches, c.num_latents), name='encoder'
        )
        self.bottleneck = nn.Dense(
            c.latent_dim,
            kernel_init=param_init(nn.initializers.lecun_normal(), ('embed', 'io')),
            name='bottleneck',
        )
        self.latent_in = nn.Dense(
            e,
            kernel_init=param_init(nn.initializers.lecun_normal(), ('io', 'embed')),
            name='latent_in',
        )
        self.readout_tokens = self.param(
            'readout_tokens', param_init(emb_init, (None, 'embed')), (c.num_patches, e)
        )
        self.decoder = Transformer(
            c.decoder, decoder_layout(c.num_patches, c.num_latents), name='decoder'
        )
        self.pixels_out = nn.Dense(
            c.patch_pixels,
            kernel_init=param_init(nn.initializers.lecun_normal(), ('embed', 'io')),
            name='pixels_out',
        )

    def _encoder_tokens(self, images_BTHWC: jax.Array, mask_BTP: jax.Array | None) -> jax.Array:
        """Frame blocks of the encoder: P patch tokens (masked ones replaced), then N latents."""
        c = self.config
        if images_BTHWC.shape[2:] != (c.height, c.width, 3):
            raise ValueError(
                f'Tokenizer expects frames [B, T, {c.height}, {c.width}, 3], got '
                f'{images_BTHWC.shape}'
            )
        h, w = c.grid_hw
        x_BTHWC = images_BTHWC[:, :, :h, :w].astype(jnp.float32)
        x_BTPQ = patchify(x_BTHWC * 2.0 - 1.0, c.patch)
        x_BTPD = self.patch_in(x_BTPQ)
        if c.patch_positions == 'sincos':
            h_grid, w_grid = h // c.patch, w // c.patch
            x_BTPD = x_BTPD + sincos_positions_2d(h_grid, w_grid, x_BTPD.shape[-1])
        if mask_BTP is not None:
            x_BTPD = jnp.where(mask_BTP[..., None], self.mask_embed, x_BTPD)
        b, t = x_BTPD.shape[:2]
        lat_BTND = jnp.broadcast_to(self.latent_tokens, (b, t, *self.latent_tokens.shape))
        return constrain(jnp.concatenate([x_BTPD, lat_BTND], axis=2), ACT)

    def _bottleneck(self, h_BTSD: jax.Array) -> jax.Array:
        """Latent-token outputs -> z in [-1, 1] (PAPER 4.2: linear projection + tanh)."""
        return jnp.tanh(self.bottleneck(h_BTSD[:, :, self.config.num_patches :]))

    def encode(self, images_BTHWC: jax.Array, mask_BTP: jax.Array | None = None) -> jax.Array:
        """Images in [0, 1] -> latents z_BTNC in [-1, 1]. mask_BTP: patches to hide (training)."""
        return self._bottleneck(self.encoder(self._encoder_tokens(images_BTHWC, mask_BTP)))

    def encode_step(self, images_BTHWC: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """`encode` of T new frames after the frames held in the encoder's KV cache.

        Mirrors `Dynamics.step(commit=True)`: reads the cache, appends these frames and returns
        (z_BTNC, cache). Frame by frame it equals the last frames of `encode` over the whole
        sequence (tested), at a cost per frame that does not grow with the episode.
        """
        h_BTSD, cache = self.encoder.step(
            self._encoder_tokens(images_BTHWC, None), cache, commit=True
        )
        return self._bottleneck(h_BTSD), cache

    def _decoder_tokens(self, z_BTNC: jax.Array) -> jax.Array:
        """Frame blocks of the decoder: N latents (projected up), then P read-out tokens."""
        lat_BTNE = self.latent_in(z_BTNC)
        b, t = lat_BTNE.shape[:2]
        read_BTPE = jnp.broadcast_to(self.readout_tokens, (b, t, *self.readout_tokens.shape))
        return constrain(jnp.concatenate([lat_BTNE, read_BTPE], axis=2), ACT)

    def _pixels(self, h_BTSE: jax.Array) -> jax.Array:
        c = self.config
        pix_BTPQ = self.pixels_out(h_BTSE[:, :, c.num_latents :])
        h, w = c.grid_hw
        x_BTHWC = (unpatchify(pix_BTPQ, c.patch, h, w) + 1.0) * 0.5
        pad = ((0, 0), (0, 0), (0, c.height - h), (0, c.width - w), (0, 0))
        return jnp.pad(x_BTHWC, pad) if (h, w) != (c.height, c.width) else x_BTHWC

    def decode(self, z_BTNC: jax.Array) -> jax.Array:
        """Latents -> images [B,T,H,W,3] (unclipped; in [0, 1] after training)."""
        return self._pixels(self.decoder(self._decoder_tokens(z_BTNC)))

    def decode_step(self, z_BTNC: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """`decode` of T new frames after the frames held in the decoder's KV cache.

        The decoder is causal in time (read-outs of frame t read latents of frames <= t), so a
        generated frame is decoded after the frames before it; frame by frame this equals the
        last frames of `decode` over the whole sequence (tested).
        """
        h_BTSE, cache = self.decoder.step(self._decoder_tokens(z_BTNC), cache, commit=True)
        return self._pixels(h_BTSE), cache

    def __call__(self, images_BTHWC: jax.Array, mask_BTP: jax.Array | None = None):
        """Returns (reconstruction_BTHWC, z_BTNC)."""
        z_BTNC = self.encode(images_BTHWC, mask_BTP)
        return self.decode(z_BTNC), z_BTNC
