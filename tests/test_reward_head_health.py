"""benchmarks/reward_head_health.py: the reward head's mean per kind of frame, by hand."""

import numpy as np
import pytest

from benchmarks.reward_head_health import FRAME_KINDS, frame_kind_means


def test_frame_kind_means_against_hand_values():
    predicted = [0.5, -0.1, 0.0, 0.2, 0.9, 0.1, 0.7]
    health = [-0.2, -0.7, 0.1, 0.0, 0.0, 0.0, -0.1]
    unlock = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]  # an unlock counts as one whatever its health
    out = frame_kind_means(predicted, health, unlock, weight=0.5)
    assert tuple(out) == FRAME_KINDS
    assert out['hit']['frames'] == 2
    assert out['hit']['predicted'] == pytest.approx(0.2)
    assert out['hit']['target'] == pytest.approx(0.5 * (-0.2 - 0.7) / 2)
    assert out['healed'] == {'frames': 1, 'predicted': 0.0, 'target': pytest.approx(0.05)}
    assert out['neutral']['frames'] == 2 and out['neutral']['target'] == 0.0
    assert out['neutral']['predicted'] == pytest.approx(0.15)
    assert out['unlock']['predicted'] == pytest.approx(0.8)
    assert out['unlock']['target'] == pytest.approx((1.0 + 1.0 - 0.05) / 2)


def test_frame_kind_means_leaves_an_empty_kind_blank():
    out = frame_kind_means(np.zeros(3), np.zeros(3), np.zeros(3), weight=1.0)
    assert out['hit'] == {'frames': 0, 'predicted': None, 'target': None}
    assert out['neutral']['frames'] == 3
