"""Action spaces, validation, placeholders and the VPT key / mouse conversion (hand-checked)."""

import math

import numpy as np
import pytest

from dreamer4_jax import actions as A


def test_spaces_have_the_paper_sizes():
    craftax = A.craftax_action_space()
    assert [(c.name, c.kind, c.size) for c in craftax.components] == [
        ('discrete', 'categorical', 17)
    ]
    mc = A.minecraft_action_space()
    assert [(c.name, c.kind, c.size) for c in mc.components] == [
        ('keys', 'binary', 23),
        ('mouse', 'categorical', 121),
    ]
    assert mc['keys'].event_shape == (23,) and mc['mouse'].event_shape == ()
    cont = A.continuous_action_space(7)
    assert cont['continuous'].dtype == np.float32 and cont['continuous'].event_shape == (7,)
    assert A.ActionSpace.from_json(mc.to_json()) == mc
    with pytest.raises(ValueError, match='unique'):
        A.ActionSpace((A.ActionComponent('a', 'binary', 2), A.ActionComponent('a', 'binary', 2)))
    with pytest.raises(ValueError, match='kind'):
        A.ActionComponent('a', 'gaussian', 2)


def test_validate_accepts_valid_and_names_the_bad_component():
    mc = A.minecraft_action_space()
    good = {'keys': np.zeros((2, 3, 23), np.int32), 'mouse': np.full((2, 3), 60, np.int32)}
    A.validate(good, mc)
    bad_mouse = {**good, 'mouse': good['mouse'].copy()}
    bad_mouse['mouse'][1, 2] = 121
    with pytest.raises(ValueError, match=r"'mouse'.*\[121\]"):
        A.validate(bad_mouse, mc)
    bad_keys = {**good, 'keys': good['keys'].copy()}
    bad_keys['keys'][0, 0, 5] = 2
    with pytest.raises(ValueError, match="'keys'.*0 or 1"):
        A.validate(bad_keys, mc)
    with pytest.raises(ValueError, match='trailing shape'):
        A.validate({**good, 'keys': np.zeros((2, 3, 22), np.int32)}, mc)
    with pytest.raises(ValueError, match='do not match'):
        A.validate({'keys': good['keys']}, mc)
    cont = A.continuous_action_space(2)
    with pytest.raises(ValueError, match='finite'):
        A.validate({'continuous': np.array([[0.0, np.nan]], np.float32)}, cont)


def test_placeholders_only_where_has_action_is_false():
    space = A.craftax_action_space()
    has = np.array([[True, False, True]])
    acts = {'discrete': np.array([[3, -1, 16]], np.int32)}
    A.validate(acts, space, has)
    with pytest.raises(ValueError, match='out-of-range'):
        A.validate(acts, space)  # no has_action: the -1 placeholder is not an action
    with pytest.raises(ValueError, match='placeholder'):
        A.validate({'discrete': np.array([[3, 4, 16]], np.int32)}, space, has)


def test_mask_actions_keeps_labels_and_never_invents_values():
    mc = A.minecraft_action_space()
    keys = np.arange(2 * 23).reshape(2, 23) % 2
    acts = {'keys': keys.astype(np.int32), 'mouse': np.array([7, 99], np.int32)}
    out = A.mask_actions(acts, np.array([True, False]), mc)
    np.testing.assert_array_equal(out['keys'][0], keys[0])
    assert out['mouse'][0] == 7
    assert np.all(out['keys'][1] == -1) and out['mouse'][1] == -1
    ph = mc.placeholder((4,))
    assert ph['keys'].shape == (4, 23) and np.all(ph['mouse'] == -1)
    cont = A.continuous_action_space(3)
    masked = A.mask_actions({'continuous': np.ones((2, 3), np.float32)}, np.array([1, 0]), cont)
    assert np.all(np.isnan(masked['continuous'][1])) and np.all(masked['continuous'][0] == 1)


def test_vpt_key_list():
    assert len(A.VPT_KEYS) == 23 and len(set(A.VPT_KEYS)) == 23
    assert set(A.VPT_KEYBOARD_MAP.values()) | set(A.VPT_MOUSE_BUTTON_MAP.values()) == set(
        A.VPT_KEYS
    )
    v = A.keys_to_binary(['forward', 'attack', 'hotbar.9'])
    assert v.dtype == np.int32 and v.sum() == 3
    assert v[A.VPT_KEYS.index('forward')] == 1 and v[A.VPT_KEYS.index('hotbar.9')] == 1
    with pytest.raises(ValueError, match='unknown VPT key'):
        A.keys_to_binary(['fly'])


def test_mouse_mu_law_bins_hand_checked():
    # bin = round(5 * sign(x) ln(1 + 10|x|) / ln(11) + 5), x = clip(deg, -10, 10) / 10.
    assert A.mouse_angle_to_bin(0.0) == 5
    assert A.mouse_angle_to_bin(1.0) == 6  # 5 * ln 2 / ln 11 + 5 = 6.445
    assert A.mouse_angle_to_bin(0.2) == 5  # 5 * ln 1.2 / ln 11 + 5 = 5.380
    assert A.mouse_angle_to_bin(5.0) == 9  # 5 * ln 6 / ln 11 + 5 = 8.736
    assert A.mouse_angle_to_bin(-5.0) == 1
    # Camera extremes: +-10 degrees and anything beyond land in the outer bins.
    np.testing.assert_array_equal(
        A.mouse_angle_to_bin([10.0, 180.0, -10.0, -720.0]), [10, 10, 0, 0]
    )
    # Bin centres: 11 ** 0.2 - 1 degrees for bin 6.
    np.testing.assert_allclose(A.mouse_bin_to_angle([0, 5, 6, 10]),
                               [-10.0, 0.0, 11**0.2 - 1, 10.0], rtol=1e-6)  # fmt: skip
    bins = np.arange(11)
    np.testing.assert_array_equal(A.mouse_angle_to_bin(A.mouse_bin_to_angle(bins)), bins)


def test_mouse_category_from_pixels():
    # 360 / 2400 degrees per pixel: 1 degree is 6.67 pixels.
    assert A.mouse_to_category(0.0, 0.0) == 60  # no motion: centre of the 11 x 11 grid
    assert A.mouse_to_category(1000.0, 0.0) == 5 * 11 + 10  # hard right: yaw bin 10
    assert A.mouse_to_category(0.0, -1000.0) == 0 * 11 + 5  # hard up: pitch bin 0
    assert A.mouse_to_category(-1000.0, 1000.0) == 10 * 11 + 0
    assert A.mouse_to_category(20 / 3, 0.0) == 5 * 11 + 6  # exactly 1 degree of yaw
    yaw, pitch = A.category_to_mouse_degrees(np.array([60, 65, 110]))
    np.testing.assert_allclose(yaw, [0.0, 10.0, -10.0], atol=1e-6)
    np.testing.assert_allclose(pitch, [0.0, 0.0, 10.0], atol=1e-6)
    assert math.isclose(A.VPT_DEGREES_PER_PIXEL, 0.15)
