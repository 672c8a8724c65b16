"""Closed-loop evaluation: Wilson intervals, the task ladder, counting real unlocks, caches."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import dynamics as dyn
from dreamer4_jax.agent import AgentConfig, AgentHeads, init_agent_params
from dreamer4_jax.envs import craftax
from dreamer4_jax.envs.craftax import ACHIEVEMENT_NAMES, TimeStep
from dreamer4_jax.eval import closed_loop
from dreamer4_jax.eval.success_table import (
    death_cell,
    ladder_cell,
    mean_interval,
    rates_from_unlocks,
    return_cell,
    tries_table,
    wilson_interval,
    write_tables,
)
from dreamer4_jax.generation import SamplingConfig
from dreamer4_jax.imagination import WorldModel
from dreamer4_jax.model_configs import closed_loop_config_dict
from dreamer4_jax.nn import TransformerConfig
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig


def test_wilson_interval_known_values():
    # Hand-computed: 0/10 -> upper z^2 / (n + z^2); 5/10 -> 0.5 +- 0.2634; 10/10 mirrors 0/10.
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8416 / 13.8416, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(1 - 3.8416 / 13.8416, abs=1e-4) and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match='successes <= trials'):
        wilson_interval(3, 2)


def test_mean_return_interval_by_hand():
    # Returns 1, 2, 3, 6: mean 3, sample std sqrt(14 / 3), half width 1.96 * sqrt(14 / 3) / 2.
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, 6.0])
    half = 1.96 * np.sqrt(14 / 3) / 2
    assert mean == 3.0 and lo == pytest.approx(3 - half) and hi == pytest.approx(3 + half)
    assert mean_interval([4.0]) == (4.0, 4.0, 4.0)
    assert mean_interval([]) == (0.0, 0.0, 0.0)
    stats = {'mean_return': 3.0, 'return_ci_low': 0.88, 'return_ci_high': 5.12}
    assert return_cell(stats) == '3.00 [0.88, 5.12]'
    assert return_cell({'mean_return': 2.5}) == '2.50'  # results written before the interval


def test_ladder_task_advances_past_everything_done():
    ladder = jnp.asarray([4, 0, 2])
    unlocked = jnp.zeros((4, 5), bool)
    unlocked = unlocked.at[1, 4].set(True)  # first rung done
    unlocked = unlocked.at[2, 4].set(True).at[2, 0].set(True)
    unlocked = unlocked.at[3].set(True)  # everything: stay on the last rung
    assert closed_loop.ladder_task(ladder, unlocked).tolist() == [4, 0, 2, 2]
    # A later rung done early does not skip an earlier one that is still open.
    assert closed_loop.ladder_task(ladder, jnp.zeros((1, 5), bool).at[0, 2].set(True)).tolist() == [
        4
    ]


class CountingEnv:
    """Fake env with K = 3 achievements: action a < 3 unlocks achievement a (once). Episode e
    ends after `2 + e` steps; stepping an ended episode is absorbing (no unlocks), like Craftax."""

    action_achievement = (0, 1, 2) + (-1,) * 14

    def reset(self, key, n):
        del key
        state = {'t': jnp.zeros(n, jnp.int32), 'got': jnp.zeros((n, 3), bool)}
        return state, self._ts(state, jnp.zeros((n, 3), bool), jnp.ones(n, bool))

    def _ts(self, state, unlocked, first):
        n = state['t'].shape[0]
        frame = jnp.broadcast_to(state['t'][:, None, None, None].astype(jnp.uint8), (n, 8, 8, 3))
        last = state['t'] >= 2 + jnp.arange(n)
        return TimeStep(frame, unlocked.any(-1).astype(jnp.float32), unlocked, first, last, last)

    def death_cause(self, state):
        # A cause that depends on the state the episode ended in: its step count mod 3.
        return state['t'] % 3

    def step(self, state, actions, key):
        del key
        done = state['t'] >= 2 + jnp.arange(state['t'].shape[0])
        hit = jax.nn.one_hot(actions, 3, dtype=bool) & ~state['got'] & ~done[:, None]
        new = {'t': state['t'] + (~done), 'got': state['got'] | hit}
        return new, self._ts(new, hit, jnp.zeros_like(done))


class RecipeEnv(CountingEnv):
    """CountingEnv where action 2 is a recipe: the game refuses it until achievement 0 is got."""

    def step(self, state, actions, key):
        allowed = (actions != 2) | state['got'][:, 0]
        return super().step(state, jnp.where(allowed, actions, 5), key)


@dataclasses.dataclass(frozen=True)
class ScriptedPolicy:
    """Presses script[t] at frame t (CountingEnv's frames show t), whatever the prompt."""

    script: tuple
    dist = closed_loop.ActionDist((('discrete', 'categorical', 17),))

    def init(self, n):
        return ()

    def act(self, params, state, frames, task, rng):
        t = jnp.minimum(frames[:, 0, 0, 0].astype(jnp.int32), len(self.script) - 1)
        return {'discrete': jnp.asarray(self.script)[t][:, None]}, state


def test_play_counts_presses_and_refused_tries():
    # t0: the recipe (refused: achievement 0 is not got), t1: action 0 (unlocks 0), t2: the
    # recipe again (unlocks 2), t3: the recipe once more (unlocked already: a press, not a try),
    # t4: action 5 (no achievement). Episode e lasts 2 + e steps.
    pol = ScriptedPolicy((2, 0, 2, 2, 5))
    out = closed_loop.play(RecipeEnv(), pol, {}, jax.random.key(0), 4, 4, [0], max_steps=10)
    np.testing.assert_array_equal(out['unlocked'], [[1, 0, 0]] + [[1, 0, 1]] * 3)
    presses = np.zeros((4, 17), int)
    presses[:, 0] = 1
    presses[:, 2] = [1, 2, 3, 3]
    presses[3, 5] = 1
    np.testing.assert_array_equal(out['presses'], presses)
    tries = np.zeros((4, 17), int)
    tries[:, 0] = 1
    tries[:, 2] = [1, 2, 2, 2]
    np.testing.assert_array_equal(out['tries'], tries)
    names = [f'a{i}' for i in range(17)]
    st = closed_loop.tries_stats(out, RecipeEnv.action_achievement, names)
    assert list(st) == ['a0', 'a1', 'a2']
    assert st['a0'] == {
        'presses_per_episode': 1.0,
        'tries_per_episode': 1.0,
        'successes': 4,
        'refused': 0.0,
    }
    assert st['a1']['tries_per_episode'] == 0.0 and st['a1']['refused'] == 0.0
    # Seven tries of the recipe, three of which unlocked it: four refused.
    assert st['a2']['presses_per_episode'] == 2.25 and st['a2']['tries_per_episode'] == 1.75
    assert st['a2']['successes'] == 3 and st['a2']['refused'] == pytest.approx(4 / 7)
    md = tries_table({'agent': st, 'other': {'a2': st['a2']}})
    assert '| a2 | 1.75 (57 %) | 1.75 (57 %) |' in md and '| a0 | 1.00 (0 %) | - |' in md


def test_play_rejects_an_action_map_of_the_wrong_size():
    class ShortMapEnv(CountingEnv):
        action_achievement = (0, 1, 2)

    with pytest.raises(ValueError, match='maps 3 actions; the policy has 17'):
        closed_loop.play(ShortMapEnv(), PromptFollower(), {}, jax.random.key(0), 1, 1, [0], 10)


def test_craftax_place_and_make_actions_map_to_their_achievements():
    mapped = {
        craftax.ACTION_NAMES[a]: ACHIEVEMENT_NAMES[k]
        for a, k in enumerate(craftax.ACTION_ACHIEVEMENT)
        if k >= 0
    }
    assert len(craftax.ACTION_ACHIEVEMENT) == craftax.NUM_ACTIONS
    assert len(mapped) == 10 and all(a == k for a, k in mapped.items())
    assert 'make_wood_pickaxe' in mapped and 'place_table' in mapped and 'do' not in mapped


@dataclasses.dataclass(frozen=True)
class PromptFollower:
    """Acts out the prompted task id (a perfect 'agent' for CountingEnv)."""

    dist = closed_loop.ActionDist((('discrete', 'categorical', 17),))

    def init(self, n):
        return ()

    def act(self, params, state, frames, task, rng):
        return {'discrete': task[:, None]}, state


def test_play_counts_real_unlocks_and_walks_the_ladder():
    env, pol = CountingEnv(), PromptFollower()
    out = closed_loop.play(env, pol, {}, jax.random.key(0), 3, 3, [2, 0, 1], max_steps=10)
    # Episode e lasts 2 + e steps: ladder 2 -> 0 -> 1 needs 3 steps.
    np.testing.assert_array_equal(out['unlocked'], [[1, 0, 1], [1, 1, 1], [1, 1, 1]])
    assert out['length'].tolist() == [2, 3, 4]
    assert out['return'].tolist() == [2.0, 3.0, 3.0]
    assert out['final_task'].tolist() == [1, 1, 1]
    # Every episode ends terminal here; the cause is read from the state it ended in (t = 2 + e).
    assert out['death_cause'].tolist() == [2, 0, 1]
    calls = []
    single = closed_loop.play(
        env,
        pol,
        {},
        jax.random.key(0),
        4,
        3,
        [1],
        max_steps=10,
        progress=lambda *a: calls.append(a),
    )
    np.testing.assert_array_equal(single['unlocked'], [[0, 1, 0]] * 4)  # 2 batches, 4 kept
    assert calls == [(3, 4), (4, 4)]  # after each batch: episodes done so far, never past 4
    # The step limit truncates: at max_steps=2 only one env step is taken.
    short = closed_loop.play(env, pol, {}, jax.random.key(0), 3, 3, [2, 0, 1], max_steps=2)
    np.testing.assert_array_equal(short['unlocked'], [[0, 0, 1]] * 3)
    assert short['death_cause'].tolist() == [-1, -1, -1]  # cut by the step limit, not dead


def test_episode_stats_count_deaths_by_cause():
    out = {
        'return': np.asarray([1.0, 2.0, 3.0, 6.0]),
        'length': np.asarray([5, 5, 10, 20]),
        'death_cause': np.asarray([-1, 2, 2, 0]),
        # Ladder = achievements 2 and 0; achievement 1 (unprompted) does not count: 1, 2, 0, 1.
        'unlocked': np.asarray([[1, 1, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1]], bool),
    }
    st = closed_loop._stats(out, ('lava', 'need_at_zero', 'damage'), [2, 0])
    assert st['mean_length'] == 10.0 and st['mean_return'] == 3.0
    # Rungs per episode 1, 2, 0, 1: mean 1, sample std sqrt(2 / 3), half width 1.96 * that / 2.
    half = 1.96 * np.sqrt(2 / 3) / 2
    assert st['ladder_unlocks'] == 1.0
    assert st['ladder_unlocks_ci_low'] == pytest.approx(1 - half)
    assert ladder_cell(st) == f'1.00 [{1 - half:.2f}, {1 + half:.2f}]'
    assert ladder_cell({'mean_return': 1.0}) == '-'
    assert st['died'] == 0.75
    assert (st['died/lava'], st['died/need_at_zero'], st['died/damage']) == (0.25, 0.0, 0.5)
    assert death_cell(st) == '75 % (lava 25, need at zero 0, damage 50)'
    assert death_cell({'mean_length': 1.0, 'mean_return': 1.0}) == '-'  # older results


def test_craftax_death_cause_from_state():
    env = craftax.CraftaxEnv(max_steps=10)
    states, _ = env.reset(jax.random.key(0), 1)
    s = jax.tree.map(lambda x: x[0], states)
    pos = s.player_position
    lava = s.replace(map=s.map.at[pos[0], pos[1]].set(craftax.BlockType.LAVA.value))
    hungry = s.replace(player_food=jnp.asarray(0, s.player_food.dtype))
    tired = s.replace(player_energy=jnp.asarray(0, s.player_energy.dtype))
    asleep = tired.replace(is_sleeping=jnp.asarray(True))
    causes = [craftax.death_cause(x) for x in (s, lava, hungry, tired, asleep)]
    names = [craftax.DEATH_CAUSES[int(c)] for c in causes]
    # Lava first; a need at zero (energy counts as met while asleep, as Craftax's own rule); else
    # damage.
    assert names == ['damage', 'lava', 'need_at_zero', 'need_at_zero', 'damage']
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), lava, hungry)
    assert env.death_cause(batched).tolist() == [0, 1]


