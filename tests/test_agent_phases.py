"""Agent finetuning (phase 2) and imagination training (phase 3) steps on a tiny model."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dreamer4_jax import dynamics as dyn
from dreamer4_jax import rl
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.configs import base_config
from dreamer4_jax.model_configs import (
    agent_config_dict,
    closed_loop_config_dict,
    dynamics_config_dict,
    dynamics_config_from,
    imagination_config_dict,
    transformer_config_dict,
)
from dreamer4_jax.nn import TransformerConfig
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_jax.train import agent_phase, imagination_phase

B, T, K = 4, 6, 5


def _random_params(init_fn, seed):
    """Parameters of init_fn's shapes without compiling it: norm scales 1, the rest small
    Gaussians (the frozen tokenizer and the 'pretrained' dynamics model need no real init)."""
    shapes = jax.eval_shape(lambda: nn.unbox(init_fn(jax.random.key(0))))
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
    rs = np.random.RandomState(seed)
    leaves = [
        np.ones(s.shape, np.float32)
        if str(getattr(path[-1], 'key', '')) in ('scale', 'q_norm', 'k_norm')
        else (0.1 * rs.standard_normal(s.shape)).astype(np.float32)
        for path, s in flat
    ]
    return jax.tree_util.tree_unflatten(tree, [jnp.asarray(x) for x in leaves])


def _tokenizer():
    tc = TransformerConfig(width=16, depth=2, num_heads=2, time_every=2)
    cfg = TokenizerConfig(
        height=16, width=16, patch=8, num_latents=4, latent_dim=3, encoder=tc, decoder=tc
    )
    params = _random_params(lambda k: Tokenizer(cfg).init(k, jnp.zeros((1, 1, 16, 16, 3))), 0)
    return params['params'], cfg


def _dynamics_run(tok_cfg):
    run = ml_collections.ConfigDict()
    run.dynamics = dynamics_config_dict(
        action_space='craftax',
        num_registers=1,
        k_max=8,
        teacher_rows=0.5,
        transformer=transformer_config_dict(
            width=16, depth=2, num_heads=2, time_every=2, time_window=8
        ),
    )
    model = dyn.Dynamics(dynamics_config_from(run.dynamics, tok_cfg))
    return _random_params(lambda k: dyn.init_params(model, k), 1), run


def _config(phase):
    c = base_config()
    c.phase = phase
    c.train.batch_size = B
    c.train.warmup_steps = 0  # a real update at step 0
    c.data = ml_collections.ConfigDict({'window_length': T})
    c.agent = agent_config_dict(
        num_tasks=K, mtp_length=2, head_hidden=16, reward_bins=11, value_bins=11, teacher_rows=0.5
    )
    c.imagination = imagination_config_dict(context=3, horizon=3)
    return c


def _batch(seed=0):
    rs = np.random.RandomState(seed)
    task_reward = np.zeros((B, T, K), np.float32)
    task_reward[0, 4, 2] = 1.0  # rows 0 and 2 are task-relevant
    task_reward[2, 3, 1] = 1.0
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    return {
        'image': jnp.asarray(rs.randint(0, 256, (B, T, 16, 16, 3)), jnp.uint8),
        'action': {'discrete': jnp.asarray(rs.randint(0, 17, (B, T)), jnp.int32)},
        'has_action': jnp.ones((B, T), bool),
        'is_first': jnp.asarray(is_first),
        'is_last': jnp.zeros((B, T), bool),
        'is_terminal': jnp.zeros((B, T), bool),
        'reward': jnp.asarray(task_reward.sum(-1)),
        'task_reward': jnp.asarray(task_reward),
    }


@pytest.fixture(scope='module')
def pretrained():
    tok = _tokenizer()
    return tok, _dynamics_run(tok[1])


def _changed(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    return {
        '/'.join(str(getattr(p, 'key', p)) for p in path)
        for (path, x), y in zip(flat_a, flat_b, strict=True)
        if not np.array_equal(np.asarray(x), np.asarray(y))
    }


def test_row_tasks_from_task_rewards():
    task, relevant = agent_phase.row_tasks(_batch(), K, jax.random.key(0))
    assert relevant.tolist() == [True, False, True, False]
    assert int(task[0]) == 2 and int(task[2]) == 1
    assert bool(jnp.all((task >= 0) & (task < K)))
    # The pipeline's per-step fields win (constant along T).
    given = {
        **_batch(),
        'task_id': jnp.repeat(jnp.asarray([[3], [-1], [0], [-1]]), T, 1),
        'relevant': jnp.repeat(jnp.asarray([[True], [False], [True], [False]]), T, 1),
    }
    task, relevant = agent_phase.row_tasks(given, K, jax.random.key(0))
    assert int(task[0]) == 3 and int(task[2]) == 0


def test_row_tasks_prompts_uniform_rows_with_a_pressed_task():
    """uniform_prompts='pressed': a row without a relevant event is prompted with the task of a
    place/make action it presses before its last frame (one of them at random); relevant rows,
    unlabeled presses and rows without a press keep what they had."""
    table = [-1] * 17
    table[5], table[6] = 4, 3  # actions 5 and 6 are tasks 4 and 3
    acts = np.zeros((B, T), np.int32)
    acts[0, 1] = 5  # a relevant row (task 2): its task stays
    acts[1, 2] = 5  # one press: task 4
    acts[3, T - 1] = 6  # a press at the last frame: its reward is not in the window
    has = np.ones((B, T), bool)
    batch = {**_batch(), 'action': {'discrete': jnp.asarray(acts)}}
    plain, _ = agent_phase.row_tasks(batch, K, jax.random.key(0))
    task, relevant = agent_phase.row_tasks(batch, K, jax.random.key(0), tuple(table))
    assert relevant.tolist() == [True, False, True, False]
    assert int(task[0]) == 2 and int(task[2]) == 1 and int(task[1]) == 4
    assert int(task[3]) == int(plain[3])  # no counted press: the same random prompt
    # An unlabeled press (has_action False) does not count either.
    has[1, 2] = False
    off = {**batch, 'has_action': jnp.asarray(has)}
    unlabeled, _ = agent_phase.row_tasks(off, K, jax.random.key(0), tuple(table))
    assert int(unlabeled[1]) == int(plain[1])
    # Two presses in a row: each is chosen about half the time.
    acts[1, 4] = 6
    two = {**batch, 'action': {'discrete': jnp.asarray(acts)}}
    picks = [int(agent_phase.row_tasks(two, K, jax.random.key(i), tuple(table))[0][1])
             for i in range(200)]  # fmt: skip
    assert set(picks) == {3, 4} and 70 < picks.count(4) < 130


def test_uniform_prompts_setting_is_checked():
    config = _config('agent')
    assert agent_phase.uniform_prompt_table(config) is None  # the default: random prompts
    config.agent.uniform_prompts = 'pressed'
    with pytest.raises(ConfigError, match='source'):
        agent_phase.uniform_prompt_table(config)  # no Craftax actions in this data
    config.data.source = 'craftax'
    table = agent_phase.uniform_prompt_table(config)
    assert len(table) == 17 and sum(t >= 0 for t in table) == 10
    config.agent.uniform_prompts = 'sometimes'
    with pytest.raises(ConfigError, match='uniform_prompts'):
        agent_phase.uniform_prompt_table(config)


def test_health_reward_setting_is_checked():
    config = _config('agent')
    assert agent_phase.health_reward_weight(config) == 0.0  # the default: off
    config.agent.health_reward = -0.5
    with pytest.raises(ConfigError, match='health_reward=-0.5 must be >= 0'):
        agent_phase.health_reward_weight(config)
    config.agent.health_reward = 1.0
    with pytest.raises(ConfigError, match="source=''"):
        agent_phase.health_reward_weight(config)  # no health term in this data
    config.data.source = 'craftax'
    assert agent_phase.health_reward_weight(config) == 1.0
    config.data.collect = ml_collections.ConfigDict({'task_events': 'every'})
    with pytest.raises(ConfigError, match="task_events='every'"):
        agent_phase.health_reward_weight(config)  # repeats: the reward is no longer their sum


def test_imagination_ladder_prompts_setting_is_checked():
    """imagination.uniform_prompts='ladder' hands closed_loop.ladder to the data (which puts
    the prompt in task_id, relevant False) and row_tasks takes it; it needs uniform windows."""
    config = _config('imagination')
    assert imagination_phase.uniform_prompt_ladder(config) is None  # the default: random
    with config.unlocked():
        config.imagination.uniform_prompts = 'ladder'
    with pytest.raises(ConfigError, match="data_mode='relevant'"):
        imagination_phase.uniform_prompt_ladder(config)
    config.imagination.data_mode = 'mixture'
    assert imagination_phase.uniform_prompt_ladder(config) == closed_loop_config_dict().ladder
    config.closed_loop = closed_loop_config_dict(ladder='place_table,collect_wood')
    assert imagination_phase.uniform_prompt_ladder(config) == 'place_table,collect_wood'
    config.imagination.uniform_prompts = 'always'
    with pytest.raises(ConfigError, match='uniform_prompts'):
        imagination_phase.uniform_prompt_ladder(config)
    ladder_row = {
        **_batch(),
        'task_id': jnp.repeat(jnp.asarray([[3], [5], [0], [-1]]), T, 1),
        'relevant': jnp.repeat(jnp.asarray([[True], [False], [True], [False]]), T, 1),
    }
    task, relevant = agent_phase.row_tasks(ladder_row, K, jax.random.key(0))
    assert int(task[1]) == 5 and not bool(relevant[1])


@pytest.fixture(scope='module')
def agent_run(pretrained):
    tok, (dyn_params, dyn_run) = pretrained
    config = _config('agent')
    phase = agent_phase.make_phase(config, dynamics=(dyn_params, dyn_run), tokenizer=tok)
    # As the loop does: a fresh state, then the warm start swaps in the pretrained weights.
    state = phase.warm_start(jax.jit(lambda k: nn.unbox(phase.init(k)))(jax.random.key(2)))
    step = jax.jit(phase.train_step)
    new, metrics = step(state, _batch(), jax.random.key(3), {'tokenizer': tok[0]})
    return phase, state, new, metrics, config


def test_agent_step_starts_from_the_dynamics_checkpoint_and_freezes_value(pretrained, agent_run):
    (_, _), (dyn_params, _) = pretrained
    _, state, new, metrics, _ = agent_run
    # Every pretrained leaf is loaded; only the agent-token embedding is new.
    for name, value in dyn_params.items():
        jax.tree.map(np.testing.assert_array_equal, state.params['dynamics'][name], value)
    assert set(state.params['dynamics']) - set(dyn_params) == {'agent_tokens'}
    for name in ('loss/total', 'loss/dynamics', 'loss/bc', 'loss/reward'):
        assert np.isfinite(float(metrics[name])), name
    changed = _changed(state.params, new.params)
    assert not any(c.startswith('agent/value') for c in changed)
    for prefix in (
        'dynamics/transformer',
        'dynamics/agent_tokens',
        'agent/policy',
        'agent/reward',
        'agent/task_embed',
    ):
        assert any(c.startswith(prefix) for c in changed), prefix


def _hit(batch):
    """`batch` where a zombie's hit (-0.2, the env reward's health term) arrives with frame 2
    of rows 1 and 3, so no row's task or relevance changes."""
    reward = np.asarray(batch['reward']).copy()
    reward[[1, 3], 2] -= 0.2
    return {**batch, 'reward': jnp.asarray(reward)}


