"""Every bad input ends with one line `Error: ...`, exit code 2 and nothing written.

Most cases run in-process through `errors.cli` (the wrapper every entry point uses); a few run
the real commands as subprocesses to check the whole path from argv to exit code.
"""

import dataclasses
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import ml_collections
import pytest
from toy_runs import short_toy_config

from dreamer4_jax import config_checks, errors, pretrained
from dreamer4_jax.data import build, collect, pipeline
from dreamer4_jax.data.config import default_data_config
from dreamer4_jax.data.synthetic import build_synthetic_dataset
from dreamer4_jax.train import loop, toy
from dreamer4_jax.train.metrics_writer import MetricsWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, 'experiments', 'toy.py')


def _cli(capsys, fn):
    """(exit code, stderr lines) of `fn` run the way every entry point runs its body."""
    capsys.readouterr()
    rc = errors.cli(fn)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, lines


def _assert_one_line(rc, lines, *fragments):
    assert rc == errors.EXIT_USER_ERROR, lines
    assert len(lines) == 1 and lines[0].startswith('Error: '), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _tree(root) -> dict:
    """relative path -> bytes (folders -> None) of everything under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, 'rb') as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def _run_toy(config, workdir, **phase_fields):
    phase = toy.make_phase(config)
    if phase_fields:
        phase = dataclasses.replace(phase, **phase_fields)
    return loop.run(phase, config, str(workdir))


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    """A finished toy run with checkpoints at steps 20 and 40."""
    workdir = tmp_path_factory.mktemp('toy') / 'run'
    _run_toy(short_toy_config(), workdir)
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '40']
    return workdir


# ------------------------------------------------------------------------------------------------
# Config files, flags, config values
# ------------------------------------------------------------------------------------------------


def test_experiment_file_errors_name_the_file(tmp_path, capsys):
    (tmp_path / 'noget.py').write_text('X = 1\n')
    (tmp_path / 'syntax.py').write_text('def get_config(:\n')
    cases = [
        (f'{tmp_path}/nope.py', ['no config file at', 'Files in', 'noget.py']),
        (f'{TOY}:nope', ["unknown variant 'nope'", "'long'"]),
        (f'{tmp_path}/noget.py', ['has no get_config']),
        (f'{tmp_path}/syntax.py', ['fails to load', 'SyntaxError']),
    ]
    for spec, fragments in cases:
        rc, lines = _cli(capsys, lambda spec=spec: config_checks.load_config(spec))
        _assert_one_line(rc, lines, f'--config={spec}', *fragments)


def test_batch_size_zero_or_negative_is_not_blamed_on_divisibility():
    for bad in (0, -8):
        with pytest.raises(config_checks.ConfigError, match='must be a positive integer') as e:
            config_checks.check_batch_size(bad, (1, 1, 1), 1)
        assert 'divisible' not in str(e.value)


def test_unwritable_workdir_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    # Root may write anywhere, so the refusal of the file system is simulated at os.access.
    real_access = os.access
    monkeypatch.setattr(
        os,
        'access',
        lambda p, mode: False if str(p).startswith(str(tmp_path)) else real_access(p, mode),
    )
    config = short_toy_config(steps=5)
    rc, lines = _cli(capsys, lambda: _run_toy(config, tmp_path / 'run'))
    _assert_one_line(rc, lines, '--workdir=', 'is not writable')
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Later phases pointed at a missing or wrong earlier workdir: clear message, nothing created
# ------------------------------------------------------------------------------------------------

LOADERS = [
    (functools.partial(pretrained.load_earlier, phase=later), later, field, earlier)
    for later, field, earlier in (
        ('dynamics', 'tokenizer_workdir', 'tokenizer'),
        ('agent', 'dynamics_workdir', 'dynamics'),
        ('imagination', 'agent_workdir', 'agent'),
    )
]


@pytest.mark.parametrize('load,section,field,phase', LOADERS)
def test_later_phase_pointed_at_missing_or_wrong_workdir(tmp_path, toy_run, load, section, field,
                                                         phase, capsys):  # fmt: skip
    (tmp_path / 'empty').mkdir()
    before = _tree(toy_run)
    cases = [
        (tmp_path / 'missing', 'does not exist'),
        (tmp_path / 'empty', 'No checkpoint in'),
        (toy_run, f"holds a 'toy' run (config.phase saved in its checkpoint), not a '{phase}' run"),
    ]
    for where, fragment in cases:
        config = ml_collections.ConfigDict({section: {field: str(where)}})
        rc, lines = _cli(capsys, lambda config=config: load(config))
        _assert_one_line(rc, lines, f'config.{section}.{field}={where}', fragment)
    assert sorted(os.listdir(tmp_path)) == ['empty']  # 'missing' was not created
    assert os.listdir(tmp_path / 'empty') == []  # no checkpoints/ made by reading
    assert _tree(toy_run) == before


# ------------------------------------------------------------------------------------------------
# Datasets: missing, truncated, bad collection settings, a killed collection
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    cfg = default_data_config()
    cfg.dir, cfg.name = str(tmp_path_factory.mktemp('data')), 'tiny'
    cfg.window_length, cfg.num_threads = 4, 1
    cfg.eval_fraction = 0.2
    build_synthetic_dataset(cfg)
    return cfg


def _copy_dataset(cfg, tmp_path):
    copy = ml_collections.ConfigDict(cfg.to_dict())
    copy.dir = str(tmp_path / 'data')
    shutil.copytree(os.path.join(cfg.dir, cfg.name), os.path.join(copy.dir, cfg.name))
    return copy


def _record_file(cfg):
    meta_dir = build.load_meta(cfg).tfds_dir
    return next(meta_dir.glob('*-train.array_record-*'))


def test_missing_dataset(dataset, capsys):
    cfg = ml_collections.ConfigDict(dataset.to_dict())
    cfg.name = 'nothing_here'
    rc, lines = _cli(capsys, lambda: build.load_meta(cfg))
    _assert_one_line(rc, lines, 'no dataset at', "config.data.name='nothing_here'")


def test_truncated_or_deleted_record_file_is_named(dataset, tmp_path, capsys):
    cfg = _copy_dataset(dataset, tmp_path)
    records = _record_file(cfg)
    size = records.stat().st_size
    with open(records, 'r+b') as fh:
        fh.truncate(size // 3)
    rc, lines = _cli(capsys, lambda: build.load_meta(cfg))
    _assert_one_line(rc, lines, records.name, f'was written with {size}', 'damaged', 'delete')
    records.unlink()
    rc, lines = _cli(capsys, lambda: build.load_meta(cfg))
    _assert_one_line(rc, lines, records.name, 'is missing')


def test_truncated_dataset_without_size_list_stops_at_the_reader_and_writes_nothing(
    dataset, tmp_path, capsys
):
    """Datasets built before index.json listed file sizes: the reader reports the damage."""
    cfg = _copy_dataset(dataset, tmp_path)
    index_file = tmp_path / 'data' / cfg.name / 'index.json'
    index = json.loads(index_file.read_text())
    del index['files']
    index_file.write_text(json.dumps(index))
    records = _record_file(cfg)
    with open(records, 'r+b') as fh:
        fh.truncate(records.stat().st_size // 3)

    def make_data(process_index, process_count):
        return iter(pipeline.make_dataset(cfg, batch_size_per_process=4, window_length=4))

    workdir = tmp_path / 'run'
    config = short_toy_config(steps=5)
    rc, lines = _cli(capsys, lambda: _run_toy(config, workdir, make_data=make_data))
    _assert_one_line(rc, lines, 'cannot be read', 'damaged', f'delete {tmp_path}/data/{cfg.name}')
    assert not workdir.exists()  # no empty checkpoints/ or metrics.jsonl


def test_bad_policy_mix_and_collection_settings(tmp_path, capsys):
    for mix, fragment in [
        ('bad', 'expected name=weight pairs'),
        ('foo=1', 'needs weights >= 0'),
        ('random=-1,seeker=2', 'needs weights >= 0'),
        ('random=nan', 'needs weights >= 0'),
        ('random=0', 'sum > 0'),
    ]:
        args = [f'--policy_mix={mix}', f'--dir={tmp_path}/dc', '--no_progress']
        rc, lines = _cli(capsys, lambda args=args: collect._main(args))
        _assert_one_line(rc, lines, fragment)
    rc, lines = _cli(capsys, lambda: collect._main(['--num_episodes=0', f'--dir={tmp_path}/dc']))
    _assert_one_line(rc, lines, 'config.data.collect.num_episodes: 0 must be >= 1')
    rc, lines = _cli(capsys, lambda: collect._main(['--num_episodes=x']))
    _assert_one_line(rc, lines, "--num_episodes: invalid int value: 'x'", '--help')
    assert os.listdir(tmp_path) == []


def test_collection_killed_midway_leaves_a_folder_the_next_build_removes(tmp_path):
    """A real build killed with SIGKILL (no cleanup can run) while it stages episodes."""
    data_dir = tmp_path / 'dc'
    script = (
        'import sys, time\n'
        'from dreamer4_jax.actions import craftax_action_space\n'
        'from dreamer4_jax.data import build\n'
        'from dreamer4_jax.data.config import default_data_config\n'
        'cfg = default_data_config()\n'
        f'cfg.dir, cfg.name = {str(data_dir)!r}, "k"\n'
        'def episodes():\n'
        '    print("building", flush=True)\n'
        '    time.sleep(600)\n'
        '    yield {}\n'
        'build.build_dataset_from_episodes(cfg, episodes(), action_space=craftax_action_space(),\n'
        '                                  task_names=["t"])\n'
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == 'building'
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    stale = list(data_dir.glob('.k.incomplete-*'))
    assert len(stale) == 1 and (stale[0] / build.OWNER_FILE).is_file()
    # Another build in progress (this process is alive) and one of another host stay.
    live, remote = data_dir / '.k.incomplete-live', data_dir / '.k.incomplete-remote'
    for folder, owner in ((live, {'host': build.socket.gethostname(), 'pid': os.getpid()}),
                          (remote, {'host': 'another-host', 'pid': 1})):  # fmt: skip
        folder.mkdir()
        (folder / build.OWNER_FILE).write_text(json.dumps(owner))
    assert build.remove_stale_builds(data_dir / 'k') == stale
    assert sorted(p.name for p in data_dir.iterdir()) == ['.k.incomplete-live',
                                                          '.k.incomplete-remote']  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Training-time errors: non-finite loss, full disk, no permission
# ------------------------------------------------------------------------------------------------


def test_nan_loss_is_one_line_and_an_early_one_writes_nothing(tmp_path, capsys):
    config = short_toy_config(steps=40, learning_rate=1e12, grad_clip=1e12, warmup_steps=1)
    workdir = tmp_path / 'run'
    rc, lines = _cli(capsys, lambda: _run_toy(config, workdir))
    _assert_one_line(rc, lines, 'Loss term', 'Lower the learning rate')
    step = int(lines[0].split(' at step ')[1].split('.')[0])
    if step < config.train.log_every:  # diverges at step 3 today; nothing logged yet
        assert not workdir.exists()


def test_disk_full_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    """The metrics write raises what a full disk raises (no real mount needed)."""

    def write(self, step, metrics, prefix=''):
        path = os.path.join(self.workdir, 'metrics.jsonl')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(MetricsWriter, 'write', write)
    rc, lines = _cli(capsys, lambda: _run_toy(short_toy_config(steps=20), tmp_path / 'run'))
    _assert_one_line(rc, lines, 'No space left on device writing', 'metrics.jsonl', 'disk is full')


def test_environment_errors_are_found_wherever_they_were_wrapped():
    def chained(inner):
        try:
            raise inner
        except OSError as e:
            try:
                raise RuntimeError('background save failed') from e
            except RuntimeError as outer:
                return outer

    refused = chained(OSError(errno.EACCES, 'Permission denied', '/x/run/metrics.jsonl'))
    assert errors.user_message(refused) == (
        'Permission denied writing /x/run/metrics.jsonl (no permission to write there: pick a '
        'folder you can write to).'
    )
    assert 'read-only' in errors.user_message(OSError(errno.EROFS, 'Read-only file system'))
    # TensorStore (orbax's array writer) reports a full disk as ValueError text.
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.w1/0.0" in OCDBT database at local file '
        '"/x/run/checkpoints/100.orbax-checkpoint-tmp/state/": Failed to write 2248 bytes: No '
        "space left on device [os_error_code='28']"
    )
    message = errors.user_message(tensorstore)
    assert message.startswith('No space left on device writing /x/run/checkpoints/100')
    # Other OS errors (a bad disk, a bug) are not user errors: they keep their traceback.
    assert errors.user_message(chained(OSError(errno.EIO, 'Input/output error'))) is None
    assert errors.user_message(KeyError('x')) is None


def test_a_bug_keeps_its_traceback():
    def bug():
        raise KeyError('not a user error')

    with pytest.raises(KeyError):
        errors.cli(bug)


def test_debug_env_prints_the_traceback_too(monkeypatch, capsys):
    monkeypatch.setenv(errors.DEBUG_ENV, '1')
    rc, lines = _cli(capsys, lambda: config_checks.load_config('nope.py'))
    assert rc == 2 and lines[0].startswith('Traceback') and lines[-1].startswith('Error: ')


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints: resume from the newest good one, leave the damaged one as it was
# ------------------------------------------------------------------------------------------------


def _truncate_arrays(step_dir):
    root = step_dir / 'state' / 'ocdbt.process_0' / 'd'
    for f in root.iterdir():
        with open(f, 'r+b') as fh:
            fh.truncate(f.stat().st_size // 2)
    return 'state/ cannot be read'


def _delete_data_iterator(step_dir):
    (step_dir / 'data' / 'process_0-of-1.json').unlink()
    return 'the data-iterator file data/process_0-of-1.json is missing'


def _delete_meta(step_dir):
    shutil.rmtree(step_dir / 'meta')
    return 'meta/metadata cannot be read'


@pytest.mark.parametrize('damage', [_truncate_arrays, _delete_data_iterator, _delete_meta])
def test_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, toy_run, capsys, damage):
    workdir = tmp_path / 'run'
    shutil.copytree(toy_run, workdir)
    fragment = damage(workdir / 'checkpoints' / '40')
    damaged = _tree(workdir / 'checkpoints' / '40')
    capsys.readouterr()
    result = _run_toy(short_toy_config(steps=60), workdir)  # asks for more steps: a config diff too
    out = capsys.readouterr()
    assert result.step == 60 and f'resumed from {workdir}/checkpoints/20' in out.out
    warning = [line for line in out.err.splitlines() if line.startswith('Warning: ')]
    assert len(warning) == 1, out.err
    assert f'Checkpoint {workdir}/checkpoints/40 is damaged: {fragment}' in warning[0]
    assert 'does not match' not in out.err and 'train.steps' not in out.err
    moved = workdir / 'checkpoints_damaged' / '40'
    assert f'moved unchanged to {moved}' in warning[0]
    assert _tree(moved) == damaged  # untouched, for inspection
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['40', '60']  # 40 saved anew


def test_no_readable_checkpoint_stops_naming_the_damaged_file(tmp_path, toy_run, capsys):
    workdir = tmp_path / 'run'
    shutil.copytree(toy_run, workdir)
    fragment = _truncate_arrays(workdir / 'checkpoints' / '40')
    _delete_data_iterator(workdir / 'checkpoints' / '20')
    before = _tree(workdir)
    rc, lines = _cli(capsys, lambda: _run_toy(short_toy_config(steps=60), workdir))
    _assert_one_line(rc, lines, f'{workdir}/checkpoints/40 is damaged: {fragment}',
                     'No older checkpoint is readable')  # fmt: skip
    assert _tree(workdir) == before


def test_incompatible_checkpoint_is_not_called_damaged(tmp_path, toy_run, capsys):
    workdir = tmp_path / 'run'
    shutil.copytree(toy_run, workdir)
    before = _tree(workdir)
    config = short_toy_config()
    config.toy.width = 32
    rc, lines = _cli(capsys, lambda: _run_toy(config, workdir))
    _assert_one_line(rc, lines, 'checkpoints/40 does not match this run',
                     'toy.width: checkpoint 64 vs now 32')  # fmt: skip
    assert 'damaged' not in lines[0]
    assert _tree(workdir) == before


# ------------------------------------------------------------------------------------------------
# The real commands: argv to exit code
# ------------------------------------------------------------------------------------------------


def _run(module, *args, cwd):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    env.pop(errors.DEBUG_ENV, None)
    result = subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    return result.returncode, [line for line in result.stderr.splitlines() if line.strip()]


def test_commands_answer_bad_input_with_one_line(tmp_path, toy_run):
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    tiny = os.path.join(ROOT, 'experiments', 'craftax_tiny.py')
    cases = [
        ('dreamer4_jax.main', [f'--config={ROOT}/experiments/nope.py', '--workdir=run'],
         'no config file at'),
        ('dreamer4_jax.main', [f'--config={TOY}:nope', '--workdir=run',
                               '--config.train.steps=3'], "unknown variant 'nope'"),
        ('dreamer4_jax.main', [f'--config={TOY}', '--workdir=run', '--config.train.steps=abc'],
         "--config.train.steps=abc: invalid literal for int()"),
        ('dreamer4_jax.main', [f'--config={tiny}:dynamics', '--workdir=run',
                               f'--config.dynamics.tokenizer_workdir={toy_run}'],
         "holds a 'toy' run"),
        ('dreamer4_jax.data.collect', ['--policy_mix=bad', '--dir=dc'], '--policy_mix='),
        ('dreamer4_jax.demo', ['--stages=nope', '--workdir=runs/demo'],
         "unknown stage(s) ['nope']"),
    ]  # fmt: skip
    for module, args, fragment in cases:
        rc, lines = _run(module, *args, cwd=cwd)
        _assert_one_line(rc, lines, fragment)
    assert os.listdir(cwd) == []


def test_a_preempted_run_exits_143_with_one_line_and_resumes(tmp_path):
    """SIGTERM saves and stops the run: not exit 0 (a scheduler would take it for done)."""
    workdir = str(tmp_path / 'run')
    args = [f'--config={TOY}', f'--workdir={workdir}', '--config.train.steps=12',
            '--config.train.checkpoint_every=100', '--config.train.log_every=4']  # fmt: skip
    rc, lines = _run('dreamer4_jax.main', *args, '--config.debug.sigterm_at_step=5', cwd=tmp_path)
    assert rc == errors.EXIT_PREEMPTED == 143, lines
    preempted = [line for line in lines if line.startswith('Preempted:')]
    assert len(preempted) == 1 and 'step 5 of 12' in preempted[0] and workdir in preempted[0]
    assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['5']
    rc, lines = _run('dreamer4_jax.main', *args, cwd=tmp_path)
    assert rc == 0 and not any(line.startswith('Preempted:') for line in lines), lines
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '5']
