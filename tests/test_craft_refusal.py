"""benchmarks/craft_refusal.py: the inventory rows, the game's accept/refuse labels, the tables,
and the whole probe on a tiny saved dynamics run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from craftax.craftax_classic.constants import Action, BlockType
from play_runs import make_runs

from benchmarks import craft_refusal as cr
from dreamer4_jax.envs.craftax import CraftaxEnv


@pytest.fixture(scope='module')
def env():
    return CraftaxEnv()


@pytest.fixture(scope='module')
def game_probe(env):
    """One jitted probe for the module's tests: each batch size compiles once."""
    return cr.make_game_probe(env)


@pytest.fixture(scope='module')
def start(env):
    """A world's first state with grass all around the player and no mobs."""
    states, _ = env.reset(jax.random.key(3), 1)
    state = jax.tree.map(lambda x: x[0], states)
    r, c = np.asarray(state.player_position)
    area = state.map.at[r - 2 : r + 3, c - 2 : c + 3].set(BlockType.GRASS.value)
    none = lambda mobs: mobs.replace(mask=jnp.zeros_like(mobs.mask))  # noqa: E731
    return state.replace(
        map=area,
        mob_map=jnp.zeros_like(state.mob_map),
        zombies=none(state.zombies),
        cows=none(state.cows),
        skeletons=none(state.skeletons),
    )


def with_wood(state, wood):
    return state.replace(inventory=state.inventory.replace(wood=state.inventory.wood * 0 + wood))


def test_inventory_rows_hold_the_inventory_and_only_it(env, start):
    """An inventory change moves pixels in rows INVENTORY_TOP.. only; a map change next to the
    player moves pixels above them only."""
    base = np.asarray(env.render(start), np.int32)
    inv = start.inventory.replace(
        wood=start.inventory.wood * 0 + 3, wood_pickaxe=start.inventory.wood_pickaxe * 0 + 1
    )
    rows = np.nonzero(np.any(np.asarray(env.render(start.replace(inventory=inv))) != base, (1, 2)))
    # The wood count sits in the first inventory row of cells (7 pixels high).
    assert cr.INVENTORY_TOP <= rows[0].min() < cr.INVENTORY_TOP + 7
    assert rows[0].max() < cr.INVENTORY_BOTTOM
    # A table in the lowest map row the view shows (3 cells below the player) ends right above.
    r, c = np.asarray(start.player_position)
    table = start.replace(map=start.map.at[r + 3, c].set(BlockType.CRAFTING_TABLE.value))
    rows = np.nonzero(np.any(np.asarray(env.render(table)) != base, (1, 2)))
    assert rows[0].max() == cr.INVENTORY_TOP - 1


def test_game_probe_accepts_only_what_the_game_allows(game_probe, start):
    """Next to a table, make_wood_pickaxe is accepted with one wood and refused with none; a
    refused press gives exactly noop's next frame (same key), an accepted one changes the
    inventory rows; noop is never accepted; place_table needs two wood and a free cell ahead."""
    r, c = np.asarray(start.player_position)
    at_table = start.replace(map=start.map.at[r + 1, c + 1].set(BlockType.CRAFTING_TABLE.value))
    states = jax.tree.map(lambda *x: jnp.stack(x), with_wood(at_table, 1), with_wood(at_table, 0))
    frames, accepted, paid = jax.device_get(
        game_probe(states, jax.random.split(jax.random.key(0), 2))
    )
    col = {a: i for i, a in enumerate(cr.PROBE_ACTIONS)}
    pick, table, noop = (
        col[Action.MAKE_WOOD_PICKAXE.value],
        col[Action.PLACE_TABLE.value],
        col[Action.NOOP.value],
    )
    assert accepted[0, pick] and not accepted[1, pick]
    assert paid[0, pick] and not paid[1].any()  # the first wood pickaxe pays; a refusal never
    assert not accepted[:, table].any() and not accepted[:, noop].any()  # one wood: no table
    frames = frames.astype(np.float32) / 255.0
    inv, _ = cr.pixel_change(frames, frames[:, noop : noop + 1])
    assert inv[0, pick] > 0 and inv[1, pick] == 0
    np.testing.assert_array_equal(frames[1, pick], frames[1, noop])
    two = jax.tree.map(lambda x: x[None], with_wood(start, 2))
    _, acc, _ = jax.device_get(game_probe(two, jax.random.split(jax.random.key(1), 1)))
    assert acc[0, table] and acc[0].sum() == 1  # nothing else is possible with two wood


def test_game_probe_pays_only_a_first_unlock(game_probe, start):
    """A second wood pickaxe is accepted (the wood is spent) but the task pays only once."""
    r, c = np.asarray(start.player_position)
    at_table = start.replace(map=start.map.at[r + 1, c + 1].set(BlockType.CRAFTING_TABLE.value))
    done = with_wood(at_table, 1)
    pick_ach = cr.ACTION_ACHIEVEMENT[Action.MAKE_WOOD_PICKAXE.value]
    done = done.replace(achievements=done.achievements.at[pick_ach].set(True))
    states = jax.tree.map(lambda *x: jnp.stack(x), with_wood(at_table, 1), done)
    _, accepted, paid = jax.device_get(game_probe(states, jax.random.split(jax.random.key(2), 2)))
    pick = cr.PROBE_ACTIONS.index(Action.MAKE_WOOD_PICKAXE.value)
    assert accepted[:, pick].all()
    assert paid[0, pick] and not paid[1, pick]
    assert not paid[:, len(cr.PRESSES) :].any()  # moves and noop pay no task