def test_the_agent_step_and_held_out_metrics_train_on_the_health_term(pretrained, agent_run):
    tok, (_, dyn_run) = pretrained
    # After one step: the reward head's output layer starts at zero (every target equally likely).
    phase, _, state, _, config = agent_run
    step = phase.train_step.args[0]
    consts = {'tokenizer': tok[0]}
    hit = _hit(_batch())
    # By hand: the hit is every task's reward at frame 2 of those rows.
    by_hand = np.asarray(hit['task_reward']).copy()
    by_hand[[1, 3], 2, :] -= 0.2
    by_hand = {**hit, 'task_reward': jnp.asarray(by_hand)}

    def reward_term(s, batch):
        terms, _ = agent_phase.step_terms(s, batch, jax.random.key(3), consts, True)(state.params)
        return float(terms['reward'])

    with_term = reward_term(dataclasses.replace(step, health_reward=1.0), hit)
    np.testing.assert_allclose(with_term, reward_term(step, by_hand), rtol=1e-6)
    assert abs(with_term - reward_term(step, hit)) > 1e-4
    # The held-out reward metrics score the same targets.
    wm = agent_phase.build_world_model(dyn_run.dynamics, tok[1], config.agent)

    def held_out(batch, weight):
        out = agent_phase.held_out_metrics(
            wm, Tokenizer(tok[1]), state.params, tok[0], batch, jax.random.key(0),
            health_reward=weight,
        )  # fmt: skip
        return float(out['reward_nll']), float(out['reward_abs_err_offset0'])

    with_term = held_out(hit, 1.0)
    np.testing.assert_allclose(with_term, held_out(by_hand, 0.0), rtol=1e-6)
    assert abs(with_term[0] - held_out(hit, 0.0)[0]) > 1e-4


