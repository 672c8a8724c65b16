"""Dataset build + grain pipeline on synthetic episodes whose values encode where they came from.

Episode e (split position = e for train) has length LENGTHS[e]; frame t stores (e, t) in its
pixels; action[t] = (e + t) % 17 (none at the last frame); reward[t] = t / 2 (0 at t = 0); task
(e + 3) % 22 fires at step 3 and task 21 at step L - 1.
"""

import json

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dreamer4_jax.actions import craftax_action_space
from dreamer4_jax.data import build, pipeline
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.envs.craftax import ACHIEVEMENT_NAMES

LENGTHS = [20, 5, 17, 8, 30, 12]  # episode 1 is shorter than T = 8; episode 5 is held out
T, B = 8, 4


def synthetic_episode(e: int, length: int) -> dict:
    t = np.arange(length)
    image = np.zeros((length, 64, 64, 3), np.uint8)
    image[..., 0] = e
    image[..., 1] = t[:, None, None]
    has_action = t < length - 1
    events = np.zeros((length, 22), bool)
    events[3, (e + 3) % 22] = True
    events[length - 1, 21] = True
    last = t == length - 1
    return {
        'episode_id': e,
        'policy': 'even' if e % 2 == 0 else 'odd',
        'image': image,
        'action': {'discrete': np.where(has_action, (e + t) % 17, -1).astype(np.int32)},
        'has_action': has_action,
        'reward': np.where(t > 0, t / 2, 0).astype(np.float32),
        'task_event': events,
        'is_first': t == 0,
        'is_last': last,
        'is_terminal': last & (e % 2 == 1),
    }


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
    c = default_data_config()
    c.dir = str(tmp_path_factory.mktemp('data'))
    c.name = 'synthetic'
    c.window_length = T
    c.eval_fraction = 0.2
    c.num_threads = 1
    episodes = (synthetic_episode(e, n) for e, n in enumerate(LENGTHS))
    build.build_dataset_from_episodes(
        c, episodes, action_space=craftax_action_space(), task_names=ACHIEVEMENT_NAMES
    )
    return c


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def check_provenance(batch):
    """Every row is one episode's consecutive steps and every value matches the generator."""
    e, t = batch['episode_id'], batch['step']
    assert np.all(e == e[:, :1]) and np.all(np.diff(t, axis=1) == 1)
    np.testing.assert_array_equal(batch['image'][..., 0].max(axis=(-1, -2)), e)
    np.testing.assert_array_equal(batch['image'][..., 1].max(axis=(-1, -2)), t)
    np.testing.assert_allclose(batch['reward'], np.where(t > 0, t / 2, 0))
    labeled = batch['has_action']
    np.testing.assert_array_equal(batch['action']['discrete'][labeled], ((e + t) % 17)[labeled])
    assert np.all(batch['action']['discrete'][~labeled] == -1)
    length = np.asarray(LENGTHS)[e]
    np.testing.assert_array_equal(batch['is_last'], t == length - 1)
    np.testing.assert_array_equal(batch['is_first'], t == 0)


def test_schema_dtypes_and_shapes(cfg):
    (batch,) = take(pipeline.make_dataset(cfg, batch_size_per_process=B), 1)
    want = {
        'image': ((B, T, 64, 64, 3), np.uint8),
        'has_action': ((B, T), np.bool_),
        'reward': ((B, T), np.float32),
        'task_reward': ((B, T, 22), np.float32),
        'is_first': ((B, T), np.bool_),
        'is_last': ((B, T), np.bool_),
        'is_terminal': ((B, T), np.bool_),
        'relevant': ((B, T), np.bool_),
        'task_id': ((B, T), np.int32),
        'episode_id': ((B, T), np.int32),
        'step': ((B, T), np.int32),
    }
    for key, (shape, dtype) in want.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert set(batch['action']) == {'discrete'}
    assert batch['action']['discrete'].shape == (B, T)
    assert batch['action']['discrete'].dtype == np.int32
    assert set(batch) == set(want) | {'action'}
    check_provenance(batch)
    # batch_spec (used for ahead-of-time compilation) describes exactly this batch.
    spec = pipeline.batch_spec(cfg, B)
    got = jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), batch)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), spec) == got


