"""Every config error is caught before work starts, with a message naming the field and fix."""

import os
import re
import subprocess
import sys

import pytest

from dreamer4_jax import config_checks
from dreamer4_jax.config_checks import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config():
    return config_checks.load_config(os.path.join(ROOT, 'experiments', 'toy.py'))


def test_unknown_field_names_field_and_alternatives():
    config = toy_config()
    with pytest.raises(ConfigError, match=r'config\.train\.stepz.*Fields there: .*steps'):
        config_checks.check_overrides(config, ['train.stepz'])
    with pytest.raises(ConfigError, match=r"'nope' does not exist under <top level>"):
        config_checks.check_overrides(config, ['nope.x'])
    config_checks.check_overrides(config, ['train.steps', 'toy.width'])  # known: no error


def test_slices_must_divide_the_data_axis():
    config_checks.check_slices(2, (2, 4, 1))  # data parallel across 2 slices, FSDP within
    with pytest.raises(ConfigError, match=r'num_slices=2 must be >= 1 and divide the data axis'):
        config_checks.check_slices(2, (1, 8, 1))


def test_override_paths_parses_argv():
    argv = ['prog', '--config=x.py', '--config.train.steps=3', '--config.mesh.shape', '(1,1,1)']
    assert config_checks.override_paths(argv) == ['train.steps', 'mesh.shape']


@pytest.mark.parametrize(
    'shape,devices,expected',
    [((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 2), 8, (2, 2, 2)), ((1, 1, 1), 1, (1, 1, 1))],
)
def test_mesh_fill(shape, devices, expected):
    assert config_checks.resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize(
    'shape,devices,pattern',
    [
        ((3, 1, 1), 8, r'needs 3 devices but 8 are available'),
        ((3, -1, 1), 8, r'3 does not divide 8'),
        ((-1, -1, 1), 8, r'at most one -1'),
        ((2, 2), 4, r'3 entries'),
    ],
)
def test_mesh_errors(shape, devices, pattern):
    with pytest.raises(ConfigError, match=r'config\.mesh\.shape.*' + pattern):
        config_checks.resolve_mesh_shape(shape, devices)


def test_batch_not_divisible_by_data_parallel_size():
    with pytest.raises(ConfigError, match=r'config\.train\.batch_size=6 .*data-parallel size 4'):
        config_checks.check_batch_size(6, (2, 2, 2), 1)
    with pytest.raises(ConfigError, match=r'number of processes 4'):
        config_checks.check_batch_size(6, (2, 1, 1), 4)
    config_checks.check_batch_size(8, (2, 2, 2), 2)


def test_missing_workdir_parent(tmp_path):
    with pytest.raises(ConfigError, match=r'parent folder .*missing.* does not exist'):
        config_checks.check_workdir(str(tmp_path / 'missing' / 'run'))
    config_checks.check_workdir(str(tmp_path / 'run'))  # parent exists: fine
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ConfigError, match='not a folder'):
        config_checks.check_workdir(str(tmp_path / 'file'))


def test_num_devices_out_of_range():
    config = toy_config()
    config.mesh.num_devices = 9
    with pytest.raises(ConfigError, match=r'config\.mesh\.num_devices=9 but 8'):
        config_checks.devices_to_use(config, 8, 1)


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    cmd = [sys.executable, '-m', 'dreamer4_jax.main', '--config=experiments/toy.py', *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_reports_each_error_once_and_writes_nothing(tmp_path):
    workdir = tmp_path / 'run'
    cases = [
        (['--config.train.stepz=3'], "Unknown config field 'config.train.stepz'"),
        (['--config.mesh.shape=(3,1,1)'], 'config.mesh.shape=(3, 1, 1) needs 3 devices'),
        (['--config.train.batch_size=0'], 'config.train.batch_size=0'),
    ]
    for args, message in cases:
        result = _cli(f'--workdir={workdir}', *args)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr
        assert 'Traceback' not in result.stderr
        assert not workdir.exists()  # nothing written on a config error
    result = _cli(f'--workdir={tmp_path}/no/such/parent')
    assert result.returncode == 2 and 'does not exist' in result.stderr


TINY = os.path.join(ROOT, 'experiments', 'craftax_tiny.py')


def test_settings_after_the_variant_set_fields_with_their_types():
    c = config_checks.load_config(
        f'{TINY}:dynamics,objective=diffusion,dynamics.ramp=False,labels=0.25,steps=7,'
        'mesh.shape=(2,-1,1),dynamics.transformer.num_kv_heads=None,dynamics.k_max=32'
    )
    assert c.phase == 'dynamics'
    assert (c.dynamics.shortcut, c.dynamics.sampling_steps) == (False, 64)  # a named choice
    assert c.dynamics.ramp is False and c.data.label_fraction == 0.25  # dotted path, alias
    assert c.train.steps == 7 and isinstance(c.train.steps, int)
    assert tuple(c.mesh.shape) == (2, -1, 1)  # commas inside brackets belong to the value
    assert c.dynamics.transformer.num_kv_heads is None and c.dynamics.k_max == 32
    # Later settings win; the absl flag of main.py calls the same get_config.
    later = config_checks.load_config(f'{TINY}:dynamics,objective=diffusion,objective=shortcut')
    assert later.dynamics.shortcut and later.dynamics.sampling_steps == 4


@pytest.mark.parametrize(
    'settings,message',
    [
        ('nope=1', "unknown config setting 'nope': neither a short setting of this experiment "
                   '(labels, objective, steps) nor a field'),
        ('dynamics.rampp=False', "'rampp' does not exist under dynamics. Fields there:"),
        ('objective=flow',
         'objective=flow: unknown choice; choose one of diffusion, regressor, shortcut'),
        ('dynamics.ramp=maybe', 'dynamics.ramp=maybe: expected a bool'),
        ('train.steps=1.5', 'train.steps=1.5: expected an int'),
        ('dynamics.transformer=3', "'dynamics.transformer' is a sub-config"),
        ('ramp', "'ramp' is not key=value"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_config_error(settings, message):
    with pytest.raises(ConfigError, match='^--config=.*' + re.escape(message)):
        config_checks.load_config(f'{TINY}:dynamics,{settings}')


def test_cli_takes_settings_and_rejects_unknown_keys(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    cmd = [sys.executable, '-m', 'dreamer4_jax.main', f'--workdir={tmp_path}/run',
           '--config=experiments/toy.py:,train.stepz=3']  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unknown config setting 'train.stepz'" in result.stderr
    assert 'Traceback' not in result.stderr