def test_bc_baseline_from_scratch_without_dynamics_loss(pretrained):
    tok, (dyn_params, dyn_run) = pretrained
    config = _config('agent')
    config.agent.from_scratch = True
    config.agent.loss_weights.dynamics = 0.0
    phase = agent_phase.make_phase(config, dynamics=(dyn_params, dyn_run), tokenizer=tok)
    state = phase.warm_start(jax.jit(lambda k: nn.unbox(phase.init(k)))(jax.random.key(2)))
    w = state.params['dynamics']['transformer']['block_0']['mlp']['wi']
    assert not np.array_equal(w, dyn_params['transformer']['block_0']['mlp']['wi'])
    # Tracing is enough to see which terms the step computes (compiling it again is slow).
    _, metrics = jax.eval_shape(
        phase.train_step, state, _batch(), jax.random.key(3), {'tokenizer': tok[0]}
    )
    assert 'loss/dynamics' not in metrics and 'loss/bc' in metrics and 'loss/reward' in metrics


def test_imagination_step_moves_only_policy_and_value(pretrained, agent_run):
    tok, (_, dyn_run) = pretrained
    a_phase, _, trained, _, a_config = agent_run
    wm = agent_phase.build_world_model(dyn_run.dynamics, tok[1], a_config.agent)
    config = _config('imagination')
    phase = imagination_phase.make_phase(
        config, agent=(trained.params, a_config), tokenizer=tok, world_model=wm
    )
    state = phase.warm_start(jax.jit(lambda k: nn.unbox(phase.init(k)))(jax.random.key(0)))
    # The prior is an exact copy of the BC policy it starts from.
    jax.tree.map(
        np.testing.assert_array_equal,
        state.params['prior_policy'],
        trained.params['agent']['policy'],
    )
    new, metrics = jax.jit(phase.train_step)(
        state, _batch(1), jax.random.key(4), {'tokenizer': tok[0]}
    )
    for name in ('loss/total', 'loss/value', 'pmpo/loss', 'pmpo/kl'):
        assert np.isfinite(float(metrics[name])), name
    # KL to the prior is 0 at the first step: the policy IS the prior.
    assert abs(float(metrics['pmpo/kl'])) < 1e-6
    changed = _changed(state.params, new.params)
    assert changed, 'nothing trained'
    assert all(c.startswith(('agent/policy/', 'agent/value/')) for c in changed), changed
    assert any(c.startswith('agent/policy/') for c in changed)
    assert any(c.startswith('agent/value/') for c in changed)


