"""Play sessions on tiny random runs saved as real checkpoints: loading, the cached step against
the uncached reference, determinism, the real env side by side, export."""

import functools
import io
import os

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from play_runs import NUM_TASKS, FakeEnv, make_runs

from dreamer4_jax import generation
from dreamer4_jax.envs import craftax
from dreamer4_jax.play import session as play
from dreamer4_jax.tokenizer import Tokenizer

ACTIONS = [1, 5, 2, 3, 4]  # 6 frames: more than the dynamics window and the decoder's context


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    return make_runs(str(tmp_path_factory.mktemp('play')))


@pytest.fixture(scope='module', params=['dynamics', 'agent'])
def loaded(runs, request):
    model, params, run = play.load_model(runs[request.param])
    assert run.phase == request.param
    return model, params


def test_find_run_prefers_imagination_then_agent_then_dynamics(tmp_path):
    def run_dir(name):
        os.makedirs(tmp_path / name / 'checkpoints' / '10')
        return str(tmp_path / name)

    with pytest.raises(FileNotFoundError, match='no checkpoints'):
        play.find_run(str(tmp_path))
    dynamics = run_dir('dynamics')
    assert play.find_run(str(tmp_path)) == dynamics
    os.makedirs(tmp_path / 'agent' / 'checkpoints')  # started, nothing saved yet: skipped
    assert play.find_run(str(tmp_path)) == dynamics
    agent = run_dir('agent')
    assert play.find_run(str(tmp_path)) == agent
    imagination = run_dir('imagination')
    assert play.find_run(str(tmp_path)) == imagination
    assert play.find_run(dynamics) == dynamics  # a run folder is played as it is


def test_step_equals_the_uncached_reference(loaded):
    model, params = loaded
    s = play.PlaySession(model, params, env=FakeEnv(), real_env=True)
    first = s.reset(3)
    results = [s.step(a) for a in ACTIONS]
    for i, r in enumerate(results):
        assert r.frame.shape == (64, 64, 3) and r.frame.dtype == np.uint8 and r.index == i + 1
    assert s.index == len(ACTIONS) and len(s.frames) == len(ACTIONS) + 1

    # Latents: generation.rollout without a cache, from the same first frame, actions and keys
    # (reset(seed) documents its key: fold_in(key(seed), 1)).
    tok = model.tokenizer
    horizon = len(ACTIONS)
    encode = jax.jit(lambda p, x: tok.apply({'params': p}, x, method=Tokenizer.encode))
    decode = jax.jit(lambda p, z: tok.apply({'params': p}, z, method=Tokenizer.decode))
    rollout = jax.jit(
        functools.partial(
            generation.rollout,
            model.dynamics,
            horizon=horizon,
            sampling=model.sampling,
            cached=False,
        )
    )
    z0 = encode(params['tokenizer'], jnp.asarray(first)[None, None] / 255.0)
    reference = rollout(
        params['dynamics'],
        z0,
        {'discrete': jnp.asarray([[0, *ACTIONS]], jnp.int32)},
        jnp.asarray([[False] + [True] * horizon]),
        jax.random.fold_in(jax.random.key(3), 1),
    )
    np.testing.assert_allclose(np.stack(list(s.latents)[1:]), reference[0], atol=1e-4)

    # Frames: the decoder's cache keeps C - 1 past frames (C = model.context), so frame t is the
    # last frame of Tokenizer.decode over frames max(0, t - C + 1) .. t (causal: the first C
    # frames come from one decode of the first C).
    c = model.context
    z_all = jnp.concatenate([z0, reference], axis=1)
    windows = [z_all[:, :c]] + [z_all[:, t - c + 1 : t + 1] for t in range(c, horizon + 1)]
    pixels = [decode(params['tokenizer'], w)[0] for w in windows]
    pixels = jnp.concatenate([pixels[0][1:]] + [p[-1:] for p in pixels[1:]])
    expected = np.asarray(jnp.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert len(expected) == horizon
    for r, e in zip(results, expected, strict=True):
        np.testing.assert_allclose(r.frame.astype(int), e.astype(int), atol=1)
    assert len({r.frame.tobytes() for r in results}) == horizon  # every key press: a new frame

    # The real env took the same actions from the same world.
    real = first
    for a, r in zip(ACTIONS, results, strict=True):
        real = np.roll(real, a, axis=1)
        np.testing.assert_array_equal(r.real_frame, real)
    if model.has_reward:
        assert s.task == craftax.ACHIEVEMENT_NAMES[0] and len(s.task_names) == NUM_TASKS
        assert all(np.isfinite(r.reward) for r in results)
        # FakeEnv unlocks achievement a with action a; the prompted task is task 0.
        assert [r.real_reward for r in results] == [0.0] * horizon
    else:
        assert s.task is None and all(r.reward is None for r in results)


def test_reset_is_deterministic_for_a_seed(loaded):
    model, params = loaded
    s = play.PlaySession(model, params, env=FakeEnv())

    def episode(seed):
        return [s.reset(seed)] + [s.step(a).frame for a in ACTIONS[:3]]

    a, b, c = episode(7), episode(7), episode(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])  # another world
    assert s.index == 3 and len(s.frames) == 4  # reset starts the record afresh


def test_task_prompt_changes_only_the_reward(runs):
    model, params, _ = play.load_model(runs['agent'])
    s = play.PlaySession(model, params, env=FakeEnv(), task=craftax.ACHIEVEMENT_NAMES[2])
    assert s.task_id == 2
    s.reset(0)
    first = s.step(1)
    s.reset(0)
    s.set_task(craftax.ACHIEVEMENT_NAMES[4])
    other = s.step(1)
    # Nothing reads the agent tokens (PAPER 9.1): same frame; the reward head sees the task.
    np.testing.assert_array_equal(first.frame, other.frame)
    assert first.reward != other.reward and other.task == craftax.ACHIEVEMENT_NAMES[4]
    with pytest.raises(ValueError, match='unknown task'):
        s.set_task('collect_unicorns')
    with pytest.raises(ValueError, match='not in'):
        s.step(17)


def test_export_gif_and_mp4(loaded):
    model, params = loaded
    s = play.PlaySession(model, params, env=FakeEnv(), real_env=True)
    with pytest.raises(RuntimeError, match='reset'):
        s.step(0)
    s.reset(0)
    for a in ACTIONS[:3]:
        s.step(a)
    for fmt in ('gif', 'mp4'):
        video = iio.imread(io.BytesIO(s.export(fmt, scale=2)), extension=f'.{fmt}', index=None)
        # generated | 2 px gap | real, scaled 2x; 4 frames
        assert video.shape[:3] == (4, 128, 2 * (64 + 2 + 64)), fmt
    with pytest.raises(ValueError, match='gif'):
        s.export('avi')


@pytest.mark.slow
def test_real_craftax_first_frame_and_side_by_side(runs):
    """With the real Craftax env (world generation and its step compile for about 40 s)."""
    model, params, _ = play.load_model(runs['dynamics'])
    env = craftax.CraftaxEnv(max_steps=100)
    s = play.PlaySession(model, params, env=env, real_env=True)
    first = s.reset(5)
    _, ts = env.reset(jax.random.fold_in(jax.random.key(5), 0), 1)
    np.testing.assert_array_equal(first, np.asarray(ts.frame[0]))
    assert first.shape == craftax.FRAME_SHAPE and first.std() > 0  # a rendered world
    r = s.step(craftax.ACTION_NAMES.index('noop'))
    assert r.real_frame.shape == craftax.FRAME_SHAPE and not r.real_done
