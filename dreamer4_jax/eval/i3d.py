"""Inflated Inception-V1 (I3D, Carreira & Zisserman 2017) in Flax, and its .npz checkpoint format.

FVD (Unterthiner et al. 2018) embeds each clip with the Kinetics-400 I3D and compares the
Gaussians of the 400 logits (before the softmax). This is the RGB stream of DeepMind's
kinetics-i3d `InceptionI3d` layer for layer: every convolution is a `Unit3D` (3-D conv, SAME
padding, no bias, batch norm with offset but no scale and eps 1e-3, ReLU), the same max pools, the
same nine Inception blocks, and the `Logits` head (average pool, 1x1x1 conv with bias, spatial
squeeze, mean over time). Module names equal the TensorFlow variable scopes, so a converted
checkpoint maps onto the parameters by name (see `load_i3d_params`).

Dimension keys: N clips, T frames, H height, W width, C channels, K classes.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax.errors import UserError

NUM_CLASSES = 400  # Kinetics-400: the FVD embedding size.

# Inception blocks: (branch 0 1x1, branch 1 1x1 -> 3x3, branch 2 1x1 -> 3x3, branch 3 pool -> 1x1)
# output channels, Szegedy et al. 2015 Table 1 as inflated by Carreira & Zisserman 2017 Fig. 3.
_MIXED = {
    'Mixed_3b': (64, 96, 128, 16, 32, 32),
    'Mixed_3c': (128, 128, 192, 32, 96, 64),
    'Mixed_4b': (192, 96, 208, 16, 48, 64),
    'Mixed_4c': (160, 112, 224, 24, 64, 64),
    'Mixed_4d': (128, 128, 256, 24, 64, 64),
    'Mixed_4e': (112, 144, 288, 32, 64, 64),
    'Mixed_4f': (256, 160, 320, 32, 128, 128),
    'Mixed_5b': (256, 160, 320, 32, 128, 128),
    'Mixed_5c': (384, 192, 384, 48, 128, 128),
}


class I3DCheckpointError(UserError, ValueError):
    """An I3D checkpoint that is missing, not a .npz archive, or lacks or mis-shapes a weight."""


class Unit3D(nn.Module):
    """3-D conv (SAME) -> batch norm (offset only, running stats) -> ReLU, as kinetics-i3d."""

    features: int
    kernel: tuple[int, int, int] = (1, 1, 1)
    strides: tuple[int, int, int] = (1, 1, 1)
    use_batch_norm: bool = True
    use_bias: bool = False
    relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            self.kernel,
            self.strides,
            padding='SAME',
            use_bias=self.use_bias,
            name='conv_3d',
        )(x)
        if self.use_batch_norm:
            # Sonnet's BatchNorm default: learned offset, no scale, eps 1e-3; FVD uses the
            # moving averages (inference mode).
            x = nn.BatchNorm(
                use_running_average=True, use_scale=False, epsilon=1e-3, name='batch_norm'
            )(x)
        return nn.relu(x) if self.relu else x


class _Branch(nn.Module):
    """One Inception branch: an optional 3x3x3 stride-1 max pool, then named Unit3Ds."""

    units: Sequence[tuple[str, int, int]]  # (scope name, output channels, cubic kernel size)
    pool_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool_first:
            x = nn.max_pool(x, (3, 3, 3), (1, 1, 1), padding='SAME')
        for unit_name, features, k in self.units:
            x = Unit3D(features, (k, k, k), name=unit_name)(x)
        return x


class _Mixed(nn.Module):
    """Inception block: four branches concatenated along channels."""

    channels: tuple[int, int, int, int, int, int]
    # kinetics-i3d names Mixed_5b's branch-2 3x3 conv 'Conv3d_0a_3x3' (a typo the weights keep).
    branch2_name: str = 'Conv3d_0b_3x3'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c0, c1a, c1b, c2a, c2b, c3 = self.channels
        outs = [
            _Branch((('Conv3d_0a_1x1', c0, 1),), name='Branch_0')(x),
            _Branch((('Conv3d_0a_1x1', c1a, 1), ('Conv3d_0b_3x3', c1b, 3)), name='Branch_1')(x),
            _Branch((('Conv3d_0a_1x1', c2a, 1), (self.branch2_name, c2b, 3)), name='Branch_2')(x),
            _Branch((('Conv3d_0b_1x1', c3, 1),), pool_first=True, name='Branch_3')(x),
        ]
        return jnp.concatenate(outs, axis=-1)


class _Logits(nn.Module):
    """Average pool [2, 7, 7] (VALID), then a 1x1x1 conv with bias to K logits, no norm/ReLU."""

    num_classes: int

    @nn.compact
    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        # The window is clipped to the feature map so clips shorter than 9 frames or frames
        # smaller than 224 px still run; at 224 px and >= 9 frames it is exactly [2, 7, 7].
        _, t, h, w, _ = x_NTHWC.shape
        window = (min(2, t), min(7, h), min(7, w))
        x = nn.avg_pool(x_NTHWC, window, (1, 1, 1), padding='VALID')
        return Unit3D(
            self.num_classes,
            use_batch_norm=False,
            use_bias=True,
            relu=False,
            name='Conv3d_0c_1x1',
        )(x)


class InceptionI3d(nn.Module):
    """RGB I3D: [N, T, H, W, 3] in [-1, 1] -> logits [N, K] (averaged over time)."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        if x_NTHWC.ndim != 5 or x_NTHWC.shape[-1] != 3:
            raise ValueError(f'I3D needs [N, T, H, W, 3] clips, got {x_NTHWC.shape}.')
        x = Unit3D(64, (7, 7, 7), (2, 2, 2), name='Conv3d_1a_7x7')(x_NTHWC)
        x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding='SAME')  # MaxPool3d_2a_3x3
        x = Unit3D(64, name='Conv3d_2b_1x1')(x)
        x = Unit3D(192, (3, 3, 3), name='Conv3d_2c_3x3')(x)
        x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding='SAME')  # MaxPool3d_3a_3x3
        x = _Mixed(_MIXED['Mixed_3b'], name='Mixed_3b')(x)
        x = _Mixed(_MIXED['Mixed_3c'], name='Mixed_3c')(x)
        x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding='SAME')  # MaxPool3d_4a_3x3
        for block in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
            x = _Mixed(_MIXED[block], name=block)(x)
        x = nn.max_pool(x, (2, 2, 2), (2, 2, 2), padding='SAME')  # MaxPool3d_5a_2x2
        x = _Mixed(_MIXED['Mixed_5b'], branch2_name='Conv3d_0a_3x3', name='Mixed_5b')(x)
        x = _Mixed(_MIXED['Mixed_5c'], name='Mixed_5c')(x)
        logits_NTHWK = _Logits(self.num_classes, name='Logits')(x)
        # Spatial squeeze (1x1 at 224 px; a mean where a larger frame leaves more), then the
        # mean over time, as kinetics-i3d's `averaged_logits`.
        return jnp.mean(logits_NTHWK, axis=(1, 2, 3))


