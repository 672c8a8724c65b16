"""`make demo`: the whole pipeline at a tiny Craftax config on CPU, resumable stage by stage.

  python -m dreamer4_jax.demo --workdir=runs/demo [--stages=data,tokenizer,...] [--steps_scale=1]

Stages: data (collect the tiny Craftax dataset if missing), tokenizer, dynamics, agent (world
model + BC), bc (the same agent from scratch without the world model: the baseline),
imagination (RL inside the world model); each trains with the shared loop in <workdir>/<stage>.
Then evaluation (random, BC, WM+BC and the full agent play the real environment; success table
in <workdir>/evaluation) and report (<workdir>/report.md and report.html). Re-running the same
command skips finished stages and resumes an interrupted one from its last checkpoint. The workdir
is created with its parents (the first command on a fresh clone has no runs/ folder yet).

Each stage prints its wall time and the part of it spent compiling (tracing, lowering and XLA
compilation as JAX reports them through jax.monitoring: dreamer4_jax/compile_clock.py); a table
of all stages and the total closes the run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import logging

from dreamer4_jax import checkpoint, config_checks, errors
from dreamer4_jax import model_configs as mc
from dreamer4_jax.compile_clock import CompileClock
from dreamer4_jax.data.build import ensure_dataset
from dreamer4_jax.eval.closed_loop import evaluate_agents
from dreamer4_jax.eval.report import write_report
from dreamer4_jax.train import phases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'craftax_tiny.py')
TRAIN_STAGES = ('tokenizer', 'dynamics', 'agent', 'bc', 'imagination')
STAGES = ('data', *TRAIN_STAGES, 'evaluation', 'report')
# Which config field of a stage points at the stage before it.
LINKS = {
    'dynamics': ('dynamics', 'tokenizer_workdir', 'tokenizer'),
    'agent': ('agent', 'dynamics_workdir', 'dynamics'),
    'bc': ('agent', 'dynamics_workdir', 'dynamics'),
    'imagination': ('imagination', 'agent_workdir', 'agent'),
}


# Behavior cloning without the world model: same architecture, data and steps, random
# transformer weights and no video-prediction loss (the paper's BC baseline, Table 7).
BC_SETTINGS = ('agent.from_scratch=True', 'agent.loss_weights.dynamics=0.0')


def stage_spec(stage: str, experiment: str = EXPERIMENT) -> str:
    """The --config string of a training stage (bc: the agent variant with BC_SETTINGS)."""
    if stage == 'bc':
        return ','.join([f'{experiment}:agent', *BC_SETTINGS])
    return f'{experiment}:{stage}'


def stage_config(stage: str, workdir: str, steps_scale: float = 1.0, experiment: str = EXPERIMENT):
    config = config_checks.load_config(stage_spec(stage, experiment))
    if stage in LINKS:
        section, field, previous = LINKS[stage]
        config[section][field] = os.path.join(workdir, previous)
    config.train.steps = max(1, int(round(config.train.steps * steps_scale)))
    return config


# The config section that defines what a stage trains. A finished stage is reused only if its
# checkpoint was saved with the same section (paths to earlier stages may differ: workdirs move).
MODEL_SECTION = {
    'tokenizer': 'tokenizer',
    'dynamics': 'dynamics',
    'agent': 'agent',
    'bc': 'agent',
    'imagination': 'imagination',
}
# Each model section's defaults: a field added after a run was saved, left at its default, does
# not make the finished run look like another config.
SECTION_DEFAULTS = {
    'tokenizer': mc.tokenizer_config_dict,
    'dynamics': mc.dynamics_config_dict,
    'agent': mc.agent_config_dict,
    'imagination': mc.imagination_config_dict,
}


def finished(stage_dir: str, steps: int) -> bool:
    return os.path.isdir(os.path.join(stage_dir, 'checkpoints', str(steps)))


def check_reusable(stage: str, stage_dir: str, steps: int, config) -> None:
    """ConfigError when the finished stage was trained with another model section than the
    experiment now gives (e.g. a workdir from before a config change): skipping it would feed the
    later stages a model that the config does not describe."""
    section = MODEL_SECTION[stage]
    saved, _ = checkpoint.saved_config(stage_dir, steps)
    was = json.loads(saved.to_json_best_effort()).get(section, {})
    now = json.loads(config.to_json_best_effort()).get(section, {})
    diffs = [
        d
        for d in checkpoint.config_diff(
            was, now, f'{section}.', json.loads(SECTION_DEFAULTS[section]().to_json_best_effort())
        )
        if not d.split(':')[0].endswith('_workdir')
    ]
    if diffs:
        more = f'; and {len(diffs) - 6} more' if len(diffs) > 6 else ''
        raise config_checks.ConfigError(
            f'{stage_dir} finished with another {section} config than the experiment now gives '
            f'({"; ".join(diffs[:6])}{more}). Delete {stage_dir} and the stages after it to '
            'retrain them, or use another --workdir.'
        )


def run_stage(stage: str, workdir: str, steps_scale: float) -> None:
    if stage == 'data':
        config = stage_config('tokenizer', workdir)
        print(f'[demo] data: {ensure_dataset(config.data)}', flush=True)
        return
    if stage == 'report':
        path = write_report(workdir, [*TRAIN_STAGES, 'evaluation'])
        print(f'[demo] report: {path} (and report.html)', flush=True)
        return
    if stage == 'evaluation':
        out = os.path.join(workdir, 'evaluation')
        if os.path.exists(os.path.join(out, 'success.json')):
            print(f'[demo] evaluation: already done in {out}, skipping', flush=True)
            return
        config = stage_config('imagination', workdir)
        agents = {'random': 'random'}
        agents.update(
            {
                name: os.path.join(workdir, stage)
                for name, stage in (('BC', 'bc'), ('WM+BC', 'agent'), ('Dreamer 4', 'imagination'))
            }
        )
        evaluate_agents(agents, out, config.closed_loop)
        print(f'[demo] evaluation: {os.path.join(out, "success.md")}', flush=True)
        return
    stage_dir = os.path.join(workdir, stage)
    config = stage_config(stage, workdir, steps_scale)
    if finished(stage_dir, int(config.train.steps)):
        check_reusable(stage, stage_dir, int(config.train.steps), config)
        print(f'[demo] {stage}: already finished in {stage_dir}, skipping', flush=True)
        return
    print(f'[demo] {stage}: training {config.train.steps} steps in {stage_dir}', flush=True)
    phases.run_phase(config, stage_dir)
    if not finished(stage_dir, int(config.train.steps)):  # SIGTERM: the loop saved and returned
        raise errors.Interrupted(
            f'stopped before step {config.train.steps} in {stage_dir} (checkpoint saved); run '
            'the same command again to resume'
        )


def duration(seconds: float) -> str:
    return f'{seconds:.1f} s' if seconds < 60 else f'{seconds / 60:.1f} min'


def timing_line(wall: float, compiling: float) -> str:
    """'3.2 min (compiling 41.0 s, 21 %)'."""
    share = 100 * compiling / wall if wall > 0 else 0.0
    return f'{duration(wall)} (compiling {duration(compiling)}, {share:.0f} %)'


def timing_table(timings: list[tuple[str, float, float]], total: float) -> str:
    """Every stage's wall time and compile share, then the total (compile = tracing +
    lowering + XLA compilation, from jax.monitoring)."""
    rows = [f'  {name:<12} {timing_line(wall, comp)}' for name, wall, comp in timings]
    compiling = sum(c for _, _, c in timings)
    rows.append(f'  {"total":<12} {timing_line(total, compiling)}')
    return (
        '[demo] time per stage (compiling = tracing + lowering + XLA compilation):\n'
        + '\n'.join(rows)
    )


def make_workdir(workdir: str) -> None:
    """Creates the demo's workdir with its parents (unlike --workdir of dreamer4_jax.main, whose
    parent must exist: the demo's default runs/demo is expected to be created)."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocking = workdir
        while blocking and not os.path.exists(blocking):
            blocking = os.path.dirname(blocking)
        raise config_checks.ConfigError(
            f'--workdir={workdir}: cannot create it, {blocking or workdir} is a file. Pick '
            'another path.'
        ) from e
    config_checks.check_workdir(workdir)


