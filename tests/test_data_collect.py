"""Craftax-Classic collection end to end: env API, episode structure, alignment by replay, policies.

One tiny dataset (4 episodes of at most 40 frames) is collected for the whole module.
"""

import copy
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from craftax.craftax_classic.constants import Achievement, Action, BlockType

from dreamer4_jax.data import build, policies, rollout
from dreamer4_jax.data.config import collection_settings, default_data_config
from dreamer4_jax.envs.craftax import ACHIEVEMENT_NAMES, CraftaxEnv

MAX_STEPS = 40


def like(x, value):
    """`value` with x's dtype and weak type, so jitted functions do not retrace."""
    return x * 0 + value


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
    c = default_data_config()
    c.dir, c.name = str(tmp_path_factory.mktemp('data')), 'craftax_test'
    c.collect.num_episodes, c.collect.max_steps = 4, MAX_STEPS
    c.collect.num_envs, c.collect.chunk_steps = 4, 16
    c.eval_fraction = 0.25
    build.ensure_dataset(c, progress=False)
    return c


@pytest.fixture(scope='module')
def env():
    return CraftaxEnv(max_steps=MAX_STEPS)


@pytest.fixture(scope='module')
def step_fn(env):
    return jax.jit(env.step_single)


@pytest.fixture(scope='module')
def worlds(cfg, env):
    """The collector's pool (same call, so its compilation is reused): world e = pool[e]."""
    key_world = rollout.rollout_keys(cfg.collect.seed)[0]
    return env.make_pool(key_world, cfg.collect.num_episodes, chunk=cfg.collect.num_envs)


def world(pool, e):
    return jax.tree.map(lambda x: x[e], pool.states), pool.frames[e]


def read_episodes(cfg, split):
    meta = build.load_meta(cfg)
    source = tfds.builder_from_directory(str(meta.tfds_dir)).as_data_source(split=split)
    records = source.__getitems__(list(range(len(source))))
    out, start = [], 0
    for n in meta.splits[split].lengths:
        rec = records[start : start + n]
        out.append({k: np.asarray([r[k] for r in rec]) for k in rec[0] if k != 'action'})
        out[-1]['action'] = np.asarray([r['action']['discrete'] for r in rec])
        start += n
    return meta, out


def test_dataset_card_and_reuse(cfg):
    meta = build.load_meta(cfg)
    assert sorted(meta.splits) == ['eval', 'train']
    assert len(meta.splits['train'].lengths) == 3 and len(meta.splits['eval'].lengths) == 1
    assert sorted(meta.splits['train'].policies + meta.splits['eval'].policies) == [
        'random', 'random', 'seeker', 'seeker'
    ]  # fmt: skip
    assert build.ensure_dataset(cfg) == build.dataset_path(cfg)  # reused, not rebuilt
    other = cfg.copy_and_resolve_references()
    other.collect.max_steps = 41
    with pytest.raises(ValueError, match=r"different settings for \['max_steps'\]"):
        build.ensure_dataset(other)


def test_episode_structure(cfg):
    _, episodes = read_episodes(cfg, 'train')
    for ep in episodes:
        n = len(ep['step'])
        assert 2 <= n <= MAX_STEPS
        np.testing.assert_array_equal(ep['step'], np.arange(n))
        assert ep['image'].shape == (n, 64, 64, 3) and ep['image'].dtype == np.uint8
        assert not ep['image'][:, 63].any() and not ep['image'][:, :, 63].any()  # padding
        np.testing.assert_array_equal(ep['is_first'], np.arange(n) == 0)
        np.testing.assert_array_equal(ep['is_last'], np.arange(n) == n - 1)
        np.testing.assert_array_equal(ep['has_action'], np.arange(n) < n - 1)
        assert ep['action'][-1] == -1 and np.all(
            (ep['action'][:-1] >= 0) & (ep['action'][:-1] < 17)
        )
        assert ep['reward'][0] == 0 and not ep['task_event'][0].any()
        assert np.all(ep['task_event'].sum(axis=0) <= 1)  # an achievement unlocks once
        assert ep['is_terminal'][-1] or n == MAX_STEPS  # death, or truncation
        assert not ep['is_terminal'][:-1].any()


