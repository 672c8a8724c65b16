"""Agent heads and multi-token targets (PAPER 9.2): alignment, validity masks, loss terms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax.agent import (
    AgentConfig,
    AgentHeads,
    agent_loss_terms,
    batch_majority_accuracy,
    health_rewards,
    init_agent_params,
    majority_accuracy,
    policy_targets,
    reward_targets,
    with_health_reward,
)
from dreamer4_jax.distributions import ActionDist, TwoHot
from dreamer4_jax.train.agent_phase import policy_groups

CRAFTAX_LIKE = (('action', 'categorical', 17),)


def _batch(b=2, t=6, k=3):
    """Row 0: one episode; row 1: a new episode starts at t = 3, frame 2 is its last frame."""
    action = np.tile(np.arange(t, dtype=np.int32), (b, 1)) + 10 * np.arange(b)[:, None]
    is_first = np.zeros((b, t), bool)
    is_last = np.zeros((b, t), bool)
    is_first[:, 0] = True
    is_first[1, 3] = True
    is_last[1, 2] = True
    has_action = np.ones((b, t), bool)
    has_action[0, 4] = False  # an unlabeled step
    action = action % 17
    action[0, 4] = -1  # the dataset's placeholder where has_action is False
    action[1, 2] = -1  # ... and at an episode's last frame (no action follows it)
    has_action[1, 2] = False
    task_reward = np.zeros((b, t, k), np.float32)
    task_reward[0, 4, 1] = 1.0  # achievement 1 unlocked on arriving at frame 4 of row 0
    task_reward[1, 5, 2] = 1.0
    return {
        'action': {'action': jnp.asarray(action)},
        'has_action': jnp.asarray(has_action),
        'is_first': jnp.asarray(is_first),
        'is_last': jnp.asarray(is_last),
        'task_reward': jnp.asarray(task_reward),
    }


def test_policy_targets_are_the_stored_actions_t_plus_n():
    batch = _batch()
    actions, valid = policy_targets(batch, 4)
    a = np.asarray(batch['action']['action'])
    acts = np.asarray(actions['action'])
    valid = np.asarray(valid)
    for b in range(2):
        for t in range(6):
            for n in range(4):
                s = t + n
                expect = s < 6
                if expect:
                    same_episode = not (b == 1 and t < 3 <= s)
                    expect = same_episode and not (b == 0 and s == 4) and not (b == 1 and s == 2)
                assert valid[b, t, n] == expect, (b, t, n)
                # Valid entries hold action[t + n]; invalid ones a harmless 0, never -1.
                assert acts[b, t, n] == (a[b, s] if expect else 0), (b, t, n)
    # Offset 0 is the action taken after observing frame t (DESIGN 3), not the one before it.
    np.testing.assert_array_equal(acts[:, :, 0], np.where(valid[:, :, 0], a, 0))


def test_reward_targets_offset_n_is_the_reward_of_frame_t_plus_n():
    batch = _batch()
    rewards, valid = reward_targets(batch, jnp.asarray([1, 2]), 3)
    rewards, valid = np.asarray(rewards), np.asarray(valid)
    # Row 0, task 1: the reward arrives with frame 4, so h_4 offset 0, h_3 offset 1 and h_2
    # offset 2 see it; h_4's own action (stored at 4) is not what earned it.
    hot = {(t, n) for t in range(6) for n in range(3) if rewards[0, t, n] == 1.0}
    assert hot == {(4, 0), (3, 1), (2, 2)}
    # Row 1, task 2: the reward at frame 5 of the second episode; frames of the first episode
    # (t < 3) never target it, and t + n past the window is invalid.
    assert {(t, n) for t in range(6) for n in range(3) if rewards[1, t, n] == 1.0} == {
        (5, 0),
        (4, 1),
        (3, 2),
    }
    assert not valid[1, 2, 1] and not valid[1, 1, 2] and valid[1, 3, 2]
    assert not valid[0, 5, 1] and not valid[0, 4, 2] and valid[0, 3, 2]
    # Task selection: row 0 rewards are task 1's column only.
    other, _ = reward_targets(batch, jnp.asarray([2, 2]), 3)
    assert float(jnp.sum(other[0])) == 0.0


def _craftax_rewards():
    """One row of 5 frames over 3 achievements: the env reward is the count of first unlocks
    plus 0.1 per health point (frame 1: an unlock; 2: a zombie's hit; 3: an unlock and a point
    lost to hunger; 4: a point healed back)."""
    task_reward = np.zeros((1, 5, 3), np.float32)
    task_reward[0, 1, 0] = 1.0
    task_reward[0, 3, 2] = 1.0
    reward = np.asarray([[0.0, 1.0, -0.2, 0.9, 0.1]], np.float32)
    is_first = np.zeros((1, 5), bool)
    is_first[0, 0] = True
    return {
        'reward': jnp.asarray(reward),
        'task_reward': jnp.asarray(task_reward),
        'is_first': jnp.asarray(is_first),
    }


def test_health_rewards_are_the_env_reward_less_the_first_unlocks():
    np.testing.assert_allclose(
        health_rewards(_craftax_rewards()), [[0.0, 0.0, -0.2, -0.1, 0.1]], atol=1e-6
    )


def test_health_reward_joins_every_tasks_reward_target():
    batch = _craftax_rewards()
    assert with_health_reward(batch, 0.0) is batch  # off: the batch itself
    half = with_health_reward(batch, 0.5)
    health = np.asarray([0.0, 0.0, -0.1, -0.05, 0.05])
    # Task 0 keeps its unlock at frame 1, task 2 its unlock at frame 3; all carry the health.
    np.testing.assert_allclose(half['task_reward'][0, :, 0], health + [0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(half['task_reward'][0, :, 1], health, atol=1e-6)
    np.testing.assert_allclose(half['task_reward'][0, :, 2], health + [0, 0, 0, 1, 0], atol=1e-6)
    np.testing.assert_array_equal(half['reward'], batch['reward'])
    # The multi-token targets read it as any reward: offset n at frame t is frame t + n's.
    rewards, valid = reward_targets(with_health_reward(batch, 1.0), jnp.asarray([2]), 2)
    np.testing.assert_allclose(rewards[0, :4, 1], [0.0, -0.2, 0.9, 0.1], atol=1e-6)
    assert bool(valid[0, 3, 1]) and not bool(valid[0, 4, 1])


def test_heads_have_one_output_layer_per_offset():
    cfg = AgentConfig(num_tasks=3, width=8, mtp_length=2, hidden=16, reward_bins=11, value_bins=11)
    heads = AgentHeads(cfg, CRAFTAX_LIKE)
    params = jax.jit(lambda k: nn.unbox(init_agent_params(heads, k)))(jax.random.key(0))
    h = jax.random.normal(jax.random.key(1), (2, 4, 1, 8))

    @jax.jit
    def outputs(params):
        return (
            heads.apply({'params': params}, h, method=AgentHeads.policy_params)['action'],
            heads.apply({'params': params}, h, method=AgentHeads.reward_logits),
            heads.apply({'params': params}, jnp.asarray([[0, 2]]), method=AgentHeads.agent_inputs),
        )

    pol, r, emb = outputs(params)
    assert pol.shape == (2, 4, 3, 17)
    # Changing offset 1's output weights moves offset 1's prediction only.
    p2 = jax.tree.map(lambda x: x, params)
    p2['policy']['out'] = params['policy']['out'].at[1].add(1.0)
    pol2 = outputs(p2)[0]
    np.testing.assert_array_equal(pol2[:, :, 0], pol[:, :, 0])
    np.testing.assert_array_equal(pol2[:, :, 2], pol[:, :, 2])
    assert float(jnp.max(jnp.abs(pol2[:, :, 1] - pol[:, :, 1]))) > 1e-3
    # Reward and value start at exactly 0 (zero-initialized output layers).
    np.testing.assert_allclose(cfg.reward_dist.mean(r), 0.0, atol=1e-6)
    # The task embedding is the one-hot task times a table plus a base.
    te = params['task_embed']
    np.testing.assert_allclose(emb[0, 1], te['table'][2] + te['base'], rtol=1e-6)


@pytest.mark.parametrize(
    'n, bc_rows_list',
    [
        (3, [True, False]),  # offsets 0..2, BC on row 0 only (a task-relevant row)
        (1, [True, True]),  # mtp_length=0 with BC on every row (craftax_tiny)
    ],
)
def test_agent_loss_terms_match_numpy_reference(n, bc_rows_list):
    rs = np.random.RandomState(0)
    b, t = 2, 6
    batch = _batch(b, t)
    dist, two = ActionDist(CRAFTAX_LIKE), TwoHot(11, -5.0, 5.0)
    logits = rs.randn(b, t, n, 17).astype(np.float32)
    rlogits = rs.randn(b, t, n, 11).astype(np.float32)
    task = jnp.asarray([1, 2])
    bc_rows = jnp.asarray(bc_rows_list)
    losses, metrics = agent_loss_terms(
        dist,
        two,
        {'action': jnp.asarray(logits)},
        jnp.asarray(rlogits),
        batch,
        task,
        bc_rows,
        jnp.asarray([True, True]),
    )
    acts, valid = policy_targets(batch, n)
    acts, valid = np.asarray(acts['action']), np.asarray(valid)
    rew, rvalid = (np.asarray(x) for x in reward_targets(batch, task, n))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    rlogp = rlogits - np.log(np.exp(rlogits).sum(-1, keepdims=True))
    target = np.asarray(two.encode(rew))  # two-hot encoding itself: tests/test_distributions.py
    bc_ref, r_ref = 0.0, 0.0
    for k in range(n):
        nll = [
            -logp[j, i, k, acts[j, i, k]]
            for j in range(b)
            for i in range(t)
            if bc_rows_list[j] and valid[j, i, k]
        ]
        bc_ref += np.mean(nll)
        rnll = [
            -np.sum(target[j, i, k] * rlogp[j, i, k])
            for j in range(b)
            for i in range(t)
            if rvalid[j, i, k]
        ]
        r_ref += np.mean(rnll)
    np.testing.assert_allclose(losses['bc'], bc_ref, rtol=1e-5)
    np.testing.assert_allclose(losses['reward'], r_ref, rtol=1e-5)
    rows = np.asarray(bc_rows_list)[:, None]
    assert float(metrics['agent/bc_targets']) == (valid[:, :, 0] & rows).sum()
    assert valid[0, :, 0].sum() == 5
    # Placeholders (-1) at invalid steps give neither NaN losses nor NaN gradients.
    grad = jax.grad(
        lambda lg: agent_loss_terms(
            dist, two, {'action': lg}, jnp.asarray(rlogits), batch, task, bc_rows, bc_rows
        )[0]['bc']
    )(jnp.asarray(logits))
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


def test_majority_accuracy_counts_joint_actions_among_valid_targets():
    # Component 'a' alone would have majority 1 (4 of 6 valid); jointly with 'b' the commonest
    # pair is (1, 0) with 3 of the 6 valid targets. The invalid last row (2, 5) x 3 is ignored.
    a = jnp.array([1, 1, 1, 1, 2, 3, 2, 2, 2])
    b = jnp.array([[0, 0], [0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [5, 5], [5, 5], [5, 5]])
    valid = jnp.array([True] * 6 + [False] * 3)
    acc = float(majority_accuracy({'a': a, 'b': b}, valid))
    np.testing.assert_allclose(acc, 3 / 6, rtol=1e-6)
    np.testing.assert_allclose(float(majority_accuracy({'a': a}, valid)), 4 / 6, rtol=1e-6)
    assert float(majority_accuracy({'a': a}, jnp.zeros(9, bool))) == 0.0


def test_batch_majority_accuracy_scores_only_offset0_bc_targets():
    # Row 0: actions 3 3 5 3 with frame 3 the episode's last (no action follows it);
    # row 1: 5 5 5 5 with frame 0 unlabeled. Valid targets: 3 3 5 | 5 5 5 -> majority 5, 4 of 6.
    batch = {
        'action': {'discrete': jnp.array([[3, 3, 5, 3], [5, 5, 5, 5]], jnp.int32)},
        'has_action': jnp.array([[1, 1, 1, 1], [0, 1, 1, 1]], bool),
        'is_first': jnp.array([[1, 0, 0, 0], [1, 0, 0, 0]], bool),
        'is_last': jnp.array([[0, 0, 0, 1], [0, 0, 0, 0]], bool),
    }
    np.testing.assert_allclose(float(batch_majority_accuracy(batch)), 4 / 6, rtol=1e-6)
    # Row 0 alone: valid targets 3 3 5 -> majority 3, 2 of 3; row 1 alone: 5 5 5 -> 1.
    np.testing.assert_allclose(
        float(batch_majority_accuracy(batch, jnp.array([True, False]))), 2 / 3, rtol=1e-6
    )
    assert float(batch_majority_accuracy(batch, jnp.array([False, True]))) == 1.0


def test_policy_groups_split_rows_by_the_policy_of_their_episode():
    batch = {'episode_id': np.array([[7, 7], [3, 3], [9, 9], [7, 7]])}
    groups = policy_groups(batch, [3, 7, 9], ('random', 'seeker', 'random'))
    assert sorted(groups) == ['random', 'seeker']
    np.testing.assert_array_equal(groups['random'], [False, True, True, False])
    np.testing.assert_array_equal(groups['seeker'], [True, False, False, True])
    # One policy in the split, or only one of them in the batch: no groups (the overall
    # metrics are the same numbers).
    assert policy_groups(batch, [3, 7, 9], ('contractor',) * 3) == {}
    assert policy_groups(batch, [3, 7, 9], ('random', 'random', 'random')) == {}
    only_seeker = {'episode_id': np.array([[7, 7], [7, 7]])}
    assert policy_groups(only_seeker, [3, 7, 9], ('random', 'seeker', 'random')) == {}
