"""benchmarks/imagination_gap.py: its grouping and the dataset's action -> reward pairing."""

import numpy as np
import pytest

from benchmarks import imagination_gap


def test_grouped_means_match_a_loop():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 5, size=(7, 3))
    keys[keys == 3] = 4  # key 3 never occurs
    values = rng.normal(size=(7, 3))
    counts, means = imagination_gap.grouped_means(keys, values, 6)
    for k in range(6):
        hit = values[keys == k]
        assert counts[k] == hit.size
        if hit.size:
            np.testing.assert_allclose(means[k], hit.mean())
        else:
            assert np.isnan(means[k])


def test_grouped_means_refuses_keys_out_of_range():
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        imagination_gap.grouped_means(np.array([0, 3]), np.array([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match='differ'):
        imagination_gap.grouped_means(np.array([0, 1]), np.array([1.0]), 3)


def test_data_pairs_each_action_with_the_reward_of_the_frame_it_led_to():
    # Two windows of 4 frames, 3 tasks. action[t] is taken after frame t; task_reward[t] came
    # with frame t. Window 0 starts an episode at t = 2 (its frame-1 action leads nowhere).
    action = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    has_action = np.array([[True, True, True, False], [True, True, True, True]])
    is_first = np.array([[True, False, True, False], [False, False, False, False]])
    task_reward = np.zeros((2, 4, 3))
    task_reward[0, 1, 2] = 1.0  # frame 1 of window 0, task 2 (led to by action 5)
    task_reward[0, 1, 0] = 1.0  # another task: not the prompt
    task_reward[1, 3, 1] = 1.0  # frame 3 of window 1, task 1 (led to by action 3)
    batch = {
        'action': {'discrete': action},
        'has_action': has_action,
        'is_first': is_first,
        'task_reward': task_reward,
    }
    acts, rewards = imagination_gap.data_action_rewards(batch, np.array([2, 1]))
    # Expected pairs by hand: window 0: (5 -> frame 1, reward 1), (6 -> frame 2: an episode
    # start, dropped), (7 -> frame 3, 0); window 1: (1, 0), (2, 0), (3, 1).
    assert sorted(zip(acts.tolist(), rewards.tolist(), strict=True)) == [
        (1, 0.0),
        (2, 0.0),
        (3, 1.0),
        (5, 1.0),
        (7, 0.0),
    ]


def test_summarize_tables():
    found = {
        'prior': {
            'task': np.array([0, 0, 2]),
            'return': np.array([0.1, 0.3, 0.5]),
            'action': np.array([[0, 1], [1, 1], [2, 0]]),
            'next_reward': np.array([[0.0, 0.2], [0.4, 0.0], [0.1, 0.3]]),
        },
        'trained': {
            'task': np.array([0, 0, 2]),
            'return': np.array([1.0, 0.0, 2.0]),
            'action': np.array([[1, 1], [1, 1], [1, 1]]),
            'next_reward': np.array([[0.5, 0.5], [0.0, 0.0], [1.0, 1.0]]),
        },
        'data': {'action': np.array([0, 0, 1]), 'reward': np.array([0.0, 1.0, 0.0])},
        'horizon': 2,
    }
    s = imagination_gap.summarize(found, num_tasks=3, num_actions=3)
    assert s['task_rollouts'] == [2, 0, 1]
    prior_return = s['task_return']['prior']
    assert prior_return[1] is None  # task 1 was never prompted
    np.testing.assert_allclose([prior_return[0], prior_return[2]], [0.2, 0.5])
    np.testing.assert_allclose(s['task_return']['trained'][0], 0.5)
    np.testing.assert_allclose(s['action_share']['trained'], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(s['action_share']['prior'], [2 / 6, 3 / 6, 1 / 6])
    # prior: action 1 led to rewards 0.2, 0.4, 0.0
    np.testing.assert_allclose(s['action_reward']['prior'][1], 0.2)
    np.testing.assert_allclose(s['action_reward']['data'][:2], [0.5, 0.0])
    assert s['action_reward']['data'][2] is None
    np.testing.assert_allclose(s['reward_per_step']['trained'], 0.5)
    # Task 0's rollouts: prior actions 0, 1, 1, 1 and trained 1, 1, 1, 1 -> action 1 gained most.
    assert s['task_gained_action'] == [1, None, 1]
    np.testing.assert_allclose(s['task_gained_share']['prior'][0], 0.75)
    np.testing.assert_allclose(s['task_gained_share']['trained'][0], 1.0)
    text = imagination_gap.markdown(s, None, ('WM+BC', 'Dreamer 4'))
    assert '| collect_wood | 2 | 0.200 | 0.500 | - | - | left (0.75 -> 1.00) |' in text
    assert 'held-out real frames' not in text  # no real frames scored
    real = {'action': np.array([0, 0, 1]), 'reward': np.array([0.5, 0.1, 0.2])}
    s = imagination_gap.summarize(
        {**found, 'real': {**real, 'paid': np.array([True, False, False])}}, 3, 3
    )
    assert s['real_frames'] == {'real_paid': [1, 0, 0], 'real_unpaid': [1, 1, 0]}
    assert s['action_reward']['real_paid'][0] == pytest.approx(0.5)
    assert s['action_reward']['real_paid'][1] is None
    assert s['action_reward']['real_unpaid'][:2] == pytest.approx([0.1, 0.2])
    text = imagination_gap.markdown(s, None, ('WM+BC', 'Dreamer 4'))
    assert (
        '| noop | 0.667 | 0.333 | 0.000 | 0.5000 | 0.1500 | - | 0.5000 (1) | 0.1000 (1) |' in text
    )
    mismatched = {**found, 'trained': {**found['trained'], 'task': np.array([0, 1, 2])}}
    with pytest.raises(AssertionError, match='task prompts'):
        imagination_gap.summarize(mismatched, num_tasks=3, num_actions=3)
