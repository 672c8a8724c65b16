"""Token layouts and the masks they build (PAPER 4.1, 5.1, 9.1)."""

import numpy as np
import pytest

from dreamer4_jax.nn import (
    TokenLayout,
    decoder_layout,
    dense_mask,
    dynamics_layout,
    encoder_layout,
    frame_mask,
)
from dreamer4_jax.nn.layout import independent_frame_mask


def test_encoder_mask_latents_read_all_patches_read_patches():
    lay = encoder_layout(num_patches=3, num_latents=2)
    m = lay.space_mask()
    p, z = lay.slice('patches'), lay.slice('latents')
    assert m.shape == (5, 5)
    assert m[z, :].all()  # latents read everything
    assert m[p, p].all() and not m[p, z].any()  # patches read only patches


def test_decoder_mask():
    lay = decoder_layout(num_readouts=3, num_latents=2)
    m = lay.space_mask()
    r, z = lay.slice('readouts'), lay.slice('latents')
    assert m[r, :].all()  # read-outs read read-outs and latents
    assert m[z, z].all() and not m[z, r].any()  # latents read only latents


def test_dynamics_mask_agent_isolation():
    lay = dynamics_layout(num_latents=4, num_actions=2, num_registers=2, num_agents=1)
    assert lay.names == ('actions', 'shortcut', 'latents', 'registers', 'agents')
    m = lay.space_mask()
    a = lay.slice('agents')
    others = np.ones(lay.num_tokens, bool)
    others[a] = False
    assert m[a, :].all()  # agents read every modality
    assert not m[others][:, a].any()  # nothing else reads agents
    assert m[others][:, others].all()  # the world tokens read each other freely


def test_build_drops_empty_modalities():
    lay = dynamics_layout(num_latents=4, num_registers=0, num_agents=0)
    assert lay.names == ('actions', 'shortcut', 'latents')
    assert lay.num_tokens == 6


@pytest.mark.parametrize(
    'modalities, reads, match',
    [
        ((('a', 2), ('a', 1)), (), 'duplicate'),
        ((('a', 0),), (), 'count'),
        ((('a', 2),), (('a', ('b',)),), 'unknown'),
        ((('a', 2), ('b', 1)), (('a', ('b',)),), 'must read itself'),
    ],
)
def test_layout_rejects_bad_input(modalities, reads, match):
    with pytest.raises(ValueError, match=match):
        TokenLayout(modalities, reads)


def test_frame_mask_matches_reference():
    q = np.arange(6)
    for window in (None, 1, 3):
        got = np.asarray(frame_mask(q, q, window))
        ref = np.array([[u <= t and (window is None or t - u < window) for u in q] for t in q])
        np.testing.assert_array_equal(got, ref)


def test_independent_rows_only_read_self():
    q = np.arange(4)
    base = frame_mask(q, q, None)
    got = np.asarray(independent_frame_mask(base, q, q, np.array([True, False])))
    np.testing.assert_array_equal(got[0], np.eye(4, dtype=bool))
    np.testing.assert_array_equal(got[1], np.asarray(base))


def test_dense_mask_combines_frame_and_modality_rules():
    lay = encoder_layout(num_patches=2, num_latents=1)
    s = lay.space_mask()
    t = np.asarray(frame_mask(np.arange(3), np.arange(3), 2))
    got = np.asarray(dense_mask(t, s))
    assert got.shape == (9, 9)
    for qt in range(3):
        for qs in range(3):
            for kt in range(3):
                for ks in range(3):
                    assert got[qt * 3 + qs, kt * 3 + ks] == (t[qt, kt] and s[qs, ks])
