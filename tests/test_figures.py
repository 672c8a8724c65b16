"""The figures command (dreamer4_jax/figures): sweeps as configs, the arm runner, and each figure
end to end at smoke scale on a synthetic dataset (tables and plots written)."""

import os

import pytest

from dreamer4_jax import config_checks, errors
from dreamer4_jax import model_configs as mc
from dreamer4_jax.data.synthetic import build_synthetic_dataset
from dreamer4_jax.figures import arms as arms_lib
from dreamer4_jax.figures import experiment, fig7, sweeps
from dreamer4_jax.figures.__main__ import main
from dreamer4_jax.train import dynamics_phase

TINY = experiment.SCALES['tiny']


@pytest.mark.parametrize('scale', ['tiny', 'smoke'])
def test_every_sweep_arm_is_a_valid_dynamics_config(scale):
    exp = experiment.load_experiment(scale)
    for name in ('table2', 'fig7'):
        for arm in arms_lib.sweep_arms(exp.path, 'dynamics', exp.sweep(name), 'unused', {}):
            config = arm.config()
            tok = mc.tokenizer_config_from(config.tokenizer)
            mc.dynamics_config_from(config.dynamics, tok)  # the transformer options fit
            mc.shortcut_config_from(config.dynamics)
            dynamics_phase.make_plan(config)  # batch lengths, teacher rows


def test_table2_cascade_adds_one_change_per_row():
    exp = experiment.load_experiment('tiny')
    configs = {
        a.name: a.config().dynamics
        for a in arms_lib.sweep_arms(exp.path, 'dynamics', exp.sweep('table2'), 'unused', {})
    }
    assert list(configs) == list(sweeps.TABLE2_ROWS)
    first = configs['diffusion_forcing']
    assert (first.shortcut, first.sampling_steps, first.prediction, first.loss_space) == (
        False, 64, 'v', 'v',
    )  # fmt: skip
    assert first.transformer.dense and first.transformer.time_every == 1
    assert first.transformer.num_kv_heads is None and first.num_registers == 0
    assert configs['fewer_steps'].sampling_steps == 4 and not configs['fewer_steps'].shortcut
    assert configs['shortcut'].shortcut and configs['shortcut'].prediction == 'v'
    assert configs['x_loss'].loss_space == 'x' and not configs['x_loss'].ramp
    assert configs['alternating_lengths'].short_length == 4
    last, default = configs['registers'], config_checks.load_config(f'{TINY}:dynamics').dynamics
    # The last arm is the experiment's own dynamics config plus alternating batch lengths.
    for field in ('shortcut', 'sampling_steps', 'prediction', 'loss_space', 'ramp',
                  'num_registers'):  # fmt: skip
        assert last[field] == default[field], field
    assert last.transformer.to_dict() == default.transformer.to_dict()


def test_fig7_arms_label_the_first_share_of_episodes():
    exp = experiment.load_experiment('tiny')
    arms = arms_lib.sweep_arms(exp.path, 'dynamics', exp.sweep('fig7'), 'unused', {})
    assert [fig7.label_fraction(a) for a in arms] == [0.0, 0.04, 0.4, 1.0]
    assert fig7.relative(5.0, 4.0, 6.0) == 50.0 and fig7.relative(1.0, 2.0, 2.0) is None
    assert fig7.paper_beside(0.04).startswith('100 h: 85 % / 100 %')
    assert fig7.paper_beside(0.2) == '-'


def test_run_arms_skips_finished_arms_and_reports_progress(tmp_path):
    spec = f'{TINY}:dynamics,steps=3'
    arms = [arms_lib.Arm(n, spec, str(tmp_path / n)) for n in ('a', 'b', 'c')]
    os.makedirs(tmp_path / 'a' / 'checkpoints' / '3')  # finished
    os.makedirs(tmp_path / 'b' / 'checkpoints' / '2')  # interrupted: trains (resumes)
    trained, lines = [], []
    clock = iter([0.0, 10.0, 10.0, 30.0]).__next__

    def train(config, workdir):
        assert config.train.steps == 3
        trained.append(os.path.basename(workdir))
        os.makedirs(os.path.join(workdir, 'checkpoints', '3'))

    arms_lib.run_arms(arms, 'fig', train=train, clock=clock, log=lines.append)
    assert trained == ['b', 'c']
    assert lines[0] == '[fig] 1/3 arms finished, 2 to train'
    assert "1/3 arms done; training 'b'" in lines[1] and 'ETA' not in lines[1]
    assert "2/3 arms done; training 'c'" in lines[3] and lines[3].endswith('ETA 10 s')
    assert lines[-1] == '[fig] 3/3 arms done'