def test_windows_respect_episode_boundaries(cfg):
    meta = build.load_meta(cfg)
    train = meta.splits['train']
    assert train.episode_ids.tolist() == [0, 1, 2, 3, 4]
    assert meta.splits['eval'].episode_ids.tolist() == [5]
    starts = pipeline.uniform_windows(train, T)
    # max(L - T + 1, 0) windows per episode; the 5-step episode has none, the 8-step one has 1.
    assert len(starts) == 13 + 0 + 10 + 1 + 23
    seen = set()
    for b in pipeline.make_dataset(cfg, batch_size_per_process=1, num_epochs=1):
        check_provenance(b)
        seen.add((int(b['episode_id'][0, 0]), int(b['step'][0, 0])))
    assert len(seen) == len(starts) and 1 not in {e for e, _ in seen}
    assert (3, 0) in seen and all(s == 0 for e, s in seen if e == 3)
    assert all(s + T <= LENGTHS[e] for e, s in seen)


def test_one_epoch_sharded_across_processes_is_disjoint_and_complete(cfg):
    per_process = []
    for p in range(2):
        ds = pipeline.make_dataset(cfg, batch_size_per_process=1, process_index=p,
                                   process_count=2, num_epochs=1)  # fmt: skip
        per_process.append({(int(b['episode_id'][0, 0]), int(b['step'][0, 0])) for b in ds})
    assert not per_process[0] & per_process[1]
    everything = {(e, s) for e, n in enumerate(LENGTHS[:5]) for s in range(n - T + 1)}
    assert per_process[0] | per_process[1] == everything


def test_same_seed_same_batches_other_seed_differs(cfg):
    a = take(pipeline.make_dataset(cfg, batch_size_per_process=B, seed=7), 5)
    b = take(pipeline.make_dataset(cfg, batch_size_per_process=B, seed=7), 5)
    c = take(pipeline.make_dataset(cfg, batch_size_per_process=B, seed=8), 5)
    for x, y in zip(a, b, strict=True):
        jax.tree.map(np.testing.assert_array_equal, x, y)
    assert any(not np.array_equal(x['step'], y['step']) for x, y in zip(a, c, strict=True))