def test_imagined_returns_credit_the_action_before_the_reward():
    """A reward that arrives with state 2 is earned by the action at state 1 (off-by-one)."""
    reward = jnp.asarray([[5.0, 0.0, 1.0, 0.0]])  # state 0's reward is before any action
    value = jnp.zeros((1, 4))
    got = imagination_phase.imagined_returns(reward, value, 0.9, 1.0)
    np.testing.assert_allclose(got, [[0.9, 1.0, 0.0]], rtol=1e-6)
    # lam = 0: one-step TD targets r_{s+1} + gamma * v_{s+1}.
    value = jnp.asarray([[0.0, 2.0, 3.0, 4.0]])
    got = imagination_phase.imagined_returns(reward, value, 0.5, 0.0)
    np.testing.assert_allclose(got, [[0.0 + 0.5 * 2.0, 1.0 + 0.5 * 3.0, 0.0 + 0.5 * 4.0]])


def test_until_reward_returns_stop_after_the_task_is_done():
    """continuation='until_reward': a task that pays once ends when the reward head says it is
    done (c_s = 1 - clip(r_{s+1}, 0, 1)); hand-computed lambda-returns, gamma 0.5, lam 1."""
    reward = jnp.asarray([[0.0, 0.25, 1.0, 1.0, 2.0]])
    value = jnp.asarray([[0.0, 0.0, 0.0, 0.0, 8.0]])
    c = np.asarray(rl.imagined_continues(reward, 'until_reward'))
    np.testing.assert_allclose(c, [[0.75, 0.0, 0.0, 0.0, 1.0]])  # r = 2 is clipped to 1
    got = imagination_phase.imagined_returns(reward, value, 0.5, 1.0, 'until_reward')
    # Backwards from R_4 = v_4 = 8: R_3 = 2 + 0.5 * 0 * 8 = 2; R_2 = 1 + 0 = 1; R_1 = 1;
    # R_0 = 0.25 + 0.5 * 0.75 * R_1 = 0.625.
    np.testing.assert_allclose(got, [[0.625, 1.0, 1.0, 2.0]], rtol=1e-6)
    # 'ones' keeps every payment: R_3 = 2 + 0.5 * 8 = 6, R_2 = 1 + 3, R_1 = 1 + 2, R_0 = 0.25 + 1.5.
    ones = imagination_phase.imagined_returns(reward, value, 0.5, 1.0)
    np.testing.assert_allclose(ones, [[1.75, 3.0, 4.0, 6.0]], rtol=1e-6)
    with pytest.raises(ValueError, match='continuation must be one of'):
        rl.imagined_continues(reward, 'never')


