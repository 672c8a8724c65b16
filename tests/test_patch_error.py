"""Per-patch reconstruction error (eval/patch_error.py), the report's images and its tables."""

import os

import numpy as np
import pytest
from PIL import Image

from dreamer4_jax.eval import patch_error
from dreamer4_jax.eval.report import evaluation_tables, latest_of_each_kind


def test_patch_mse_puts_the_error_in_its_patch_and_ignores_the_padding():
    target = np.zeros((2, 3, 16, 16, 3))  # [B, T, H, W, 3]: 6 frames; grid 14 x 14 of 7-px patches
    recon = target.copy()
    recon[0, 1, 7:14, 0:7] = 0.5  # one frame's patch (1, 0): squared error 0.25 on every pixel
    recon[1, 2, 14:, :] = 1.0  # the padding row outside the grid does not count
    recon[1, 2, :, 14:] = 1.0  # nor the padding column
    got = patch_error.patch_mse(recon, target, 7, (14, 14))
    np.testing.assert_allclose(got, [[0.0, 0.0], [0.25 / 6, 0.0]])


def test_patch_mse_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match='differ in shape'):
        patch_error.patch_mse(np.zeros((1, 8, 8, 3)), np.zeros((2, 8, 8, 3)), 4, (8, 8))
    with pytest.raises(ValueError, match='whole number of 3-pixel patches'):
        patch_error.patch_mse(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)), 3, (8, 8))


def test_psnr_of_mse():
    np.testing.assert_allclose(patch_error.psnr_of_mse(np.array([0.01, 1e-3, 1.0])), [20, 30, 0])
    assert patch_error.psnr_of_mse(0.0) == np.inf


def test_error_map_is_a_png(tmp_path):
    mse = np.full((3, 4), 1e-3)
    mse[2, 1] = 0.0  # a perfect patch is capped, not infinite
    path = patch_error.save_patch_error_map(str(tmp_path / 'eval' / 'map.png'), mse, 'title')
    with Image.open(path) as image:
        assert image.format == 'PNG' and min(image.size) > 100
    assert os.listdir(tmp_path / 'eval') == ['map.png']  # no temporary file left behind


def test_report_shows_the_newest_image_of_each_kind(tmp_path):
    for name in (
        'reconstructions_000400.png',
        'reconstructions_000800.png',
        'patch_error_000400.png',
        'patch_error_000800.png',
        'open_loop_000100.png',
    ):
        (tmp_path / name).write_bytes(b'')
    got = [os.path.basename(p) for p in latest_of_each_kind(str(tmp_path / '*.png'))]
    assert got == ['open_loop_000100.png', 'patch_error_000800.png', 'reconstructions_000800.png']
    assert latest_of_each_kind(str(tmp_path / 'missing' / '*.png')) == []


def test_report_reads_per_horizon_metrics_side_by_side():
    evaluation = {
        'step': 400,
        'eval/psnr_h01': 19.5,
        'eval/psnr_h02': 18.25,
        'eval/psnr_copy_last_h01': 20.19,
        'eval/psnr_copy_last_h02': 18.41,
        'eval/ssim_h02': 0.69,  # no horizon 1: an empty cell, not a shifted row
        'eval/noise_mse': 0.0083,
        'eval/psnr': 18.0,
    }
    lines = evaluation_tables(evaluation)
    assert lines == [
        '| per horizon | h1 | h2 |',
        '|---|---|---|',
        '| psnr | 19.5 | 18.25 |',
        '| psnr_copy_last | 20.19 | 18.41 |',
        '| ssim |  | 0.69 |',
        '',
        '| metric | value |',
        '|---|---|',
        '| noise_mse | 0.0083 |',
        '| psnr | 18 |',
        '',
    ]
    # A stage without horizons (the tokenizer) gets the metric | value table alone.
    assert evaluation_tables({'eval/psnr_p0': 33.1, 'step': 800}) == [
        '| metric | value |',
        '|---|---|',
        '| psnr_p0 | 33.1 |',
        '',
    ]
