"""Overhead of the shared training loop: toy steps/s through loop.run (logging, global batches,
dispatch-ahead) against the bare jitted step on the same batches."""

from __future__ import annotations

import tempfile
import time

import jax

from benchmarks.run import time_fn
from dreamer4_jax import parallel
from dreamer4_jax.train import loop, toy
from experiments.toy import get_config


def run(quick: bool = False) -> dict:
    config = get_config()
    config.train.steps = 200 if quick else 1000
    config.train.log_every = 100
    config.train.checkpoint_every = 10**9
    phase = toy.make_phase(config)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        loop.run(phase, config, workdir + '/run')
        loop_seconds = time.perf_counter() - t0

    mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    state, _ = parallel.create_sharded(phase.init, mesh, config.sharding_rules, jax.random.key(0))
    batch = next(phase.make_data(0, 1))
    step = jax.jit(phase.train_step)
    bare = time_fn(step, state, batch, jax.random.key(0))
    steps = int(config.train.steps)
    return {
        'loop_steps_per_sec_incl_compile_and_final_checkpoint': steps / loop_seconds,
        'bare_step_seconds': bare,
        'bare_steps_per_sec': 1 / bare,
    }