def test_imagination_refuses_an_unknown_continuation(pretrained):
    tok, (dyn_params, dyn_run) = pretrained
    config = _config('imagination')
    with config.unlocked():
        config.imagination.continuation = 'sometimes'
    wm = agent_phase.build_world_model(dyn_run.dynamics, tok[1], _config('agent').agent)
    with pytest.raises(ConfigError, match='continuation'):
        imagination_phase.make_phase(config, agent=({}, None), tokenizer=tok, world_model=wm)
    credit = _config('imagination')
    credit.imagination.reward_credit = 'mean'
    with pytest.raises(ConfigError, match="reward_credit='mean'"):
        imagination_phase.make_phase(credit, agent=({}, None), tokenizer=tok, world_model=wm)
    for name in ('reward_scale', 'advantage_deadzone', 'reward_floor'):
        bad = _config('imagination')
        bad.imagination[name] = -0.5
        with pytest.raises(ConfigError, match=f'imagination.{name}=-0.5 must be >= 0'):
            imagination_phase.make_phase(bad, agent=({}, None), tokenizer=tok, world_model=wm)


def test_agent_and_imagination_steps_read_cached_latents_without_images(pretrained):
    """With config.data.latents='cache' batches carry 'latents' and no 'image'; both steps trace
    on them (tracing only: the latents path replaces nothing but the encoder call)."""
    tok, (dyn_params, dyn_run) = pretrained
    batch = {k: v for k, v in _batch().items() if k != 'image'}
    batch['latents'] = jnp.zeros((B, T, tok[1].num_latents, tok[1].latent_dim), jnp.float32)
    agent = agent_phase.make_phase(_config('agent'), dynamics=(dyn_params, dyn_run), tokenizer=tok)
    state = jax.eval_shape(lambda k: nn.unbox(agent.init(k)), jax.random.key(0))
    _, metrics = jax.eval_shape(agent.train_step, state, batch, jax.random.key(1), {})
    assert metrics['loss/dynamics'].shape == ()
    wm = agent_phase.build_world_model(dyn_run.dynamics, tok[1], _config('agent').agent)
    imag = imagination_phase.make_phase(
        _config('imagination'), agent=(None, None), tokenizer=tok, world_model=wm
    )
    state = jax.eval_shape(lambda k: nn.unbox(imag.init(k)), jax.random.key(0))
    _, metrics = jax.eval_shape(imag.train_step, state, batch, jax.random.key(1), {})
    assert metrics['pmpo/loss'].shape == ()