def test_replay_reproduces_frames_rewards_and_unlocks(cfg, step_fn, worlds):
    """Alignment: stepping frame t's state with action[t] gives frame, reward and task events of
    row t + 1 (the collector's keys are public: rollout.rollout_keys / episode_step_key)."""
    meta, episodes = read_episodes(cfg, 'train')
    key_env = rollout.rollout_keys(cfg.collect.seed)[1]
    for pos in range(2):
        ep, e = episodes[pos], int(meta.splits['train'].episode_ids[pos])
        state, frame = world(worlds, e)
        np.testing.assert_array_equal(np.asarray(frame), ep['image'][0])
        for t in range(len(ep['step']) - 1):
            key = rollout.episode_step_key(key_env, e, t)
            state, ts = step_fn(state, jnp.int32(ep['action'][t]), key)
            np.testing.assert_array_equal(np.asarray(ts.frame), ep['image'][t + 1])
            assert float(ts.reward) == pytest.approx(ep['reward'][t + 1])
            np.testing.assert_array_equal(np.asarray(ts.unlocked), ep['task_event'][t + 1])
            assert bool(ts.is_last) == ep['is_last'][t + 1]


def test_env_steps_are_absorbing_after_the_last_frame(cfg, env, step_fn, worlds):
    # reset(key, n) makes the same worlds as the pool: world i = generate(fold_in(key, i)).
    states, ts = env.reset(rollout.rollout_keys(cfg.collect.seed)[0], cfg.collect.num_envs)
    assert ts.frame.shape == (4, 64, 64, 3) and ts.frame.dtype == jnp.uint8
    assert ts.is_first.all() and not ts.is_last.any() and ts.unlocked.shape == (4, 22)
    np.testing.assert_array_equal(np.asarray(ts.frame), np.asarray(worlds.frames))
    state, _ = world(worlds, 0)
    state = state.replace(timestep=like(state.timestep, MAX_STEPS - 2))
    state, ts = step_fn(state, jnp.int32(Action.NOOP.value), jax.random.PRNGKey(3))
    assert bool(ts.is_last) and not bool(ts.is_terminal)  # truncated at max_steps
    frozen, ts2 = step_fn(state, jnp.int32(Action.LEFT.value), jax.random.PRNGKey(4))
    assert float(ts2.reward) == 0 and not ts2.unlocked.any() and bool(ts2.is_last)
    np.testing.assert_array_equal(np.asarray(ts2.frame), np.asarray(ts.frame))
    jax.tree.map(np.testing.assert_array_equal, frozen, state)


def test_events_single_counts_repeats_and_leaves_the_step_alone(cfg, env, step_fn, worlds):
    """events_single: the same step from the state with achievements cleared. Everything but the
    achievements matches the real step (frame, inventory, map, mobs, RNG-driven moves), and a
    second tree felled is a collect_wood event though it unlocks nothing."""
    events_fn = jax.jit(env.events_single)
    clear_step = jax.jit(
        lambda s, a, k: step_fn(s.replace(achievements=jnp.zeros_like(s.achievements)), a, k)
    )
    state, _ = world(worlds, 2)
    rng = np.random.default_rng(0)
    for t in range(30):
        action, key = jnp.int32(rng.integers(17)), jax.random.PRNGKey(100 + t)
        real, ts = step_fn(state, action, key)
        cleared, ts_cleared = clear_step(state, action, key)
        np.testing.assert_array_equal(np.asarray(ts.frame), np.asarray(ts_cleared.frame))
        real_but_cleared = real.replace(achievements=cleared.achievements)
        same = jax.tree.map(np.array_equal, real_but_cleared, cleared)
        assert all(jax.tree.leaves(same)), t
        events = np.asarray(events_fn(state, action, key))
        np.testing.assert_array_equal(events, np.asarray(cleared.achievements))
        assert not (np.asarray(ts.unlocked) & ~events).any()  # every unlock is an event
        state = real
    # A tree in front, wood already collected once: no unlock, one event.
    pos = np.asarray(state.player_position)
    wood = ACHIEVEMENT_NAMES.index('collect_wood')
    tree = state.replace(
        map=state.map.at[pos[0], pos[1] + 1].set(BlockType.TREE.value),
        player_direction=like(state.player_direction, Action.RIGHT.value),
        achievements=state.achievements.at[wood].set(True),
        is_sleeping=jnp.zeros_like(state.is_sleeping),
    )
    do = jnp.int32(Action.DO.value)
    felled, ts = step_fn(tree, do, jax.random.PRNGKey(0))
    assert int(felled.inventory.wood) == int(tree.inventory.wood) + 1
    assert not np.asarray(ts.unlocked).any()
    events = np.asarray(events_fn(tree, do, jax.random.PRNGKey(0)))
    assert events[wood] and events.sum() == 1
    # A state that is already last is absorbing: no events either.
    last = tree.replace(timestep=like(tree.timestep, MAX_STEPS - 1))
    assert not np.asarray(events_fn(last, do, jax.random.PRNGKey(0))).any()


