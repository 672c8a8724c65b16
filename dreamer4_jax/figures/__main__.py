"""`python -m dreamer4_jax.figures NAME --scale=SCALE --workdir=DIR [--episodes=N]`.

NAME: table2 (PAPER 12.3 design cascade), fig7 (PAPER 12.5 action labels) or table7 (PAPER 12.1
success rates on Craftax). SCALE: smoke (seconds per arm; tests), tiny (the demo's sizes), small,
or the path of an experiment file that defines the sweeps. Trains every arm that is not finished
(re-running resumes), evaluates, and writes DIR/NAME.md and DIR/NAME.png. Table 2 and Fig. 7
arms share one tokenizer run, DIR/tokenizer; Table 7 trains the demo's stages in DIR/<stage>.
"""

from __future__ import annotations

import os
import sys

from dreamer4_jax import config_checks, errors

FIGURES = ('table2', 'fig7', 'table7')


def main(argv=None) -> int:
    """Bad input ends with one line `Error: ...` and exit code 2."""
    return errors.cli(lambda: _main(argv))


def _main(argv) -> int:
    parser = errors.ArgumentParser(
        prog='python -m dreamer4_jax.figures', description=__doc__.split('\n')[0]
    )
    parser.add_argument('name', choices=FIGURES)
    parser.add_argument('--scale', default='tiny', help='smoke, tiny, small or an experiment file')
    parser.add_argument('--workdir', required=True)
    parser.add_argument(
        '--episodes', type=int, default=0,
        help='table7: real episodes per agent (default: the experiment FIGURES, 64 at tiny)',
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.episodes < 0:
        parser.error(f'--episodes={args.episodes} must be >= 1 (0: the experiment default)')
    from absl import logging

    from dreamer4_jax.figures import experiment

    logging.set_verbosity(logging.WARNING)
    exp = experiment.load_experiment(args.scale)
    os.makedirs(args.workdir, exist_ok=True)
    config_checks.check_workdir(args.workdir)
    if args.name == 'table2':
        from dreamer4_jax.figures import table2

        paths = table2.run(exp, args.workdir)
    elif args.name == 'fig7':
        from dreamer4_jax.figures import fig7

        paths = fig7.run(exp, args.workdir)
    else:
        from dreamer4_jax.figures import table7

        paths = table7.run(exp, args.workdir, episodes=args.episodes or None)
    print(f'[figures] {args.name}: wrote {paths[0]} and {paths[1]}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