def main(argv=None) -> int:
    """Runs the wanted stages; bad input ends with one line `Error: ...` and exit code 2."""
    return errors.cli(lambda: _main(argv))


def _main(argv) -> int:
    parser = errors.ArgumentParser(
        prog='python -m dreamer4_jax.demo', description=__doc__.split('\n')[0]
    )
    parser.add_argument('--workdir', default='runs/demo')
    parser.add_argument('--stages', default=','.join(STAGES))
    parser.add_argument(
        '--steps_scale',
        type=float,
        default=1.0,
        help="multiply every stage's training steps (e.g. 0.1 for a smoke run)",
    )
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)

    wanted = args.stages.split(',')
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        parser.error(f'unknown stage(s) {unknown}; stages: {", ".join(STAGES)}')
    if not (math.isfinite(args.steps_scale) and args.steps_scale > 0):
        parser.error(f'--steps_scale={args.steps_scale} must be a positive number, e.g. 0.1')
    make_workdir(args.workdir)
    t0 = time.perf_counter()
    timings = []
    for stage in STAGES:
        if stage not in wanted:
            continue
        with CompileClock() as clock:
            try:
                run_stage(stage, args.workdir, args.steps_scale)
            except errors.UserError as e:
                raise errors.UserError(f'stage {stage}: {e}') from e
        timings.append((stage, clock.wall, clock.compile))
        print(f'[demo] {stage}: {timing_line(clock.wall, clock.compile)}', flush=True)
    print(timing_table(timings, time.perf_counter() - t0), flush=True)
    minutes = (time.perf_counter() - t0) / 60
    print(
        f'[demo] done in {minutes:.1f} min. Open {os.path.join(args.workdir, "report.html")} '
        f"(or report.md); each stage's metrics.jsonl, tensorboard/, eval/ and checkpoints/ are "
        f'in {args.workdir}/<stage>/.',
        flush=True,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
