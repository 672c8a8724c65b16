"""Running-RMS normalizer (PAPER 6.6), LPIPS wrapper, PSNR and SSIM vs NumPy/SciPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dreamer4_jax.eval.open_loop import psnr_of_mean_mse
from dreamer4_jax.losses import init_rms_state, load_lpips, psnr, ssim, update_and_normalize


def test_rms_normalizer_matches_numpy_over_steps():
    rs = np.random.RandomState(0)
    weights = {'mse': 1.0, 'lpips': 0.2}
    state = init_rms_state(weights)
    step = jax.jit(update_and_normalize)
    ema = {'mse': 1.0, 'lpips': 1.0}
    for _ in range(20):
        losses = {'mse': rs.rand() * 5.0, 'lpips': rs.rand() * 0.01}
        total, state, metrics = step(state, {k: jnp.float32(v) for k, v in losses.items()}, weights)
        ref_total = 0.0
        for k, v in losses.items():
            ema[k] = 0.95 * ema[k] + 0.05 * v**2  # updated before use
            ref_total += weights[k] * v / max(1e-6, np.sqrt(ema[k]))
        ref_raw = sum(weights[k] * v for k, v in losses.items())
        for k in losses:
            assert float(state[k]) == pytest.approx(ema[k], rel=1e-5)
            assert float(metrics[f'loss_rms/{k}']) == pytest.approx(np.sqrt(ema[k]), rel=1e-5)
        assert float(total) == pytest.approx(ref_total, rel=1e-5)
        assert float(metrics['loss_normalized/total']) == pytest.approx(ref_total, rel=1e-5)
        # loss/total is the raw weighted sum: it follows the terms, not their normalizers.
        assert float(metrics['loss/total']) == pytest.approx(ref_raw, rel=1e-5)


def test_rms_normalizer_first_step_gradient_and_eps():
    state = init_rms_state(['a'])
    grad = jax.grad(lambda x: update_and_normalize(state, {'a': x}, {'a': 3.0})[0])(2.0)
    # Hand value: ema = 0.95 * 1 + 0.05 * 4 = 1.15; the divisor is stop-gradient.
    assert float(grad) == pytest.approx(3.0 / np.sqrt(1.15), rel=1e-6)
    total, new, _ = update_and_normalize({'a': jnp.float32(0.0)}, {'a': jnp.float32(0.0)}, None)
    assert float(total) == 0.0 and float(new['a']) == 0.0
    total, _, _ = update_and_normalize({'a': jnp.float32(0.0)}, {'a': jnp.float32(1e-9)}, None)
    assert float(total) == pytest.approx(1e-9 / 1e-6, rel=1e-4)  # divisor floored at eps


def test_rms_normalizer_errors_and_passthrough():
    state = init_rms_state(['a', 'b'])
    with pytest.raises(ValueError, match='init_rms_state'):
        update_and_normalize(state, {'c': jnp.float32(1.0)}, None)
    with pytest.raises(ValueError, match='weights'):
        update_and_normalize(state, {'a': jnp.float32(1.0)}, {'b': 1.0})
    with pytest.raises(ValueError, match='scalar'):
        update_and_normalize(state, {'a': jnp.ones(3)}, None)
    _, new, _ = update_and_normalize(state, {'a': jnp.float32(3.0)}, None)
    assert float(new['b']) == 1.0 and float(new['a']) == pytest.approx(0.95 + 0.05 * 9)


@pytest.fixture(scope='module')
def alexnet():
    fn, params = load_lpips('alexnet')
    return jax.jit(fn), params


def test_lpips_identity_and_monotone_in_noise(alexnet):
    fn, params = alexnet
    rs = np.random.RandomState(1)
    # A smooth image so the noise, not the content, dominates the difference.
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    img = np.stack([xx, yy, 0.5 * (xx + yy)], -1)[None].repeat(2, 0).astype(np.float32)
    assert np.asarray(fn(params, img, img)).max() < 1e-6
    noise = rs.randn(*img.shape).astype(np.float32)
    dists = [np.asarray(fn(params, img, np.clip(img + s * noise, 0, 1))) for s in (0.02, 0.1, 0.3)]
    assert dists[0].shape == (2,)
    assert (dists[0] > 1e-4).all() and (dists[0] < dists[1]).all() and (dists[1] < dists[2]).all()


def test_lpips_shapes_and_errors(alexnet):
    fn, params = alexnet
    x = jnp.full((2, 3, 32, 32, 3), 0.5)
    assert fn(params, x, x).shape == (2, 3)
    with pytest.raises(ValueError, match='resize_to'):
        fn(params, x[..., :20, :20, :], x[..., :20, :20, :])
    with pytest.raises(ValueError, match=r'\[\.\.\., H, W, 3\]'):
        fn(params, x[..., :1], x[..., :1])
    with pytest.raises(ValueError, match='Unknown LPIPS net'):
        load_lpips('resnet')
    small_fn, _ = load_lpips('alexnet', resize_to=32)
    small = jnp.full((1, 16, 16, 3), 0.3)
    assert float(small_fn(params, small, small)[0]) < 1e-6


def test_lpips_vgg16_loads():
    fn, params = load_lpips('vgg16')
    img = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3))
    assert float(fn(params, img, img)[0]) < 1e-6
    assert float(fn(params, img, 1.0 - img)[0]) > 0.05


def test_psnr_hand_values():
    x = np.zeros((2, 4, 4, 3), np.float32)
    y = x + np.array([0.1, 0.01], np.float32)[:, None, None, None]
    np.testing.assert_allclose(psnr(x, y), [20.0, 40.0], rtol=1e-5)
    np.testing.assert_allclose(psnr(x * 255, y * 255, max_val=255.0), [20.0, 40.0], rtol=1e-5)
    assert np.isinf(psnr(x, x)).all()


def _np_ssim(x, y, size=11, sigma=1.5, max_val=1.0):
    """2D-window SSIM via scipy.ndimage, keeping only fully covered (valid) positions."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    h = size // 2

    def blur(a):
        out = ndimage.correlate(a, w2, mode='constant')
        return out[h : a.shape[0] - h, h : a.shape[1] - h]

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    vals = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch].astype(np.float64), y[..., ch].astype(np.float64)
        ma, mb = blur(a), blur(b)
        va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        m = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        vals.append(m)
    return np.mean(vals)