def test_resume_mid_epoch_gives_the_uninterrupted_batches(cfg, tmp_path):
    def make():
        return pipeline.make_dataset(cfg, batch_size_per_process=B, seed=1, mode='mixture')

    reference = take(make(), 20)  # 20 * 4 rows > the 47 uniform windows: crosses an epoch
    it = iter(make())
    for _ in range(7):
        next(it)
    state = it.get_state()
    resumed = iter(make())
    resumed.set_state(state)
    for k in range(7, 20):
        jax.tree.map(np.testing.assert_array_equal, next(resumed), reference[k])
    # The same through orbax, as the trainer saves it.
    it = iter(make())
    for _ in range(11):
        next(it)
    with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
        mngr.save(11, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    restored = iter(make())
    with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
        mngr.restore(11, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    for k in range(11, 14):
        jax.tree.map(np.testing.assert_array_equal, next(restored), reference[k])


@pytest.mark.parametrize(
    ('first', 'fraction', 'labeled_episodes'),
    [(2, 1.0, {0, 1}), (-1, 0.4, {0, 1}), (0, 1.0, set()), (-1, 1.0, {0, 1, 2, 3, 4})],
)
def test_partial_labels_mask_later_episodes(cfg, first, fraction, labeled_episodes):
    c = cfg.copy_and_resolve_references()
    c.label_first_episodes, c.label_fraction = first, fraction
    for b in pipeline.make_dataset(c, batch_size_per_process=B, num_epochs=1):
        check_provenance(b)  # labeled actions are the true ones, the rest the placeholder
        e, t = b['episode_id'], b['step']
        expected = np.isin(e, list(labeled_episodes)) & (t < np.asarray(LENGTHS)[e] - 1)
        np.testing.assert_array_equal(b['has_action'], expected)
    # Held-out episodes keep their labels.
    (ev,) = take(pipeline.make_dataset(c, split='eval', batch_size_per_process=1), 1)
    assert ev['has_action'].sum() >= T - 1


def test_task_rewards_line_up_with_events(cfg):
    for b in pipeline.make_dataset(cfg, batch_size_per_process=B, num_epochs=1):
        e, t = b['episode_id'], b['step']
        want = np.zeros((B, T, 22), np.float32)
        rows, cols = np.nonzero(t == 3)
        want[rows, cols, (e[rows, cols] + 3) % 22] = 1.0
        rows, cols = np.nonzero(t == np.asarray(LENGTHS)[e] - 1)
        want[rows, cols, 21] = 1.0
        np.testing.assert_array_equal(b['task_reward'], want)


def test_relevant_windows_contain_their_event_after_the_first_frame(cfg):
    ds = pipeline.make_dataset(cfg, batch_size_per_process=B, mode='relevant', num_epochs=1)
    count = 0
    for b in ds:
        check_provenance(b)
        assert b['relevant'].all()
        task = b['task_id'][:, 0]
        assert np.all(b['task_id'] == task[:, None])
        hit = b['task_reward'][np.arange(B), :, task]  # [B, T]
        assert np.all(hit[:, 1:].any(axis=1))
        count += B
    # (window, event) pairs: the step-3 events give starts 0..min(2, L - T) (3 + 3 + 1 + 3), the
    # step L - 1 events only start L - T (4 episodes); one epoch drops the last partial batch.
    pairs = 10 + 4
    assert count == pairs // B * B


def test_relevant_tasks_filter_and_mixture_rows(cfg):
    name = ACHIEVEMENT_NAMES[3]  # fires at step 3 of episode 0 only
    ds = pipeline.make_dataset(cfg, batch_size_per_process=B, mode='relevant',
                               relevant_tasks=name)  # fmt: skip
    for b in take(ds, 3):
        assert np.all(b['episode_id'] == 0) and np.all(b['task_id'] == 3)
    ds = pipeline.make_dataset(cfg, batch_size_per_process=B, mode='mixture', mixture_ratio=0.5)
    for b in take(ds, 5):
        np.testing.assert_array_equal(b['relevant'][:, 0], [True, True, False, False])
        np.testing.assert_array_equal(b['task_id'][2:], -1)


def test_ladder_prompts_by_hand():
    """The first ladder task not unlocked by the window's frame; an event at step s counts from
    frame s on; out-of-order unlocks leave the earlier rung as the prompt; all done: the last."""
    split = build.SplitMeta(
        episode_ids=np.array([0, 1]),
        lengths=np.array([10, 6]),
        policies=('a', 'b'),
        events=np.array([[0, 2, 0], [0, 5, 1], [0, 7, 2], [1, 1, 1]]),
    )
    ladder = np.array([0, 1, 2])
    # Episode 0 starts at record 0, episode 1 at record 10.
    starts = np.array([0, 0, 1, 3, 6, 10, 10])
    frames = [1, 2, 1, 2, 1, 0, 5]
    got = [int(pipeline.ladder_prompts(split, starts[i : i + 1], ladder, f)[0])
           for i, f in enumerate(frames)]  # fmt: skip
    # (0, 1): step 1, nothing yet -> 0; (0, 2): step 2, task 0 done -> 1; (1, 1): step 2 -> 1;
    # (3, 2): step 5, tasks 0 and 1 -> 2; (6, 1): step 7, all three -> the last, 2;
    # episode 1 unlocks task 1 only: task 0 stays the prompt.
    assert got == [0, 1, 1, 2, 2, 0, 0]
    np.testing.assert_array_equal(pipeline.ladder_prompts(split, starts, ladder, 2),
                                  [1, 1, 1, 2, 2, 0, 0])  # fmt: skip


def test_uniform_rows_carry_the_ladder_prompt(cfg):
    """make_dataset(ladder=...): every uniform row's task_id is the prompt of the ladder at its
    frame `ladder_frame`, from its episode's events before the window too; relevant rows keep
    their event's task."""
    names = ACHIEVEMENT_NAMES
    rungs = [3, 21, 0]  # task (e + 3) % 22 fires at step 3 (task 3: episode 0), 21 at L - 1
    ladder = ','.join(names[k] for k in rungs)
    frame = 2
    ds = pipeline.make_dataset(cfg, batch_size_per_process=B, mode='mixture', mixture_ratio=0.5,
                               ladder=ladder, ladder_frame=frame)  # fmt: skip
    seen = set()
    for b in take(ds, 20):
        check_provenance(b)
        np.testing.assert_array_equal(b['relevant'][:, 0], [True, True, False, False])
        assert np.all(b['task_reward'][np.arange(2), :, b['task_id'][:2, 0]][:, 1:].any(axis=1))
        for e, step0, task in zip(b['episode_id'][2:, 0], b['step'][2:, 0], b['task_id'][2:, 0],
                                  strict=True):  # fmt: skip
            at = step0 + frame
            unlocked = {(e + 3) % 22} if at >= 3 else set()
            unlocked |= {21} if at >= LENGTHS[e] - 1 else set()
            want = next((k for k in rungs if k not in unlocked), rungs[-1])
            assert task == want, (e, step0)
            seen.add(int(task))
    # Episode 0 passes the first rung at step 3; no window reaches an episode's last step.
    assert seen == {3, 21}
    with pytest.raises(ValueError, match='has none'):
        pipeline.make_dataset(cfg, batch_size_per_process=B, mode='relevant', ladder=ladder)
    with pytest.raises(ValueError, match='outside the window'):
        pipeline.make_dataset(cfg, batch_size_per_process=B, ladder=ladder, ladder_frame=T)
    with pytest.raises(ValueError, match='the ladder'):
        pipeline.make_dataset(cfg, batch_size_per_process=B, ladder='collect_wood,fly')


def test_clear_errors(cfg):
    missing = cfg.copy_and_resolve_references()
    missing.name = 'nothing_here'
    with pytest.raises(FileNotFoundError, match=r"config.data.name='nothing_here'.*collect"):
        pipeline.make_dataset(missing, batch_size_per_process=B)
    wrong = cfg.copy_and_resolve_references()
    wrong.resolution = 128
    with pytest.raises(ValueError, match=r'data.resolution=128.*set data.resolution=64'):
        pipeline.make_dataset(wrong, batch_size_per_process=B)
    with pytest.raises(ValueError, match='unknown or empty task names'):
        pipeline.make_dataset(cfg, batch_size_per_process=B, mode='relevant',
                              relevant_tasks='mine_unobtainium')  # fmt: skip
    with pytest.raises(ValueError, match='no task-relevant'):
        pipeline.make_dataset(cfg, batch_size_per_process=B, mode='relevant',
                              relevant_tasks='collect_diamond')  # fmt: skip
    with pytest.raises(ValueError, match='no uniform'):
        pipeline.make_dataset(cfg, batch_size_per_process=B, window_length=31)
    bad = cfg.copy_and_resolve_references()
    bad.label_fraction = 1.5
    with pytest.raises(ValueError, match=r'config.data.label_fraction: 1.5 must be in \[0, 1\]'):
        pipeline.make_dataset(bad, batch_size_per_process=B)


def test_build_is_atomic_and_card_counts(cfg):
    with pytest.raises(FileExistsError, match='already exists'):
        build.build_dataset_from_episodes(cfg, [], action_space=craftax_action_space(),
                                          task_names=ACHIEVEMENT_NAMES)  # fmt: skip
    broken = cfg.copy_and_resolve_references()
    broken.name = 'broken'

    def episodes():
        yield synthetic_episode(0, 10)
        raise KeyboardInterrupt  # a collection killed half-way

    with pytest.raises(KeyboardInterrupt):
        build.build_dataset_from_episodes(broken, episodes(), action_space=craftax_action_space(),
                                          task_names=ACHIEVEMENT_NAMES)  # fmt: skip
    root = build.dataset_path(cfg).parent
    assert sorted(p.name for p in root.iterdir()) == ['synthetic']  # no partial folder left
    card = json.loads((build.dataset_path(cfg) / 'dataset_card.json').read_text())
    assert card['episodes'] == 6 and card['frames'] == sum(LENGTHS)
    assert card['action_label_fraction'] == pytest.approx((sum(LENGTHS) - 6) / sum(LENGTHS))
    assert card['overall']['coverage']['make_iron_sword'] == 1.0  # task 21 ends every episode
    assert card['overall']['coverage'][ACHIEVEMENT_NAMES[3]] == pytest.approx(1 / 6)
    assert card['policies']['odd']['terminal_fraction'] == 1.0
    assert card['splits']['eval']['episodes'] == 1
    md = (build.dataset_path(cfg) / 'dataset_card.md').read_text()
    assert '| make_iron_sword | 1.00 |' in md


def test_batch_becomes_a_global_array_over_8_devices(cfg):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    (batch,) = take(pipeline.make_dataset(cfg, batch_size_per_process=8), 1)
    arrays = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    assert arrays['image'].shape == (8, T, 64, 64, 3)
    np.testing.assert_array_equal(np.asarray(arrays['step']), batch['step'])
