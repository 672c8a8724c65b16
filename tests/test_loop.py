"""The shared loop: kill/resume exactness, one compile, non-finite stop, checkpoint errors."""

import os

import jax
import numpy as np
import pytest
from toy_runs import short_toy_config

from dreamer4_jax import checkpoint, pretrained
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.train import loop, toy


def _params(result):
    return {k: np.asarray(v) for k, v in result.state.params.items()}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('full') / 'run')
    return _params(
        loop.run(toy.make_phase(short_toy_config()), short_toy_config(), workdir)
    ), workdir


def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    workdir = str(tmp_path / 'run')
    config = short_toy_config()
    config.debug.sigterm_at_step = 27  # a real SIGTERM, sent to this process mid-run
    first = loop.run(toy.make_phase(config), config, workdir)
    assert first.preempted and first.step == 27
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))) == [20, 27]
    second = loop.run(toy.make_phase(short_toy_config()), short_toy_config(), workdir)
    assert not second.preempted and second.step == 40
    for name, value in reference.items():
        np.testing.assert_array_equal(_params(second)[name], value)


def test_resume_onto_a_different_mesh(tmp_path, uninterrupted):
    """Saved on a (2 data, 2 fsdp, 2 model) mesh of 8 devices, finished on 1 device."""
    reference, _ = uninterrupted
    workdir = str(tmp_path / 'run')
    config = short_toy_config()  # same length (the LR schedule depends on it); stopped at step 20
    config.mesh.shape = (2, 2, 2)
    config.debug.sigterm_at_step = 20
    assert loop.run(toy.make_phase(config), config, workdir).preempted
    config = short_toy_config()
    config.mesh.num_devices = 1
    config.mesh.shape = (1, 1, 1)
    result = loop.run(toy.make_phase(config), config, workdir)
    assert result.step == 40 and len(result.mesh.devices.flat) == 1
    for name, value in reference.items():
        np.testing.assert_allclose(_params(result)[name], value, rtol=2e-4, atol=2e-5)


def test_train_step_is_traced_once(tmp_path):
    config = short_toy_config(steps=30, eval_every=10)
    base = toy.make_phase(config)
    traces = []

    def counting_step(state, batch, rng):
        traces.append(1)
        return base.train_step(state, batch, rng)

    evals = []
    phase = loop.Phase(
        name='toy',
        init=base.init,
        train_step=counting_step,
        make_data=base.make_data,
        evaluate=lambda state, step, workdir: evals.append(step) or {'score': float(step)},
    )
    loop.run(phase, config, str(tmp_path / 'run'))
    assert len(traces) == 1  # checkpoints and evaluations in between never retrace
    assert evals == [10, 20, 30]
    lines = open(tmp_path / 'run' / 'metrics.jsonl').read().splitlines()
    assert any('"eval/score": 20.0' in line for line in lines)


def test_non_finite_loss_stops_with_term_and_step(tmp_path):
    config = short_toy_config(steps=40, learning_rate=1e12, grad_clip=1e12, warmup_steps=1)
    workdir = str(tmp_path / 'run')
    with pytest.raises(loop.NonFiniteLossError, match=r"'loss' is (nan|inf) at step \d+"):
        loop.run(toy.make_phase(config), config, workdir)
    # No checkpoint was written from a non-finite state.
    ckpts = os.path.join(workdir, 'checkpoints')
    for step in os.listdir(ckpts) if os.path.isdir(ckpts) else []:
        assert int(step) < 20


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path):
    workdir = str(tmp_path / 'run')
    loop.run(toy.make_phase(short_toy_config(steps=20)), short_toy_config(steps=20), workdir)
    step_dir = os.path.join(workdir, 'checkpoints', '20')
    for root, _, files in os.walk(os.path.join(step_dir, 'state')):
        for f in files:
            with open(os.path.join(root, f), 'wb') as fh:
                fh.write(b'garbage')
    before = sorted(os.listdir(step_dir))
    with pytest.raises(checkpoint.CheckpointError, match=r'checkpoints/20'):
        loop.run(toy.make_phase(short_toy_config()), short_toy_config(), workdir)
    assert sorted(os.listdir(step_dir)) == before
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['20']


def test_incompatible_checkpoint_names_the_config_difference(tmp_path):
    workdir = str(tmp_path / 'run')
    loop.run(toy.make_phase(short_toy_config(steps=20)), short_toy_config(steps=20), workdir)
    config = short_toy_config()
    config.toy.width = 32
    with pytest.raises(checkpoint.CheckpointError, match=r'toy\.width: checkpoint 64 vs now 32'):
        loop.run(toy.make_phase(config), config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['20']


def test_resume_past_train_steps_is_a_clear_error_and_a_finished_run_evaluates_again(tmp_path):
    workdir = str(tmp_path / 'run')
    loop.run(toy.make_phase(short_toy_config(steps=20)), short_toy_config(steps=20), workdir)
    listing = sorted(os.listdir(workdir)), sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
    with pytest.raises(ConfigError, match=r'step 20, past config\.train\.steps=10.*steps=20'):
        loop.run(toy.make_phase(short_toy_config(steps=10)), short_toy_config(steps=10), workdir)
    after = sorted(os.listdir(workdir)), sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
    assert after == listing
    # At train.steps equal to the checkpoint there is nothing to train: the run loads and ends.
    again = loop.run(
        toy.make_phase(short_toy_config(steps=20)), short_toy_config(steps=20), workdir
    )
    assert again.step == 20 and not again.preempted
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == listing[1]


def test_rng_is_saved_and_restored(tmp_path):
    workdir = str(tmp_path / 'run')
    config = short_toy_config(steps=20)
    config.seed = 7
    loop.run(toy.make_phase(config), config, workdir)
    ckpt = checkpoint.Checkpointer(workdir)
    state = toy.make_phase(config).init(jax.random.key(0))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.tree.map(np.asarray, __import__('flax').linen.unbox(state)),
    )
    _, rng = ckpt.restore(20, abstract, None, config)
    ckpt.close()
    expected = jax.random.split(jax.random.key(7))[1]
    np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(expected))


def test_pretrained_load_reads_params_and_config_and_creates_nothing(tmp_path):
    workdir = str(tmp_path / 'run')
    config = short_toy_config(steps=20)
    config.toy.width = 48  # differs from the default: must come from the checkpoint's config
    result = loop.run(toy.make_phase(config), config, workdir)
    run = pretrained.load(workdir)
    assert run.config.toy.width == 48 and run.step == 20
    params = run.params()
    for name, value in _params(result).items():
        np.testing.assert_array_equal(np.asarray(params[name]), value)
    missing = tmp_path / 'empty'
    with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
        pretrained.load(str(missing))
    assert not missing.exists()  # a typo in a workdir never creates folders
    (missing / 'checkpoints').mkdir(parents=True)
    with pytest.raises(checkpoint.CheckpointError, match='No checkpoint'):
        pretrained.load(str(missing))
    with pytest.raises(checkpoint.CheckpointError, match="holds a 'toy' run"):
        pretrained.load(workdir, expect='tokenizer')
