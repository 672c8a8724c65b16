"""Phase registry: config.phase -> a Phase for the shared loop."""

from __future__ import annotations

import importlib

import ml_collections

from dreamer4_jax import config_checks
from dreamer4_jax.train import loop

# name -> module with make_phase(config) -> loop.Phase. Modules are imported on demand so that a
# phase's heavy dependencies (LPIPS weights, Craftax) load only when that phase runs.
PHASES = {
    'toy': 'dreamer4_jax.train.toy',
    'tokenizer': 'dreamer4_jax.train.tokenizer_phase',
    'dynamics': 'dreamer4_jax.train.dynamics_phase',
    'agent': 'dreamer4_jax.train.agent_phase',
    'imagination': 'dreamer4_jax.train.imagination_phase',
}


def make_phase(config: ml_collections.ConfigDict) -> loop.Phase:
    if config.phase not in PHASES:
        raise config_checks.ConfigError(
            f'config.phase={config.phase!r} is not a phase. Choose one of: '
            f'{", ".join(sorted(PHASES))}.'
        )
    return importlib.import_module(PHASES[config.phase]).make_phase(config)


def run_phase(config: ml_collections.ConfigDict, workdir: str) -> loop.RunResult:
    config_checks.check_workdir(workdir)
    return loop.run(make_phase(config), config, workdir)