def test_tables_written_with_rates_and_intervals(tmp_path):
    names = ['a', 'b']
    rates = rates_from_unlocks(np.asarray([[1, 0], [1, 0], [0, 0], [1, 1]]), names)
    assert rates['a']['rate'] == 0.75 and rates['b']['successes'] == 1
    results = {
        'ladder': {
            'rows': names,
            'rates': {'random': rates},
            'info': {'episodes': 4},
            'episode_stats': {'random': {'mean_length': 3.0, 'mean_return': 1.0}},
        }
    }
    json_path, md_path = write_tables(str(tmp_path), results)
    assert json.load(open(json_path))['ladder']['rates']['random']['a']['episodes'] == 4
    md = open(md_path).read()
    assert '| a | 75.0 [30, 95] |' in md and '| random | 3.0 | 1.00 | - | - |' in md
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.tmp')]


def test_encode_step_equals_full_sequence_encode():
    tc = TransformerConfig(width=16, depth=2, num_heads=2, time_every=2)
    tok = Tokenizer(
        TokenizerConfig(
            height=16, width=16, patch=8, num_latents=4, latent_dim=3, encoder=tc, decoder=tc
        )
    )
    x = jax.random.uniform(jax.random.key(0), (2, 5, 16, 16, 3))
    params = jax.jit(lambda k: nn.unbox(tok.init(k, x[:, :1])))(jax.random.key(1))['params']
    encode = jax.jit(lambda p, x: tok.apply({'params': p}, x, method=Tokenizer.encode))
    full = encode(params, x)
    step = jax.jit(lambda p, x, c: closed_loop.encode_step(tok, p, x, c))
    cache = closed_loop.encoder_cache(tok, 2, context=3)  # window of 3 frames
    got = []
    for t in range(5):
        z, cache = step(params, x[:, t : t + 1], cache)
        got.append(z)
    got = jnp.concatenate(got, 1)
    np.testing.assert_allclose(got[:, :3], full[:, :3], atol=1e-5)
    # Beyond the window the cache forgets: frame 4 equals encoding frames 2..4 alone.
    tail = encode(params, x[:, 2:5])
    np.testing.assert_allclose(got[:, 4], tail[:, 2], atol=1e-5)