def test_held_out_metrics_per_group_match_the_overall_ones_on_their_rows(pretrained, agent_run):
    tok, (_, dyn_run) = pretrained
    _, _, new, _, config = agent_run
    wm = agent_phase.build_world_model(dyn_run.dynamics, tok[1], config.agent)
    batch = {**_batch(), 'episode_id': jnp.zeros((B, T), jnp.int32)}
    groups = {'every': np.ones(B, bool), 'row0': np.arange(B) == 0}
    out = agent_phase.held_out_metrics(
        wm, Tokenizer(tok[1]), new.params, tok[0], batch, jax.random.key(0), groups
    )
    np.testing.assert_allclose(out['bc_accuracy_offset0/every'], out['bc_accuracy_offset0'])
    np.testing.assert_allclose(
        out['majority_accuracy_offset0/every'], out['majority_accuracy_offset0']
    )
    assert int(out['windows/every']) == B and int(out['windows/row0']) == 1
    # Row 0 alone: its T labeled actions (no episode ends in the window), majority by hand.
    actions = np.asarray(batch['action']['discrete'][0])
    expected = np.bincount(actions).max() / T
    np.testing.assert_allclose(out['majority_accuracy_offset0/row0'], expected, rtol=1e-6)
    # The built-in group: rows 0 and 2 unlock an achievement (_batch), so they are 'relevant'
    # and the majority over their 2 T actions is counted by hand.
    assert int(out['windows/relevant']) == 2
    actions = np.asarray(batch['action']['discrete'])[[0, 2]].ravel()
    expected = np.bincount(actions).max() / (2 * T)
    np.testing.assert_allclose(out['majority_accuracy_offset0/relevant'], expected, rtol=1e-6)
    # Its BC accuracy is the mean of the per-row accuracies of rows 0 and 2 (equal lengths).
    rows = {
        r: agent_phase.held_out_metrics(
            wm,
            Tokenizer(tok[1]),
            new.params,
            tok[0],
            batch,
            jax.random.key(0),
            {'one': np.arange(B) == r},
        )['bc_accuracy_offset0/one']
        for r in (0, 2)
    }
    np.testing.assert_allclose(
        out['bc_accuracy_offset0/relevant'], (rows[0] + rows[2]) / 2, rtol=1e-5
    )