def variable_shapes(num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """ShapeDtypeStructs of {'params', 'batch_stats'} (traced only; clip size does not matter)."""
    clip = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.float32)
    return dict(jax.eval_shape(InceptionI3d(num_classes).init, jax.random.key(0), clip))


def init_i3d_params(seed: int = 0, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Random I3D variables for tests and shape checks: LeCun-normal kernels (Flax's default),
    zero biases and offsets, batch-norm statistics mean 0 / variance 1.

    Drawn with NumPy from the traced shapes: jitting `InceptionI3d.init` compiles for ~40 s on CPU.
    """
    rng = np.random.default_rng(seed)

    def draw(keypath, spec):
        name = str(keypath[-1].key)
        if name == 'kernel':
            fan_in = int(np.prod(spec.shape[:-1]))
            return jnp.asarray(rng.standard_normal(spec.shape) / np.sqrt(fan_in), jnp.float32)
        return jnp.full(spec.shape, 1.0 if name == 'var' else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, variable_shapes(num_classes))


# ---------------------------------------------------------------------------------------------
# Checkpoint format: a .npz whose keys are kinetics-i3d's TensorFlow variable names
# ---------------------------------------------------------------------------------------------

# (collection, Flax leaf module, Flax leaf name) <-> TensorFlow leaf scope/name.
_LEAF_NAMES = {
    ('params', 'conv_3d', 'kernel'): 'conv_3d/w',
    ('params', 'conv_3d', 'bias'): 'conv_3d/b',
    ('params', 'batch_norm', 'bias'): 'batch_norm/beta',
    ('batch_stats', 'batch_norm', 'mean'): 'batch_norm/moving_mean',
    ('batch_stats', 'batch_norm', 'var'): 'batch_norm/moving_variance',
}
_TF_SCOPE = 'inception_i3d/'


def _checkpoint_key(path: tuple[str, ...]) -> str:
    """('params', 'Mixed_3b', 'Branch_1', 'Conv3d_0b_3x3', 'conv_3d', 'kernel') ->
    'Mixed_3b/Branch_1/Conv3d_0b_3x3/conv_3d/w'."""
    collection, *scopes, module, leaf = path
    return '/'.join([*scopes, _LEAF_NAMES[(collection, module, leaf)]])


def _flat_variables(variables: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for keypath, value in jax.tree_util.tree_leaves_with_path(variables):
        path = tuple(str(k.key) for k in keypath)
        flat[_checkpoint_key(path)] = (keypath, value)
    return flat


def expected_checkpoint_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """Every key an I3D checkpoint must hold, with its shape (kernels are [t, h, w, in, out])."""
    return {
        key: tuple(v.shape) for key, (_, v) in _flat_variables(variable_shapes(num_classes)).items()
    }


def save_i3d_params(variables: dict[str, Any], path: str) -> None:
    """Writes `variables` ({'params', 'batch_stats'}) as the .npz that `load_i3d_params` reads."""
    arrays = {key: np.asarray(v) for key, (_, v) in _flat_variables(variables).items()}
    with open(path, 'wb') as f:  # np.savez on a path would append '.npz' to other suffixes.
        np.savez(f, **arrays)


def _normalize_key(key: str) -> str:
    """Drops a TensorFlow scope prefix ('RGB/inception_i3d/') and a ':0' tensor suffix."""
    if _TF_SCOPE in key:
        key = key.split(_TF_SCOPE, 1)[1]
    return key[:-2] if key.endswith(':0') else key


def load_i3d_params(path: str, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Reads an I3D checkpoint: a .npz of float arrays keyed by kinetics-i3d variable names.

    Keys are the TensorFlow names below the `inception_i3d/` scope, e.g.
    'Conv3d_1a_7x7/conv_3d/w' [7, 7, 7, 3, 64], 'Mixed_3b/Branch_0/Conv3d_0a_1x1/batch_norm/beta',
    '.../batch_norm/moving_mean', '.../batch_norm/moving_variance', 'Logits/Conv3d_0c_1x1/conv_3d/b'
    (`expected_checkpoint_shapes` lists all 230). A prefix up to 'inception_i3d/' (such as 'RGB/')
    and a ':0' suffix are ignored, so the RGB variables of DeepMind's checkpoint saved with
    `np.savez` load as they are; size-1 axes may differ (Sonnet stores batch-norm statistics as
    [1, 1, 1, 1, C]); other keys are ignored. Returns {'params', 'batch_stats'} for `InceptionI3d`.
    Raises I3DCheckpointError (one line) for a missing file, a non-.npz file, or a missing or
    mis-shaped weight.
    """
    if not os.path.isfile(path):
        raise I3DCheckpointError(f'I3D checkpoint {path} does not exist.')
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {_normalize_key(k): npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise I3DCheckpointError(
            f'I3D checkpoint {path} is not a .npz archive of arrays ({type(e).__name__}); '
            'see load_i3d_params for the format.'
        ) from e
    template = variable_shapes(num_classes)
    flat = _flat_variables(template)
    missing = sorted(set(flat) - set(arrays))
    if missing:
        raise I3DCheckpointError(
            f'I3D checkpoint {path} lacks {len(missing)} of {len(flat)} weights, e.g. '
            f'{", ".join(missing[:3])}; see load_i3d_params for the key names.'
        )
    leaves = {}
    for key, (keypath, spec) in flat.items():
        value = arrays[key]
        squeezed = tuple(d for d in value.shape if d != 1)
        if squeezed != tuple(d for d in spec.shape if d != 1):
            raise I3DCheckpointError(
                f'I3D checkpoint {path}: {key} has shape {value.shape}, expected {spec.shape}.'
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise I3DCheckpointError(
                f'I3D checkpoint {path}: {key} has dtype {value.dtype}, expected floats.'
            )
        leaves[jax.tree_util.keystr(keypath)] = jnp.asarray(value.reshape(spec.shape), jnp.float32)
    return jax.tree_util.tree_map_with_path(
        lambda keypath, _: leaves[jax.tree_util.keystr(keypath)], template
    )
