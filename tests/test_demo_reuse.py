"""The demo reuses a finished stage only if it was trained with the config the experiment gives."""

import jax
import jax.numpy as jnp
import pytest

from dreamer4_jax import checkpoint, demo, errors
from dreamer4_jax.config_checks import ConfigError


def _finish(workdir, stage, edit=None):
    """A checkpoint at the stage's last step, saved with the demo's config for it (edited)."""
    config = demo.stage_config(stage, str(workdir))
    if edit:
        edit(config)
    ckpt = checkpoint.Checkpointer(str(workdir / stage))
    ckpt.save(int(config.train.steps), {'w': jnp.zeros(2)}, None, jax.random.key(0), config)
    ckpt.close()


def test_a_finished_stage_with_the_same_config_is_skipped(tmp_path, capsys):
    _finish(tmp_path, 'tokenizer')
    demo.run_stage('tokenizer', str(tmp_path), 1.0)  # would train for minutes if not skipped
    assert 'tokenizer: already finished' in capsys.readouterr().out


def test_a_finished_stage_from_another_config_is_refused(tmp_path):
    def old_bottleneck(config):
        config.tokenizer.num_latents = 16

    _finish(tmp_path, 'tokenizer', old_bottleneck)
    with pytest.raises(ConfigError) as err:
        demo.run_stage('tokenizer', str(tmp_path), 1.0)
    message = str(err.value)
    assert 'tokenizer.num_latents: checkpoint 16 vs now 96' in message
    assert 'Delete' in message and 'another --workdir' in message


def test_moved_workdirs_do_not_count_as_a_config_change(tmp_path, capsys):
    def elsewhere(config):
        config.dynamics.tokenizer_workdir = '/somewhere/else/tokenizer'

    _finish(tmp_path, 'dynamics', elsewhere)
    demo.run_stage('dynamics', str(tmp_path), 1.0)
    assert 'dynamics: already finished' in capsys.readouterr().out


def _without(field):
    def edit(config):
        with config.dynamics.unlocked():
            del config.dynamics[field]

    return edit


def test_a_field_added_after_the_run_at_its_default_is_not_a_change(tmp_path, capsys):
    """A run saved before `dynamics.noise_levels` existed is still the demo's dynamics run."""
    _finish(tmp_path, 'dynamics', _without('noise_levels'))
    demo.run_stage('dynamics', str(tmp_path), 1.0)
    assert 'dynamics: already finished' in capsys.readouterr().out


def test_a_field_added_after_the_run_set_away_from_its_default_is_a_change():
    saved = {'ramp': True, 'transformer': {'depth': 4}}
    now = {'ramp': True, 'noise_levels': 'last_frame', 'transformer': {'depth': 4, 'x': 2}}
    defaults = {'noise_levels': 'diffusion_forcing', 'transformer': {'x': 2}}
    assert checkpoint.config_diff(saved, now, 'dynamics.', defaults) == [
        "dynamics.noise_levels: checkpoint '<missing>' vs now 'last_frame'"
    ]
    assert checkpoint.config_diff(saved, now, 'dynamics.') == [
        "dynamics.noise_levels: checkpoint '<missing>' vs now 'last_frame'",
        "dynamics.transformer.x: checkpoint '<missing>' vs now 2",
    ]


def test_a_stage_stopped_by_sigterm_stops_the_demo(tmp_path, monkeypatch):
    """The loop saves a checkpoint and returns on SIGTERM; the demo must then stop instead of
    training the next stage on an unfinished one."""

    def stopped_early(config, workdir):
        ckpt = checkpoint.Checkpointer(workdir)
        ckpt.save(3, {'w': jnp.zeros(2)}, None, jax.random.key(0), config)
        ckpt.close()

    monkeypatch.setattr(demo.phases, 'run_phase', stopped_early)
    with pytest.raises(errors.Interrupted, match='stopped before step 800 .* to resume'):
        demo.run_stage('tokenizer', str(tmp_path), 1.0)
