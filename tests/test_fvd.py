"""Frechet video metrics (dreamer4_jax/eval/fvd.py, eval/i3d.py): the distance, the stand-in,
the I3D network (random weights: no checkpoint can be downloaded) and its checkpoint format."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dreamer4_jax.eval import fvd as F
from dreamer4_jax.eval import i3d


def _random_gaussian(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return rng.standard_normal(d), a @ a.T / d


def _reference_frechet(mu1, s1, mu2, s2):
    """The usual NumPy/scipy formula (FID's reference code)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ------------------------------------------------------------------ the distance


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    for d in (1, 3, 12):
        mu1, s1 = _random_gaussian(rng, d)
        mu2, s2 = _random_gaussian(rng, d)
        np.testing.assert_allclose(
            F.frechet_distance(mu1, s1, mu2, s2), _reference_frechet(mu1, s1, mu2, s2), rtol=1e-8
        )


def test_frechet_distance_by_hand():
    # 1-D: (1 - 3)^2 + 4 + 9 - 2 sqrt(4 * 9) = 5.
    assert F.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0, rel=1e-12)
    # Diagonal: per dimension (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2.
    m1, v1, m2, v2 = np.array([0.0, 1.0]), np.array([1.0, 4.0]), np.array([2.0, 1.0]), [9.0, 1.0]
    want = np.sum((m1 - m2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2)  # 4 + 4 + 0 + 1
    assert F.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(want, rel=1e-12)


def test_frechet_distance_zero_for_identical_and_singular_stats():
    rng = np.random.default_rng(1)
    mu, s = _random_gaussian(rng, 10)
    assert F.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9 * np.trace(s))
    mu, s = _random_gaussian(rng, 10, rank=3)  # singular: as any covariance of N <= D samples
    assert F.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6 * np.trace(s))
    mu2, s2 = _random_gaussian(rng, 10, rank=3)
    np.testing.assert_allclose(
        F.frechet_distance(mu, s, mu2, s2), _reference_frechet(mu, s, mu2, s2), rtol=1e-5
    )
    with pytest.raises(ValueError, match='one D'):
        F.frechet_distance(mu, s, mu[:3], s)


def test_gaussian_stats_and_sample_space_distance():
    rng = np.random.default_rng(2)
    f1 = rng.standard_normal((7, 20)) + 0.5
    f2 = rng.standard_normal((9, 20)) * 1.5
    mu, sigma = F.gaussian_stats(f1)
    np.testing.assert_allclose(mu, f1.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f1, rowvar=False))
    # N < D uses the [N, M] nuclear-norm route, N > D the covariance route: both exact.
    for a, b in ((f1, f2), (f1[:, :3], f2[:, :3])):
        want = F.frechet_distance(*F.gaussian_stats(a), *F.gaussian_stats(b))
        np.testing.assert_allclose(F.frechet_distance_from_features(a, b), want, rtol=1e-8)
    assert F.frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match='N >= 2'):
        F.gaussian_stats(f1[:1])


# ------------------------------------------------------------------ the AlexNet stand-in


@pytest.fixture(scope='module')
def clips():
    """8 clips of 4 frames, 64x64: smooth random blobs that drift (content and motion)."""
    rng = np.random.default_rng(3)
    base = jax.image.resize(rng.uniform(size=(8, 1, 8, 8, 3)), (8, 1, 64, 64, 3), 'bilinear')
    frames = [np.roll(np.asarray(base), 3 * t, axis=3) for t in range(4)]
    return np.concatenate(frames, axis=1).astype(np.float32)


def test_standin_zero_for_identical_grows_with_perturbation_and_is_symmetric(clips):
    params = F.load_standin_params()
    rng = np.random.default_rng(4)
    d_same = F.standin_frechet_distance(clips, clips.copy(), params=params)
    noisy = [np.clip(clips + s * rng.standard_normal(clips.shape), 0, 1) for s in (0.05, 0.3)]
    d_small = F.standin_frechet_distance(clips, noisy[0].astype(np.float32), params=params)
    d_large = F.standin_frechet_distance(clips, noisy[1].astype(np.float32), params=params)
    frozen = np.repeat(clips[:, :1], 4, axis=1)  # same content, no motion: the std part sees it
    d_frozen = F.standin_frechet_distance(clips, frozen, params=params)
    assert d_same < 1e-6 * d_small
    assert 0 < d_small < d_large
    assert d_frozen > 0
    d_back = F.standin_frechet_distance(noisy[1].astype(np.float32), clips, params=params)
    assert d_back == pytest.approx(d_large, rel=1e-5)


def test_standin_features_shape_batching_and_uint8(clips):
    params = F.load_standin_params()
    f = F.standin_video_features(clips[:5], params=params, batch_size=16)
    assert f.shape == (5, 2 * 1152)
    np.testing.assert_allclose(
        F.standin_video_features(clips[:5], params=params, batch_size=2), f, rtol=1e-5, atol=1e-5
    )
    mean_only = F.standin_video_features(clips[:5], params=params, with_std=False)
    np.testing.assert_allclose(mean_only, f[:, :1152], rtol=1e-5, atol=1e-5)
    as_uint8 = np.round(clips[:5] * 255).astype(np.uint8)
    f8 = F.standin_video_features(as_uint8, params=params)
    np.testing.assert_allclose(f8, f, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match=r'\[N, T, H, W, 3\]'):
        F.standin_video_features(clips[0], params=params)
    assert 'stand-in' in F.STANDIN_NAME and 'not comparable' in F.STANDIN_NOTE