def test_ssim_matches_scipy_reference():
    rs = np.random.RandomState(2)
    yy, xx = np.mgrid[0:24, 0:20] / 20.0
    base = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], -1) * 0.4 + 0.5
    x = np.stack([base, rs.rand(24, 20, 3)]).astype(np.float32)
    y = np.clip(x + 0.1 * rs.randn(*x.shape), 0, 1).astype(np.float32)
    got = np.asarray(jax.jit(ssim)(x, y))
    assert got.shape == (2,)
    for i in range(2):
        assert got[i] == pytest.approx(_np_ssim(x[i], y[i]), abs=1e-5)
    got7 = ssim(x[0], y[0], window_size=7, sigma=1.0)
    assert float(got7) == pytest.approx(_np_ssim(x[0], y[0], 7, 1.0), abs=1e-5)


def test_ssim_hand_cases():
    x = np.random.RandomState(3).rand(1, 16, 16, 3).astype(np.float32)
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-5)
    a, b = 0.2, 0.7
    c1 = 0.01**2
    ref = (2 * a * b + c1) / (a**2 + b**2 + c1)  # constant images: only the luminance term
    got = ssim(np.full((12, 12, 1), a, np.float32), np.full((12, 12, 1), b, np.float32))
    assert float(got) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match='window_size'):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_open_loop_psnr_is_of_the_mean_mse_and_finite_for_static_windows():
    rs = np.random.RandomState(0)
    target = rs.uniform(size=(3, 2, 4, 4, 3)).astype(np.float32)
    pred = target.copy()
    pred[1] += 0.1  # window 0 and 2 exact (a static scene copied), window 1 off by 0.1
    got = np.asarray(psnr_of_mean_mse(jnp.asarray(pred), jnp.asarray(target)))
    mse = np.mean((pred - target) ** 2, axis=(0, 2, 3, 4))  # per horizon step, over windows
    np.testing.assert_allclose(got, 10 * np.log10(1.0 / mse), rtol=1e-5)
    assert np.all(np.isfinite(got))
    # The old per-window mean would be infinite here.
    assert np.isinf(np.mean(np.asarray(psnr(jnp.asarray(pred), jnp.asarray(target))), axis=0)).all()
