"""The experiment file behind a figure scale, its evaluation sizes, and the shared prefix
(dataset and tokenizer run) that every Table 2 and Fig. 7 arm reads."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from types import ModuleType

from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.figures.arms import Arm, sweep_arms

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# --scale names; any other value is the path of an experiment file with the sweeps.
SCALES = {
    'smoke': os.path.join(ROOT, 'experiments', 'smoke.py'),
    'tiny': os.path.join(ROOT, 'experiments', 'craftax_tiny.py'),
    'small': os.path.join(ROOT, 'experiments', 'craftax_small.py'),
}


@dataclasses.dataclass(frozen=True)
class FigureSizes:
    """How much a figure evaluates (an experiment's FIGURES dict overrides these defaults).

    videos: held-out windows generated per arm (the Frechet metric fits a Gaussian to them);
    context / horizon: real frames given, frames generated; fps_frames: frames timed at batch 1;
    episodes / max_steps: real-environment episodes per agent in Table 7 and their length.
    """

    videos: int = 64
    context: int = 4
    horizon: int = 12
    fps_frames: int = 32
    episodes: int = 64
    max_steps: int = 300


@dataclasses.dataclass(frozen=True)
class Experiment:
    path: str
    module: ModuleType
    sizes: FigureSizes

    @property
    def shown(self) -> str:
        """The path as tables show it: relative to the repository when inside it."""
        rel = os.path.relpath(self.path, ROOT)
        return self.path if rel.startswith('..') else rel

    def sweep(self, name: str) -> dict[str, list[str]]:
        fn = getattr(self.module, f'{name}_sweep', None)
        if not callable(fn):
            raise ConfigError(
                f'{self.path} defines no {name}_sweep(); an experiment used by the figures '
                f'command defines {name}_sweep() returning {{arm name: [key=value, ...]}} '
                '(see experiments/craftax_tiny.py).'
            )
        return dict(fn())


def load_experiment(scale: str) -> Experiment:
    """The experiment file of `scale` ('smoke', 'tiny', 'small' or a path to an experiment)."""
    path = SCALES.get(scale, scale)
    if not os.path.isfile(path):
        raise ConfigError(
            f'--scale={scale}: neither a scale ({", ".join(SCALES)}) nor an experiment file.'
        )
    spec = importlib.util.spec_from_file_location('_figures_experiment', path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's experiment file: report, do not crash
        what = f'{type(e).__name__}: {e}'
        raise ConfigError(f'--scale={scale}: {path} fails to load ({what}).') from e
    try:
        sizes = FigureSizes(**getattr(module, 'FIGURES', {}))
    except TypeError as e:
        raise ConfigError(f'{path}: FIGURES has unknown keys ({e}).') from e
    return Experiment(path, module, sizes)


def tokenizer_arm(exp: Experiment, workdir: str) -> Arm:
    """The one tokenizer run (workdir/tokenizer) that every dynamics arm of the figures reads."""
    return Arm('tokenizer', f'{exp.path}:tokenizer', os.path.join(workdir, 'tokenizer'))


def ensure_data(arm: Arm, log) -> None:
    """The dataset of the experiment (collected once if missing; shared by every arm)."""
    from dreamer4_jax.data.build import ensure_dataset  # deferred: tensorflow_datasets is slow

    log(f'[figures] data: {ensure_dataset(arm.config().data)}')


def dynamics_sweep(exp: Experiment, workdir: str, name: str, log) -> tuple[Arm, list[Arm]]:
    """(the shared tokenizer arm, the dynamics arms of sweep `name` in workdir/name), with the
    dataset ensured: the common start of every figure that sweeps dynamics runs."""
    tok = tokenizer_arm(exp, workdir)
    ensure_data(tok, log)
    arms = sweep_arms(
        exp.path, 'dynamics', exp.sweep(name), os.path.join(workdir, name),
        {'dynamics.tokenizer_workdir': tok.workdir},
    )  # fmt: skip
    return tok, arms