def test_every_task_event_dataset_has_the_same_episodes(cfg, step_fn, worlds, env):
    """task_events='every': the same frames, actions and rewards as 'first'; each row's events are
    the replayed step's events_single, a superset of the unlocks; 'first' keeps old datasets'
    settings (no new key), 'every' names another dataset."""
    every = copy.deepcopy(cfg)
    every.name, every.collect.task_events = 'craftax_test_every', 'every'
    assert 'task_events' not in collection_settings(cfg)
    assert collection_settings(every)['task_events'] == 'every'
    build.ensure_dataset(every, progress=False)
    _, first_eps = read_episodes(cfg, 'train')
    meta, every_eps = read_episodes(every, 'train')
    events_fn = jax.jit(env.events_single)
    key_env = rollout.rollout_keys(cfg.collect.seed)[1]
    repeats = 0
    for pos, (a, b) in enumerate(zip(first_eps, every_eps, strict=True)):
        for k in ('image', 'action', 'reward', 'is_last', 'is_terminal'):
            np.testing.assert_array_equal(a[k], b[k])
        assert not (a['task_event'] & ~b['task_event']).any()
        repeats += int(b['task_event'].sum() - a['task_event'].sum())
        e = int(meta.splits['train'].episode_ids[pos])
        state, _ = world(worlds, e)
        for t in range(len(b['step']) - 1):
            key = rollout.episode_step_key(key_env, e, t)
            action = jnp.int32(b['action'][t])
            events = np.asarray(events_fn(state, action, key))
            np.testing.assert_array_equal(events, b['task_event'][t + 1])
            state, _ = step_fn(state, action, key)
    assert repeats > 0  # the seeker fells more than one tree in 40 steps
    # The card counts events per episode next to the coverage; they differ only for 'every'.
    cards = [json.loads((build.dataset_path(c) / 'dataset_card.json').read_text())['overall']
             for c in (cfg, every)]  # fmt: skip
    assert cards[0]['coverage'] == cards[1]['coverage'] == cards[0]['events_per_episode']
    per = cards[1]['events_per_episode']
    stored = sum(int(e['task_event'].sum()) for e in every_eps + read_episodes(every, 'eval')[1])
    assert sum(per.values()) * cards[1]['episodes'] == pytest.approx(stored)
    assert any(per[t] > cards[1]['coverage'][t] for t in per)
    bad = copy.deepcopy(cfg)
    bad.name, bad.collect.task_events = 'craftax_test_bad', 'all'
    with pytest.raises(Exception, match='collect.task_events: .all. must be "first" or "every"'):
        build.ensure_dataset(bad, progress=False)
    assert not build.dataset_path(bad).exists()


@pytest.fixture(scope='module')
def seeker_setup(worlds):
    state, _ = world(worlds, 1)
    pos = np.asarray(state.player_position)
    area = state.map.at[pos[0] - 3 : pos[0] + 4, pos[1] - 3 : pos[1] + 4].set(BlockType.GRASS.value)
    no_mobs = state.zombies.replace(mask=jnp.zeros_like(state.zombies.mask))
    # Already found a sapling: the seeker would otherwise search the grass it faces first.
    got = state.achievements.at[Achievement.COLLECT_SAPLING.value].set(True)
    state = state.replace(
        achievements=got,
        map=area,
        mob_map=jnp.zeros_like(state.mob_map),
        zombies=no_mobs,
        cows=state.cows.replace(mask=jnp.zeros_like(state.cows.mask)),
        skeletons=state.skeletons.replace(mask=jnp.zeros_like(state.skeletons.mask)),
    )
    act = jax.jit(lambda s, k: policies.seeker_policy(s, policies.init_policy_state(), k, 0.0)[0])
    return state, pos, act


def test_seeker_mines_a_tree_it_faces_and_crafts_at_a_table(seeker_setup):
    state, pos, act = seeker_setup
    key = jax.random.PRNGKey(0)
    tree = state.replace(
        map=state.map.at[pos[0], pos[1] + 1].set(BlockType.TREE.value),
        player_direction=like(state.player_direction, Action.RIGHT.value),
    )
    assert int(act(tree, key)) == Action.DO.value
    facing_left = tree.replace(player_direction=like(state.player_direction, Action.LEFT.value))
    assert int(act(facing_left, key)) == Action.RIGHT.value  # turn towards the tree first
    table = state.replace(
        map=state.map.at[pos[0] + 1, pos[1] + 1].set(BlockType.CRAFTING_TABLE.value),
        inventory=state.inventory.replace(wood=like(state.inventory.wood, 1)),
    )
    assert int(act(table, key)) == Action.MAKE_WOOD_PICKAXE.value


