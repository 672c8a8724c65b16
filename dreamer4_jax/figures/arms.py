"""Training the arms of a figure: one shared-loop run per arm in its own workdir, resumable.

An arm is a config string (`experiments/x.py:variant,key=value,...`) plus the earlier runs it
builds on (the one tokenizer every Table 2 / Fig. 7 arm shares). A finished arm (its final
checkpoint exists) is skipped; an interrupted one resumes from its last checkpoint (the loop does
that by itself). Progress lines say how many arms are done, which one trains, and an ETA from
the arms trained so far in this invocation.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from dreamer4_jax import config_checks, errors

Train = Callable[[ml_collections.ConfigDict, str], object]


@dataclasses.dataclass(frozen=True)
class Arm:
    """spec: the --config string; workdir: where it trains; links: {config field: workdir} of
    the earlier runs it reads (e.g. {'dynamics.tokenizer_workdir': 'DIR/tokenizer'})."""

    name: str
    spec: str
    workdir: str
    links: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def config(self) -> ml_collections.ConfigDict:
        config = config_checks.load_config(self.spec)
        for field, where in self.links.items():
            section, name = field.split('.')
            config[section][name] = where
        return config


def finished(workdir: str, steps: int) -> bool:
    """True when the run in `workdir` saved its final checkpoint."""
    return os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps)))


def sweep_arms(
    experiment: str, variant: str, sweep: Mapping[str, Sequence[str]], folder: str, links
) -> list[Arm]:
    """One arm per sweep entry, `experiment:variant,<settings>`, trained in folder/<name>."""
    return [
        Arm(
            name,
            ','.join([f'{experiment}:{variant}', *settings]),
            os.path.join(folder, name),
            dict(links),
        )
        for name, settings in sweep.items()
    ]


def duration(seconds: float) -> str:
    return f'{seconds:.0f} s' if seconds < 90 else f'{seconds / 60:.1f} min'


def run_arms(
    arms: Sequence[Arm],
    label: str,
    *,
    train: Train | None = None,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> None:
    """Trains every unfinished arm in order; `train(config, workdir)` is the shared loop."""
    if train is None:
        from dreamer4_jax.train import phases  # deferred: jax and the models load here

        train = phases.run_phase
    configs = [arm.config() for arm in arms]  # every config error before any training
    todo = [i for i, c in enumerate(configs) if not finished(arms[i].workdir, c.train.steps)]
    total = len(arms)
    log(f'[{label}] {total - len(todo)}/{total} arms finished, {len(todo)} to train')
    spent = []
    for n, i in enumerate(todo):
        arm, config = arms[i], configs[i]
        eta = ''
        if spent:
            eta = f', ETA {duration(sum(spent) / len(spent) * (len(todo) - n))}'
        done = total - len(todo) + n
        log(
            f'[{label}] {done}/{total} arms done; training {arm.name!r} ({config.train.steps} '
            f'steps) in {arm.workdir}{eta}'
        )
        start = clock()
        os.makedirs(os.path.dirname(os.path.abspath(arm.workdir)), exist_ok=True)
        train(config, arm.workdir)
        if not finished(arm.workdir, config.train.steps):  # SIGTERM: the loop saved and returned
            raise errors.Interrupted(
                f'[{label}] {arm.name!r} stopped before step {config.train.steps} in '
                f'{arm.workdir} (checkpoint saved); run the same command again to resume'
            )
        spent.append(clock() - start)
        log(f'[{label}] {arm.name!r} trained in {duration(spent[-1])}')
    log(f'[{label}] {total}/{total} arms done')