def test_agent_policy_step_by_step_equals_full_sequence_with_actions_shifted():
    """Closed loop commits frame t with the action taken after frame t-1 (DESIGN 3)."""

    acts = (('discrete', 'categorical', 17),)
    tc = TransformerConfig(width=16, depth=2, num_heads=2, time_every=2, time_window=8)
    tok = Tokenizer(
        TokenizerConfig(
            height=16, width=16, patch=8, num_latents=4, latent_dim=3, encoder=tc, decoder=tc
        )
    )
    dcfg = dyn.DynamicsConfig(
        num_latents=4,
        latent_dim=3,
        actions=acts,
        num_registers=1,
        num_agent_tokens=1,
        k_max=8,
        transformer=tc,
    )
    heads = AgentHeads(
        AgentConfig(num_tasks=3, width=16, mtp_length=1, hidden=8, reward_bins=5, value_bins=5),
        acts,
    )
    # Signal 1.0: committed frames are not re-noised, so both paths see identical inputs.
    wm = WorldModel(dyn.Dynamics(dcfg), heads, SamplingConfig(context_signal=1.0))
    policy = closed_loop.AgentPolicy(wm, tok, context=8)
    ks = jax.random.split(jax.random.key(0), 3)
    frames = jax.random.randint(ks[0], (2, 4, 16, 16, 3), 0, 256).astype(jnp.uint8)
    params = jax.jit(
        lambda k: nn.unbox(
            {
                'tokenizer': tok.init(k[0], jnp.zeros((1, 1, 16, 16, 3)))['params'],
                'dynamics': dyn.init_params(wm.dynamics, k[1]),
                'agent': init_agent_params(heads, k[2]),
            }
        )
    )(ks)
    task = jnp.asarray([0, 2])
    taken = jnp.asarray([[3, 16, 0, 5], [7, 7, 1, 2]], jnp.int32)  # actions after frames 0..3
    step = jax.jit(lambda s, f: policy.policy_params(params, s, f, task, jax.random.key(0)))
    state = policy.init(2)
    stepped = []
    for t in range(4):
        pi, (tok_cache, dyn_cache) = step(state, frames[:, t])
        stepped.append(pi['discrete'][:, 0])
        state = (tok_cache, dyn_cache, {'discrete': taken[:, t : t + 1]}, jnp.ones((2, 1), bool))
    stepped = jnp.stack(stepped, 1)

    @jax.jit
    def full(taken):
        z = tok.apply(
            {'params': params['tokenizer']},
            frames.astype(jnp.float32) / 255.0,
            method=Tokenizer.encode,
        )
        blocks, has = dyn.align_actions({'discrete': taken}, jnp.ones((2, 4), bool))
        agent_in = wm.agent_inputs(params, jnp.broadcast_to(task[:, None], (2, 4)))
        _, h = wm.dynamics.apply(
            {'params': params['dynamics']},
            z,
            jnp.ones((2, 4)),
            jnp.full((2, 4), 1 / 8),
            blocks,
            has,
            agent_in_BTAD=agent_in,
        )
        return wm.policy(params, h)['discrete']

    np.testing.assert_allclose(stepped, full(taken), atol=1e-6)
    # Off by one would be visible: the action after frame 3 must not matter, the one after
    # frame 0 must (it is in block 1).
    np.testing.assert_allclose(full(taken.at[:, 3].set(9)), stepped, atol=1e-6)
    assert float(jnp.max(jnp.abs(full(taken.at[:, 0].set(9)) - stepped))) > 1e-3


