"""Where a tokenizer's reconstruction error sits: the mean squared error of each patch position.

A frame-wide PSNR hides a region the tokenizer has not learned. On Craftax the demo tokenizer's
24.5 dB was one number over a map it reconstructs at about 30 dB and a status row (health, food,
drink and energy digits) it drew as the same blurred glyph in every frame: 58 % of its error sat
in 4 of its 81 patches (README, "Tokenizer probes"). Tokenizer evaluation therefore writes the
per-patch error as a heat map and logs the PSNR of the worst patch position.
"""

from __future__ import annotations

import numpy as np

from dreamer4_jax.figures.output import new_figure, save_png

# Cells are labeled with their PSNR when the grid is at most this many patches on a side (the
# Craftax grids are 9 x 9; the paper's 24 x 40 would be unreadable).
_LABEL_MAX_SIDE = 16


def patch_mse(recon: np.ndarray, target: np.ndarray, patch: int, grid_hw: tuple[int, int]):
    """Mean squared error per patch position, [rows, cols], over every frame and pixel in it.

    recon, target: [..., H, W, 3] in [0, 1]; only the top-left `grid_hw` pixels (what the patch
    grid covers) count.
    """
    if recon.shape != target.shape:
        raise ValueError(f'recon {recon.shape} and target {target.shape} differ in shape')
    h, w = grid_hw
    if h % patch or w % patch:
        raise ValueError(f'grid {grid_hw} is not a whole number of {patch}-pixel patches')
    err = (np.asarray(recon, np.float64) - np.asarray(target, np.float64)) ** 2
    err = err[..., :h, :w, :].reshape(-1, h // patch, patch, w // patch, patch, 3)
    return err.mean(axis=(0, 2, 4, 5))


def psnr_of_mse(mse: np.ndarray | float) -> np.ndarray | float:
    """10 log10(1 / mse) for images in [0, 1]; infinite for a zero error."""
    with np.errstate(divide='ignore'):
        return -10.0 * np.log10(mse)


def save_patch_error_map(path: str, mse_RC: np.ndarray, title: str) -> str:
    """Heat map of per-patch PSNR (dark = large error), each cell labeled when the grid is small."""
    rows, cols = mse_RC.shape
    psnr = np.minimum(psnr_of_mse(mse_RC), 60.0)
    fig, (ax,) = new_figure(1, width=max(3.0, 0.45 * cols + 1.5), height=max(2.5, 0.45 * rows))
    image = ax.imshow(psnr, cmap='magma', interpolation='nearest')
    fig.colorbar(image, ax=ax, label='PSNR (dB) of the patch position')
    if max(rows, cols) <= _LABEL_MAX_SIDE:
        middle = (psnr.max() + psnr.min()) / 2
        for r in range(rows):
            for c in range(cols):
                color = 'black' if psnr[r, c] > middle else 'white'
                label = f'{psnr[r, c]:.0f}'
                ax.text(c, r, label, ha='center', va='center', fontsize=7, color=color)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('patch column')
    ax.set_ylabel('patch row')
    return save_png(fig, path)
