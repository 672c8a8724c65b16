"""`make demo`: the whole pipeline at a tiny config on CPU, resumable stage by stage.

  python -m dreamer4_jax.demo --workdir=runs/demo [--stages=toy]

Each stage trains with the shared loop in its own folder under the workdir; re-running the same
command skips finished stages and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from absl import logging

from dreamer4_jax import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (stage name, experiment file, variant). Later stages read earlier stages' checkpoints through
# config fields set in `_link`.
STAGES = (('toy', 'experiments/toy.py', ''),)


def _stage_config(name: str, path: str, variant: str, workdir: str):
    config = config_checks.load_config(
        os.path.join(ROOT, path) + (f':{variant}' if variant else '')
    )
    return config


def _finished(stage_dir: str, steps: int) -> bool:
    return os.path.isdir(os.path.join(stage_dir, 'checkpoints', str(steps)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default='runs/demo')
    parser.add_argument('--stages', default=','.join(s[0] for s in STAGES))
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)

    from dreamer4_jax.train import phases  # after flags: keeps --help fast

    wanted = args.stages.split(',')
    unknown = sorted(set(wanted) - {s[0] for s in STAGES})
    if unknown:
        parser.error(f'unknown stage(s) {unknown}; stages: {[s[0] for s in STAGES]}')
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    for name, path, variant in STAGES:
        if name not in wanted:
            continue
        stage_dir = os.path.join(args.workdir, name)
        config = _stage_config(name, path, variant, args.workdir)
        if _finished(stage_dir, int(config.train.steps)):
            print(f'[demo] {name}: already finished in {stage_dir}, skipping', flush=True)
            continue
        print(f'[demo] {name}: training in {stage_dir}', flush=True)
        try:
            phases.run_phase(config, stage_dir)
        except config_checks.ConfigError as e:
            print(f'Config error in stage {name}: {e}', file=sys.stderr)
            return 2
    minutes = (time.perf_counter() - t0) / 60
    print(f'[demo] done in {minutes:.1f} min. Outputs under {os.path.abspath(args.workdir)}:')
    for name, _, _ in STAGES:
        if name in wanted:
            print(
                f'  {name}: metrics.jsonl, tensorboard/, checkpoints/ in '
                f'{os.path.join(args.workdir, name)}'
            )
    return 0


if __name__ == '__main__':
    sys.exit(main())