# ------------------------------------------------------------------ I3D and FVD


def test_tf1_resize_matches_legacy_sampling():
    # TF1 resize_bilinear(align_corners=False): source index i * in / out, no half-pixel offset.
    want = [[1, 0], [0.5, 0.5], [0, 1], [0, 1]]
    np.testing.assert_allclose(F._tf1_resize_matrix(2, 4), want)
    np.testing.assert_allclose(F._tf1_resize_matrix(5, 5), np.eye(5))
    x = jnp.asarray(np.random.default_rng(5).uniform(size=(1, 2, 5, 5, 3)), jnp.float32)
    np.testing.assert_allclose(F.fvd_preprocess(x, 5), 2 * x - 1, atol=1e-6)


def test_i3d_default_path_shapes():
    """224 x 224, 16 frames (the FVD setting), traced only: logits [N, 400]."""
    params = i3d.variable_shapes()
    videos = jax.ShapeDtypeStruct((3, 16, 64, 64, 3), jnp.float32)
    out = jax.eval_shape(lambda p, v: F.i3d_features(p, v, batch_size=2), params, videos)
    assert out.shape == (3, i3d.NUM_CLASSES)
    assert len(i3d.expected_checkpoint_shapes()) == 230
    assert i3d.expected_checkpoint_shapes()['Conv3d_1a_7x7/conv_3d/w'] == (7, 7, 7, 3, 64)


def test_fvd_random_i3d_zero_for_same_set_positive_for_another(clips):
    params = i3d.init_i3d_params(seed=0)
    real = clips[:4, :, :32, :32]
    other = np.clip(real[:, :, ::-1] * 0.5 + 0.4, 0, 1)  # flipped and dimmed
    feats = np.asarray(F.i3d_features(params, np.concatenate([real, other]), image_size=32))
    assert feats.shape == (8, 400) and np.all(np.isfinite(feats))
    assert np.std(feats[:, 0]) > 0
    d_same = F.frechet_distance_from_features(feats[:4], feats[:4])
    d_other = F.frechet_distance_from_features(feats[:4], feats[4:])
    assert d_other > 0 and d_same < 1e-6 * d_other
    # fvd() end to end (same compiled shapes: batch 8 at 32 px).
    assert F.fvd(real, real, params, image_size=32) < 1e-6 * d_other


# ------------------------------------------------------------------ the checkpoint format


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    params = i3d.init_i3d_params(seed=1)
    path = str(tmp_path_factory.mktemp('i3d') / 'i3d.npz')
    i3d.save_i3d_params(params, path)
    return params, path


def test_checkpoint_round_trip(saved):
    params, path = saved
    loaded = i3d.load_i3d_params(path)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_accepts_tensorflow_names(saved, tmp_path):
    """DeepMind's variable names ('RGB/inception_i3d/...:0', BN stats [1, 1, 1, 1, C]) load."""
    params, path = saved
    with np.load(path) as npz:
        arrays = {f'RGB/inception_i3d/{k}:0': npz[k] for k in npz.files}
    key = 'RGB/inception_i3d/Mixed_5b/Branch_2/Conv3d_0a_3x3/batch_norm/moving_mean:0'
    arrays[key] = arrays[key].reshape(1, 1, 1, 1, -1)
    arrays['global_step'] = np.array(7)  # extra keys are ignored
    tf_path = tmp_path / 'tf_names.npz'
    np.savez(tf_path, **arrays)
    loaded = i3d.load_i3d_params(str(tf_path))
    got = loaded['batch_stats']['Mixed_5b']['Branch_2']['Conv3d_0a_3x3']['batch_norm']['mean']
    want = params['batch_stats']['Mixed_5b']['Branch_2']['Conv3d_0a_3x3']['batch_norm']['mean']
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoint_errors_are_one_line(saved, tmp_path):
    _, path = saved
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    cases = {'missing.npz': ('does not exist', None)}
    (tmp_path / 'text.npz').write_text('not an archive')
    cases['text.npz'] = ('not a .npz archive', None)
    cases['lacks.npz'] = (
        'lacks 1 of 230',
        {k: v for k, v in arrays.items() if k != 'Logits/Conv3d_0c_1x1/conv_3d/b'},
    )
    bad = dict(arrays)
    bad['Conv3d_1a_7x7/conv_3d/w'] = bad['Conv3d_1a_7x7/conv_3d/w'][:, :, :, :, :32]
    cases['shape.npz'] = (r'Conv3d_1a_7x7/conv_3d/w has shape \(7, 7, 7, 3, 32\)', bad)
    for name, (message, content) in cases.items():
        if content is not None:
            np.savez(tmp_path / name, **content)
        with pytest.raises(i3d.I3DCheckpointError, match=message) as info:
            i3d.load_i3d_params(str(tmp_path / name))
        assert '\n' not in str(info.value)
