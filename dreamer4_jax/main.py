"""Entry point: `python -m dreamer4_jax.main --config=experiments/x.py:variant --workdir=DIR`.

Overrides: `--config.train.steps=100`. The phase is `config.phase`. Only flag parsing and
dispatch live here; each phase is built by dreamer4_jax.train.phases. Bad input of any kind ends
with one line `Error: ...` on stderr and exit code 2 (dreamer4_jax.errors). A run that SIGTERM
stopped (its checkpoint saved) ends with one line saying so and exit code 143, never 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from dreamer4_jax import config_checks, errors

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and outputs.')
_HELP = ('--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def _config_spec(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith('--config='):
            return arg.split('=', 1)[1]
        if arg == '--config' and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _precheck(argv: Sequence[str]) -> None:
    """Loads --config and checks every --config.x field name before absl parses the flags.

    absl reports a missing experiment file, an unknown variant or an unknown field with a
    traceback inside its flag error; these checks say it in one line.
    """
    if any(arg in _HELP for arg in argv):
        return
    spec = _config_spec(argv)
    if not spec:
        raise errors.UserError('--config is required, e.g. --config=experiments/toy.py')
    config = config_checks.load_config(spec)
    config_checks.check_overrides(config, config_checks.override_paths(argv))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with its errors (a bad value, an unknown flag) as user errors."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        raise errors.UserError(str(e)) from e


def main(argv: list[str]) -> int:
    del argv
    # Deferred: flag and config errors (and --help) answer before jax and the models load.
    from dreamer4_jax import parallel
    from dreamer4_jax.train import phases

    # Orbax and grain log every file operation at INFO; keep the console for progress lines.
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    parallel.maybe_initialize_distributed(config)
    result = phases.run_phase(config, _WORKDIR.value)
    if result.preempted:
        print(
            f'Preempted: checkpoint saved at step {result.step} of {config.train.steps} in '
            f'{_WORKDIR.value}; run the same command again to resume.',
            file=sys.stderr,
            flush=True,
        )
        return errors.EXIT_PREEMPTED
    return 0


def entry() -> None:
    def body() -> None:
        _precheck(sys.argv)
        app.run(main, flags_parser=_parse_flags)

    sys.exit(errors.cli(body))


if __name__ == '__main__':
    entry()