def test_reward_summary_splits_paid_unpaid_refused():
    """Hand-built readings [P = 3, presses, 3]: press 0 paid in probe 0, accepted again unpaid in
    probe 1, refused in probe 2."""
    n = len(cr.PRESSES)
    read = np.zeros((3, n, 3))
    read[:, 0] = [[0.9, 0.8, 0.7], [0.2, 0.1, 0.0], [0.5, 0.4, 0.3]]
    read[:, 1] = 0.25  # press 1 refused everywhere
    accepted = np.zeros((3, n), bool)
    accepted[:2, 0] = True
    paid = np.zeros((3, n), bool)
    paid[0, 0] = True
    s = cr.summarize_rewards(read, accepted, paid)
    first = s['actions'][next(iter(s['actions']))]
    assert (first['n_paid'], first['n_unpaid'], first['n_refused']) == (1, 1, 1)
    assert first['dreamed_paid'] == pytest.approx(0.9)
    assert first['real_press_unpaid'] == pytest.approx(0.1)
    assert first['real_noop_refused'] == pytest.approx(0.3)
    pooled = s['pooled']
    assert pooled['n_refused'] == 3 * n - 2
    # Refused: press 0 once (0.5), press 1 three times (0.25), the rest zero.
    assert pooled['dreamed_refused'] == pytest.approx((0.5 + 3 * 0.25) / (3 * n - 2))
    assert math.isnan(s['actions'][list(s['actions'])[1]]['dreamed_paid'])
    assert 'all place/make (pooled)' in cr.reward_markdown(s)


def test_summarize_counts_means_and_ratios():
    """Hand-built probes: two probes, presses 0 and 1 probed (others refused with no change)."""
    p, a = 2, len(cr.PROBE_ACTIONS)
    found = {k: np.zeros((p, a)) for k in ('real_inv', 'real_full', 'model_inv', 'model_full')}
    found['accepted'] = np.zeros((p, a), bool)
    found['accepted'][0, 0] = True  # action 0 accepted in probe 0, refused in probe 1
    found['real_inv'][0, 0], found['model_inv'][0, 0] = 0.2, 0.1
    found['model_inv'][1, 0] = 0.05
    found['model_inv'][:, 1] = 0.3  # action 1 refused twice, the model changes it anyway
    found['noise_floor'] = np.array([0.01, 0.03])
    s = cr.summarize(found)
    first = s['actions'][next(iter(s['actions']))]
    assert (first['n_accepted'], first['n_refused']) == (1, 1)
    assert first['model_inv_accepted'] == pytest.approx(0.1)
    assert first['model_inv_refused'] == pytest.approx(0.05)
    assert first['refusal_ratio'] == pytest.approx(0.5)
    assert first['real_inv_refused'] == 0.0
    second = s['actions'][list(s['actions'])[1]]
    assert second['n_accepted'] == 0 and math.isnan(second['refusal_ratio'])
    pooled = s['pooled']
    assert (pooled['n_accepted'], pooled['n_refused']) == (1, 2 * len(cr.PRESSES) - 1)
    assert pooled['model_inv_refused'] == pytest.approx((0.05 + 0.6) / (2 * len(cr.PRESSES) - 1))
    assert pooled['noise_floor'] == pytest.approx(0.02)
    assert s['moves'] == {'real_full': 0.0, 'model_full': 0.0}
    found['model_full'][:, len(cr.PRESSES)] = 0.4  # the first move, in both probes
    assert cr.summarize(found)['moves']['model_full'] == pytest.approx(0.4 / len(cr.MOVES))
    assert len(s['actions']) == len(cr.PRESSES) == 10
    table = cr.markdown(s)
    assert 'all place/make (pooled)' in table and 'n/a' in table


def test_probe_runs_on_a_saved_dynamics_run(tmp_path, capsys):
    runs = make_runs(str(tmp_path), agent=False)
    out = tmp_path / 'refusal.json'
    summary = cr.main(['--dynamics_workdir', runs['dynamics'], '--envs=2', '--steps=4',
                       '--every=2', '--context=2', f'--out={out}'])  # fmt: skip
    assert summary['context'] == 2
    pooled = summary['pooled']
    # Probes at steps 1 and 3, two envs each, ten presses per probe.
    assert pooled['n_accepted'] + pooled['n_refused'] == 2 * 2 * 10
    assert json.loads(out.read_text())['pooled']['n_refused'] == pooled['n_refused']
    assert pooled['noise_floor'] > 0  # two samples of a random model differ
    assert summary['moves']['real_full'] > 0  # a move changes the game's view
    assert 'refusal ratio' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cr.main(['--dynamics_workdir', runs['tokenizer']])


def test_probe_reads_the_reward_head_of_a_saved_agent_run(tmp_path, capsys):
    runs = make_runs(str(tmp_path))
    summary = cr.main(['--agent_workdir', runs['agent'], '--envs=2', '--steps=2', '--every=2',
                       '--context=2'])  # fmt: skip
    rewards = summary['reward']['pooled']
    # One probe (step 1), two envs, ten presses each, every one in exactly one outcome.
    assert sum(rewards[f'n_{o}'] for o in cr.OUTCOMES) == 2 * 10
    assert summary['pooled']['n_accepted'] + summary['pooled']['n_refused'] == 2 * 10
    assert all(math.isfinite(rewards[f'{r}_refused']) for r in cr.READINGS)
    assert 'the reward head' in capsys.readouterr().out.lower()
    with pytest.raises(SystemExit):  # an agent run is not a dynamics run, and the reverse
        cr.main(['--dynamics_workdir', runs['agent']])
    with pytest.raises(SystemExit):
        cr.main(['--agent_workdir', runs['dynamics']])