def test_seeker_fights_an_adjacent_zombie(seeker_setup):
    state, pos, act = seeker_setup
    z = state.zombies
    zombie = state.replace(
        zombies=z.replace(
            position=z.position.at[0].set(jnp.asarray([pos[0] + 1, pos[1]])),
            mask=z.mask.at[0].set(True),
            health=z.health.at[0].set(5),
        ),
        player_direction=like(state.player_direction, Action.UP.value),
    )
    assert int(act(zombie, jax.random.PRNGKey(0))) == Action.DOWN.value
    facing = zombie.replace(player_direction=like(state.player_direction, Action.DOWN.value))
    assert int(act(facing, jax.random.PRNGKey(0))) == Action.DO.value


def test_view_seeker_acts_only_on_what_its_frame_shows(seeker_setup):
    """Cells and mobs out of the 7 x 9 view change the plain seeker's moves, not view_seeker's."""
    state, pos, _ = seeker_setup
    seen = np.zeros(state.map.shape, bool)
    seen[pos[0] - 3 : pos[0] + 4, pos[1] - 4 : pos[1] + 5] = True
    assert int(policies.view_mask().sum()) == 7 * 9 == seen.sum()
    grass = jnp.where(seen, BlockType.GRASS.value, state.map)
    quiet = state.replace(map=grass)
    # Trees everywhere out of view, and a zombie four rows below the player (just out of view).
    z = state.zombies
    hidden = quiet.replace(
        map=jnp.where(seen, grass, BlockType.TREE.value),
        zombies=z.replace(
            position=z.position.at[0].set(jnp.asarray([pos[0] + 4, pos[1]])),
            mask=z.mask.at[0].set(True),
            health=z.health.at[0].set(5),
        ),
    )

    policy = {
        v: jax.jit(
            lambda s, k, v=v: policies.seeker_policy(
                s, policies.init_policy_state(), k, 0.0, visible_only=v
            )[0]
        )
        for v in (False, True)
    }  # one compile per policy, not per call

    def actions(s, visible_only):
        return [int(policy[visible_only](s, jax.random.PRNGKey(i))) for i in range(8)]

    assert actions(hidden, True) == actions(quiet, True)
    # With nothing in view it explores in a random direction; the plain seeker walks to a tree.
    assert len(set(actions(quiet, True))) > 1
    seeker = actions(hidden, False)
    assert len(set(seeker)) == 1 and seeker != actions(quiet, False)
    # act() dispatches policy id 2 to the view seeker (same key split as for the others).
    pid = policies.POLICY_NAMES.index('view_seeker')
    key = jax.random.PRNGKey(5)
    a, _ = policies.act(jnp.int32(pid), hidden, policies.init_policy_state(), key,
                        max_repeat=4, epsilon=0.0, used=(0, 1, 2))  # fmt: skip
    want, _ = policies.seeker_policy(hidden, policies.init_policy_state(),
                                     jax.random.split(key)[1], 0.0, visible_only=True)  # fmt: skip
    assert int(a) == int(want)


def test_seeker_tries_replace_its_action_with_a_place_or_make_action(seeker_setup):
    """try_epsilon: the step's action becomes one of the ten place/make actions, uniformly, with
    that probability; every other step keeps the action the seeker takes without tries."""
    state, pos, plain = seeker_setup
    names = sorted(Action(a).name.lower() for a in policies.TRY_ACTIONS)
    assert names == sorted(n for n in (a.name.lower() for a in Action)
                           if n.startswith(('place_', 'make_')))  # fmt: skip
    assert len(names) == 10
    table = state.replace(
        map=state.map.at[pos[0] + 1, pos[1] + 1].set(BlockType.CRAFTING_TABLE.value),
        inventory=state.inventory.replace(wood=like(state.inventory.wood, 1)),
    )
    tried = {
        p: jax.jit(
            lambda s, k, p=p: policies.seeker_policy(
                s, policies.init_policy_state(), k, 0.05, try_epsilon=p
            )[0]
        )
        for p in (0.3, 1.0)
    }
    noisy = jax.jit(
        lambda s, k: policies.seeker_policy(s, policies.init_policy_state(), k, 0.05)[0]
    )
    keys = [jax.random.PRNGKey(i) for i in range(400)]
    base = np.asarray([int(noisy(table, k)) for k in keys])
    some = np.asarray([int(tried[0.3](table, k)) for k in keys])
    replaced = some != base
    assert np.isin(some[replaced], policies.TRY_ACTIONS).all()
    # A try can draw the action the seeker takes anyway (1 in 10), so about 0.3 * 0.9 differ.
    assert 0.2 < replaced.mean() < 0.35
    every = np.asarray([int(tried[1.0](table, k)) for k in keys])
    counts = np.bincount(every, minlength=17)[list(policies.TRY_ACTIONS)]
    assert counts.sum() == len(keys) and counts.min() >= 20  # each of the ten about 40 times
    assert (
        int(noisy(table, keys[0])) == int(plain(table, keys[0])) == Action.MAKE_WOOD_PICKAXE.value
    )