def test_random_policy_in_real_craftax_writes_tables(tmp_path):
    """Real env episodes: both modes, table files, rates consistent with episode counts."""

    cfg = closed_loop_config_dict(episodes=3, num_envs=2, max_steps=6, single_tasks='wake_up')
    lines = []
    res = closed_loop.evaluate_agents({'random': 'random'}, str(tmp_path), cfg, log=lines.append)
    # One progress line per batch of 2 envs, per mode: the ladder, then each single task.
    assert [line.split(' (')[0] for line in lines] == [
        '[closed-loop] random, ladder: 2/3 episodes',
        '[closed-loop] random, ladder: 3/3 episodes',
        '[closed-loop] random, wake_up: 2/3 episodes',
        '[closed-loop] random, wake_up: 3/3 episodes',
    ]
    rates = res['ladder']['rates']['random']
    assert set(rates) == set(ACHIEVEMENT_NAMES) and rates['collect_wood']['episodes'] == 3
    stats = res['ladder']['episode_stats']['random']
    assert 0 < stats['mean_length'] <= 5
    # Nobody dies in 5 steps from a fresh world: every episode ends at the step limit.
    assert stats['died'] == 0.0 and all(stats[f'died/{c}'] == 0.0 for c in craftax.DEATH_CAUSES)
    ladder = [craftax.achievement_index(n) for n in cfg.ladder.split(',')]
    unlocks = sum(rates[ACHIEVEMENT_NAMES[i]]['successes'] for i in ladder)
    assert stats['ladder_unlocks'] == pytest.approx(unlocks / 3)
    assert list(res['single']['rates']['random']) == ['wake_up']
    # From an empty inventory in 5 steps the game refuses every place and make press.
    tries = res['ladder']['tries']['random']
    assert len(tries) == 10 and sum(t['tries_per_episode'] for t in tries.values()) > 0
    for t in tries.values():
        assert t['successes'] == 0 and t['tries_per_episode'] == t['presses_per_episode']
        assert t['refused'] == (1.0 if t['tries_per_episode'] else 0.0)
    assert '| make_wood_pickaxe |' in open(tmp_path / 'success.md').read()
    assert sorted(os.listdir(tmp_path)) == ['success.json', 'success.md']
