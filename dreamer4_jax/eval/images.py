"""Image outputs people look at: PNG grids and GIF/MP4 videos (written atomically)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (values outside are clipped) -> uint8."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stacks rows of frames [N, H, W, 3] into one image with `pad` white pixels between."""
    rows = [to_uint8(r) for r in rows]
    n, h, w, _ = rows[0].shape
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = row[j]
    return out


def _atomic_write(path: str, write) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_png(path: str, image: np.ndarray, scale: int = 1) -> str:
    import imageio.v3 as iio

    image = to_uint8(image)
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return _atomic_write(path, lambda p: iio.imwrite(p, image))


def save_video(path: str, frames: np.ndarray, fps: int = 8, scale: int = 1) -> str:
    """Frames [T, H, W, 3] -> GIF (or MP4 by extension), looping."""
    import imageio.v3 as iio

    frames = to_uint8(frames)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    if path.endswith('.gif'):
        return _atomic_write(path, lambda p: iio.imwrite(p, frames, duration=1000 / fps, loop=0))
    return _atomic_write(path, lambda p: iio.imwrite(p, frames, fps=fps, codec='libx264'))
