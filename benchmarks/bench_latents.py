"""Train steps of the demo's dynamics and agent stages (experiments/craftax_tiny.py) with latents
encoded in the step ('on_the_fly') against latents from the cache ('cache'), in one process.

  python -m benchmarks.bench_latents [--steps=20] [--rounds=3] [--data_dir=data_cache]

Each step is timed as the loop runs it (next batch from the pipeline, to global arrays, the
jitted step; dispatch of step t before reading step t-1): rounds of `steps` steps alternate
between the two modes after both have compiled, and the best round of each counts (the machine
may be shared). The one-time encode of the train split is timed on its own. Earlier runs are
random-init checkpoints of the craftax_tiny variants (speed does not depend on the weights); the
dataset is synthetic episodes of the demo's shape unless --data_dir holds craftax_tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import checkpoint, config_checks, parallel, pretrained
from dreamer4_jax.data.synthetic import build_synthetic_dataset
from dreamer4_jax.train import loop, phases
from dreamer4_jax.train import state as state_lib

EXPERIMENT = 'experiments/craftax_tiny.py'
MODES = ('on_the_fly', 'cache')


def _config(variant: str, root: str, data_dir: str):
    config = config_checks.load_config(f'{EXPERIMENT}:{variant}')
    config.data.dir = data_dir
    config.dynamics.tokenizer_workdir = os.path.join(root, 'tokenizer')
    config.agent.dynamics_workdir = os.path.join(root, 'dynamics')
    return config


def save_random_run(config, workdir: str) -> None:
    """A checkpoint of `config`'s phase with random weights (EMA = weights where kept)."""
    run = pretrained.abstract(config, pretrained.saved_config, workdir)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.02 * np.random.RandomState(0).standard_normal(s.shape), s.dtype),
        run.abstract_params(),
    )
    aux = {'ema': params} if pretrained.uses_ema(config) else {}
    state = state_lib.TrainState(step=jnp.asarray(1), params=params, opt_state={}, aux=aux)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(1, state, None, jax.random.key(0), config)
    ckpt.close()


class _Runner:
    """One phase as the loop runs it: sharded state, its data, the loop's jitted step."""

    def __init__(self, config):
        self.phase = phases.make_phase(config)
        self.mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
        rules = tuple(tuple(r) for r in config.sharding_rules)
        self.state, shardings = parallel.create_sharded(
            self.phase.init, self.mesh, rules, jax.random.key(0)
        )
        with jax.set_mesh(self.mesh):
            if self.phase.warm_start is not None:
                self.state = self.phase.warm_start(self.state)
        t0 = time.perf_counter()
        self.data = self.phase.make_data(0, 1)  # the cache mode encodes the split here
        self.make_data_seconds = time.perf_counter() - t0
        self.consts = (jax.device_put(self.phase.constants(), parallel.replicated(self.mesh)),)
        self.step_fn = loop.jit_train_step(self.phase, self.mesh, rules, shardings, 1)
        self.steps_done = 0
        t0 = time.perf_counter()
        self.run(1)
        self.first_step_seconds = time.perf_counter() - t0

    def run(self, n: int) -> float:
        """Seconds per step over n steps (the loop's order: dispatch t, then read t - 1)."""
        pending = None
        with jax.set_mesh(self.mesh):
            t0 = time.perf_counter()
            for _ in range(n):
                batch = parallel.host_to_global(next(self.data), self.mesh)
                rng = jax.random.key(self.steps_done)
                self.state, metrics = self.step_fn(self.state, batch, rng, *self.consts)
                if pending is not None:
                    float(pending['loss/total'])
                pending, self.steps_done = metrics, self.steps_done + 1
            float(pending['loss/total'])
            return (time.perf_counter() - t0) / n


def run(quick: bool = False, steps: int | None = None, rounds: int = 3, data_dir: str = '') -> dict:
    steps = steps or (5 if quick else 20)
    out = {}
    with tempfile.TemporaryDirectory() as root:
        if not data_dir:
            data_dir = os.path.join(root, 'data')
            cfg = _config('dynamics', root, data_dir).data
            n, length = (8, 100) if quick else (29, 200)  # the demo's: 29 train episodes
            cfg.eval_fraction = 1 / (n + 1)
            build_synthetic_dataset(cfg, lengths=(length,) * (n + 1))
        tok_cfg, dyn_cfg = _config('tokenizer', root, data_dir), _config('dynamics', root, data_dir)
        save_random_run(tok_cfg, dyn_cfg.dynamics.tokenizer_workdir)
        save_random_run(dyn_cfg, dyn_cfg.agent.dynamics_workdir)
        for variant in ('dynamics', 'agent'):
            runners = {}
            for mode in MODES:
                config = _config(variant, root, data_dir)
                config.data.latents = mode
                runners[mode] = _Runner(config)
            best = {mode: float('inf') for mode in MODES}
            for _ in range(rounds):
                for mode in MODES:
                    best[mode] = min(best[mode], runners[mode].run(steps))
            cache = runners['cache']
            out[variant] = {
                'step_seconds_on_the_fly': best['on_the_fly'],
                'step_seconds_cache': best['cache'],
                'speedup': best['on_the_fly'] / best['cache'],
                'first_step_seconds_on_the_fly': runners['on_the_fly'].first_step_seconds,
                'first_step_seconds_cache': cache.first_step_seconds,
                'make_data_seconds_cache': cache.make_data_seconds,  # encodes on first use
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--data_dir', default='', help='folder holding craftax_tiny (else synthetic)')
    args = p.parse_args()
    print(json.dumps(run(False, args.steps, args.rounds, args.data_dir), indent=1))


if __name__ == '__main__':
    main()