def test_tries_name_another_dataset_and_leave_the_random_episodes_alone(cfg):
    """try_epsilon = 0 keeps the settings of datasets built before tries (no new key); > 0 is
    another dataset whose random-policy episodes are the same and whose seeker presses place/make
    actions far more often; a value outside [0, 1] is an error that builds nothing."""
    assert 'try_epsilon' not in collection_settings(cfg)
    tries = copy.deepcopy(cfg)
    tries.collect.try_epsilon = 0.5
    assert collection_settings(tries)['try_epsilon'] == 0.5
    with pytest.raises(Exception, match=r"different settings for \['try_epsilon'\]"):
        build.ensure_dataset(tries, progress=False)
    tries.name = 'craftax_test_tries'
    build.ensure_dataset(tries, progress=False)
    plain_meta, plain_eps = read_episodes(cfg, 'train')
    meta, tried_eps = read_episodes(tries, 'train')
    np.testing.assert_array_equal(
        meta.splits['train'].episode_ids, plain_meta.splits['train'].episode_ids
    )
    share = {}
    for policy, a, b in zip(meta.splits['train'].policies, plain_eps, tried_eps, strict=True):
        if policy == 'random':
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['action'], b['action'])
        else:
            for name, ep in (('plain', a), ('tries', b)):
                acts = ep['action'][:-1]
                share[name] = np.isin(acts, policies.TRY_ACTIONS).mean()
    assert share['tries'] > 0.3 and share['tries'] > share['plain'] + 0.2
    bad = copy.deepcopy(cfg)
    bad.name, bad.collect.try_epsilon = 'craftax_test_bad_tries', 1.5
    with pytest.raises(Exception, match=r'collect.try_epsilon: 1.5 must be in \[0, 1\]'):
        build.ensure_dataset(bad, progress=False)
    assert not build.dataset_path(bad).exists()


def test_policy_mix_weight_zero_names_the_same_dataset(cfg):
    """A mix naming a policy at weight 0 is the mix without it: the built dataset is reused."""
    same = copy.deepcopy(cfg)
    same.collect.policy_mix = ml_collections.ConfigDict(
        {**cfg.collect.policy_mix.to_dict(), 'view_seeker': 0.0}
    )
    assert collection_settings(same) == collection_settings(cfg)
    assert build.ensure_dataset(same, progress=False) == build.ensure_dataset(cfg, progress=False)
    other = copy.deepcopy(cfg)
    other.collect.policy_mix = ml_collections.ConfigDict({'random': 0.5, 'view_seeker': 0.5})
    with pytest.raises(Exception, match='different settings'):
        build.ensure_dataset(other, progress=False)


def test_random_policy_repeats_actions():
    p = policies.init_policy_state()
    actions = []
    for i in range(40):
        a, p = policies.random_policy(p, jax.random.PRNGKey(i), max_repeat=3)
        actions.append(int(a))
    runs, count = [], 1
    for prev, cur in zip(actions[:-1], actions[1:], strict=True):
        if cur == prev:
            count += 1
        else:
            runs.append(count)
            count = 1
    assert max(runs) <= 6 and np.mean(runs) > 1.3  # repeats of 1..3 (twice in a row is rare)
    assert len(set(actions)) > 5


def test_policy_mix_assignment():
    ids = rollout.assign_policies(10, {'random': 0.3, 'seeker': 0.7}, seed=0)
    assert ids.tolist().count(0) == 3 and ids.tolist().count(1) == 7
    assert not np.array_equal(ids, np.sort(ids))  # interleaved, so both splits get both
    with pytest.raises(ValueError, match='unknown policies'):
        rollout.assign_policies(10, {'expert': 1.0}, seed=0)
    assert len(ACHIEVEMENT_NAMES) == 22 and ACHIEVEMENT_NAMES[0] == 'collect_wood'
