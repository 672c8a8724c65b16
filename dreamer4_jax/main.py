"""Entry point: `python -m dreamer4_jax.main --config=experiments/x.py:variant --workdir=DIR`.

Overrides: `--config.train.steps=100`. The phase is `config.phase`. Only flag parsing and
dispatch live here; each phase is built by dreamer4_jax.train.phases.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and outputs.')


def _precheck_overrides(argv: list[str]) -> None:
    """Fails with one clear message for an unknown --config.x field, before absl parses."""
    from dreamer4_jax import config_checks

    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    paths = config_checks.override_paths(argv)
    if spec is None or not paths:
        return
    config = config_checks.load_config(spec)
    try:
        config_checks.check_overrides(config, paths)
    except config_checks.ConfigError as e:
        print(f'Config error: {e}', file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    del argv
    from dreamer4_jax import config_checks, parallel
    from dreamer4_jax.train import phases

    # Orbax and grain log every file operation at INFO; keep the console for progress lines.
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError('--config is required, e.g. --config=experiments/toy.py')
    parallel.maybe_initialize_distributed(config)
    try:
        phases.run_phase(config, _WORKDIR.value)
    except config_checks.ConfigError as e:
        print(f'Config error: {e}', file=sys.stderr)
        sys.exit(2)


def entry() -> None:
    _precheck_overrides(sys.argv)
    app.run(main)


if __name__ == '__main__':
    entry()