def test_run_arms_stops_when_an_arm_returns_unfinished(tmp_path):
    """SIGTERM makes the loop save a checkpoint and return: the next arm must not start on an
    unfinished one (it once trained dynamics on a tokenizer stopped at 5,509 of 8,000 steps)."""
    spec = f'{TINY}:dynamics,steps=3'
    arms = [arms_lib.Arm(n, spec, str(tmp_path / n)) for n in ('a', 'b')]
    trained = []

    def train(config, workdir):
        trained.append(os.path.basename(workdir))
        os.makedirs(os.path.join(workdir, 'checkpoints', '2'))  # stopped at step 2 of 3

    with pytest.raises(errors.Interrupted, match=r"'a' stopped before step 3 .* to resume"):
        arms_lib.run_arms(arms, 'fig', train=train, log=lambda s: None)
    assert trained == ['a']


def test_unknown_figure_or_scale_is_one_line_error(tmp_path, capsys):
    assert main(['table3', f'--workdir={tmp_path}']) == 2
    assert main(['table2', '--scale=huge', f'--workdir={tmp_path}']) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'table3'" in err
    assert '--scale=huge: neither a scale (smoke, tiny, small) nor an experiment file' in err


@pytest.fixture(scope='module')
def smoke_dir(tmp_path_factory):
    """A workdir whose synthetic dataset stands where experiments/smoke.py expects it (data.dir
    is relative: the figures run with this folder as the current directory)."""
    root = tmp_path_factory.mktemp('figures')
    data = config_checks.load_config(f'{experiment.SCALES["smoke"]}:tokenizer').data
    data.dir = str(root / data.dir)
    build_synthetic_dataset(data, lengths=(12,) * 8, as_collected=True)
    return root


def _run(name, root, monkeypatch, *extra):
    monkeypatch.chdir(root)
    assert main([name, '--scale=smoke', '--workdir=runs', *extra]) == 0
    md = (root / 'runs' / f'{name}.md').read_text()
    assert (root / 'runs' / f'{name}.png').read_bytes()[:4] == b'\x89PNG'
    return md


@pytest.mark.slow  # trains a tokenizer and two dynamics arms (compilation dominates)
def test_table2_at_smoke_scale(smoke_dir, monkeypatch):
    md = _run('table2', smoke_dir, monkeypatch)
    assert '| Diffusion Forcing Transformer |' in md and '| + Register tokens |' in md
    assert '| 306 | 0.8 | 9.8 |' in md  # the paper's values beside ours
    assert 'FVD-stand-in' in md and 'not FVD' in md
    # Arms are listed by what each adds, with the experiment path relative to the repository.
    assert 'Arms: `--config=experiments/smoke.py:dynamics,<settings>`' in md
    assert '- `diffusion_forcing`: `objective=diffusion`' in md
    # The static baselines on the same windows, as reference rows.
    assert '| copy the last context frame ⁴ | - |' in md
    assert '| repeat the last context latent ⁴ | - |' in md
    # Re-running trains and measures nothing again.
    before = os.path.getmtime(smoke_dir / 'runs' / 'table2' / 'registers' / 'figure_eval.json')
    _run('table2', smoke_dir, monkeypatch)
    after = os.path.getmtime(smoke_dir / 'runs' / 'table2' / 'registers' / 'figure_eval.json')
    assert before == after


@pytest.mark.slow  # two dynamics arms on the tokenizer of the table2 test (or its own)
def test_fig7_at_smoke_scale(smoke_dir, monkeypatch):
    md = _run('fig7', smoke_dir, monkeypatch)
    assert '| labels_0pct | 0 % |' in md and '| labels_100pct | 100 % |' in md
    assert 'PSNR rel. %' in md and '| labels_0pct | PSNR |' in md  # per generated frame


@pytest.mark.slow  # the demo pipeline, then real Craftax episodes
def test_table7_at_smoke_scale(smoke_dir, monkeypatch):
    md = _run('table7', smoke_dir, monkeypatch, '--episodes=2')
    assert '| Achievement | random | BC | WM+BC | Dreamer 4 |' in md
    assert 'mean return' in md and '| Diamond | 0 | 0 | 0.7 |' in md
    assert '2 real episodes per agent' in md
