"""The training loop every phase shares (DESIGN 1, 6).

A phase supplies pure functions (`init`, `train_step`) plus a data iterator factory and an
optional host-side `evaluate`. The loop builds the mesh, creates the state already sharded,
resumes from the latest checkpoint, compiles the step once with in/out shardings and donation,
dispatches step t before reading step t-1's metrics (the host never waits on the device in steady
state), logs, evaluates, checkpoints every N steps and on SIGTERM, and stops on non-finite losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dreamer4_jax import config_checks, parallel
from dreamer4_jax.checkpoint import Checkpointer
from dreamer4_jax.errors import UserError
from dreamer4_jax.parallel import Rules
from dreamer4_jax.train.metrics_writer import MetricsWriter


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss term became NaN or inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """What a training phase plugs into the loop.

    init(rng) -> TrainState (params may be boxed with logical names); pure.
    train_step(state, batch, rng) -> (state, metrics); pure, jitted once by the loop.
    make_data(process_index, process_count) -> iterator of host-local batches with grain
      checkpointing (get_state / set_state).
    evaluate(state, step, workdir) -> dict of scalars; host side, may write files there.
    constants() -> pytree of frozen arrays (LPIPS weights, a frozen tokenizer) that the step
      takes as a 4th argument, train_step(state, batch, rng, constants): passed as jit
      arguments, never closed over (closing over large weights makes XLA constant-fold them).
    warm_start(state) -> state: puts an earlier phase's weights into a fresh, already sharded
      state (run once, before step 0; never on resume). `init` itself never reads a checkpoint,
      so the state's layout is known without one (ahead-of-time compilation).
    """

    name: str
    init: Callable[[jax.Array], Any]
    train_step: Callable[[Any, Any, jax.Array], tuple[Any, dict]]
    make_data: Callable[[int, int], Iterator]
    evaluate: Callable[[Any, int, str], dict] | None = None
    main_metrics: Sequence[str] = ('loss',)
    # Metric names checked for finiteness; default: every metric whose name contains 'loss'.
    checked_metrics: Sequence[str] | None = None
    constants: Callable[[], Any] | None = None
    warm_start: Callable[[Any], Any] | None = None


@dataclasses.dataclass
class RunResult:
    state: Any
    step: int
    preempted: bool
    last_metrics: dict
    mesh: Any = None


class _SigtermFlag:
    """Turns SIGTERM (a TPU preemption notice) into a flag the loop polls each step."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            self.raised = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: preemption is then the caller's business
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_finite(metrics: dict, names: Sequence[str] | None, step: int) -> None:
    for k, v in metrics.items():
        if names is None and 'loss' not in k:
            continue
        if names is not None and k not in names:
            continue
        if not math.isfinite(float(v)):
            raise NonFiniteLossError(
                f'Loss term {k!r} is {float(v)} at step {step}. Training stopped; the last good '
                'checkpoint is kept. Lower the learning rate, check the data, or resume from it.'
            )


def _agree(flag: bool) -> bool:
    """True on every process if any process has the flag (preemption must be collective)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _close_quietly(ckpt: Checkpointer, writer: MetricsWriter) -> None:
    """Closes both while an error propagates, without masking it (a failed async save would
    re-raise in close())."""
    with contextlib.suppress(Exception):
        ckpt.close()
    with contextlib.suppress(Exception):
        writer.close()


def _warn(text: str) -> None:
    if jax.process_index() == 0:
        print(text, file=sys.stderr, flush=True)


def jit_train_step(
    phase: Phase, mesh: Any, rules: Rules, state_shardings: Any, num_consts: int
) -> Callable:
    """The step the loop runs, jitted: fn(state, batch, rng, *consts) -> (state, metrics).

    `phase.train_step` under the logical-axis rules, with in/out shardings (state as given,
    batch split over data x fsdp, rng and constants replicated) and the state donated. `run`
    and the ahead-of-time compiler (dreamer4_jax.aot) both build it here, so what is compiled
    for a TPU topology is exactly what the loop executes. Call or lower it under
    `jax.set_mesh(mesh)`. Tracing it twice raises: a recompile in a run is a bug.
    """
    batch_sharding = parallel.batch_sharding(mesh)
    repl = parallel.replicated(mesh)
    traces = []

    def traced_step(state, batch, rng, *consts):
        # Fails loudly if the step is ever traced twice in this run: a recompile is a bug (a
        # changing batch shape or dtype, or a Python value that should be an array).
        traces.append(1)
        if len(traces) > 1:
            raise RuntimeError(
                f'{phase.name} train_step traced {len(traces)} times; it must '
                'compile once (check batch shapes/dtypes and static values).'
            )
        with nn.logical_axis_rules(rules):
            return phase.train_step(state, batch, rng, *consts)

    return jax.jit(
        traced_step,
        in_shardings=(state_shardings, batch_sharding, repl) + (repl,) * num_consts,
        out_shardings=(state_shardings, repl),
        donate_argnums=(0,),
    )


def run(phase: Phase, config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    """Trains `phase` to config.train.steps, resuming from workdir if a checkpoint exists.

    Nothing is written before the first logged step or checkpoint: a run that stops on bad input
    (config, data, an earlier phase's checkpoint) leaves the workdir as it found it.
    """
    mesh_shape = config_checks.validate(config, workdir, jax.device_count(), jax.process_count())
    mesh = parallel.make_mesh(
        mesh_shape, jax.devices()[: math.prod(mesh_shape)], int(config.mesh.get('num_slices', 1))
    )
    rules = tuple(tuple(r) for r in config.sharding_rules)
    total = int(config.train.steps)
    rng = jax.random.key(int(config.seed))
    init_rng, step_rng = jax.random.split(rng)

    state, state_shardings = parallel.create_sharded(phase.init, mesh, rules, init_rng)
    data = phase.make_data(jax.process_index(), jax.process_count())
    ckpt = Checkpointer(workdir, max_to_keep=int(config.train.keep_checkpoints))
    writer = MetricsWriter(
        workdir, phase=phase.name, total_steps=total, main_metrics=phase.main_metrics
    )

    start = 0
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings
    )
    try:
        restored = ckpt.restore_latest(abstract, data, config, warn=_warn)
    except BaseException:
        _close_quietly(ckpt, writer)
        raise
    latest = None
    if restored is not None:
        latest, state, step_rng = restored
        if latest > total:  # nothing to train, and step `total` cannot be saved or evaluated
            _close_quietly(ckpt, writer)
            raise config_checks.ConfigError(
                f'{workdir} holds a checkpoint at step {latest}, past config.train.steps='
                f'{total}: set --config.train.steps={latest} to evaluate it again (or higher to '
                'train on), or use a new workdir.'
            )
        start = latest
        writer.message(f'resumed from {ckpt.directory}/{latest}')
    elif phase.warm_start is not None:
        with jax.set_mesh(mesh):
            state = phase.warm_start(state)

    repl = parallel.replicated(mesh)
    consts = ()
    if phase.constants is not None:
        consts = (jax.device_put(phase.constants(), repl),)
    step_fn = jit_train_step(phase, mesh, rules, state_shardings, len(consts))

    def save(step: int) -> None:
        ckpt.save(step, state, data, step_rng, config)

    log_every = int(config.train.log_every)
    ckpt_every = int(config.train.checkpoint_every)
    eval_every = int(config.train.eval_every)
    sigterm_at = int(config.debug.sigterm_at_step)
    last_metrics: dict = {}
    pending: tuple[int, Any] | None = None  # (step, device metrics) not yet read
    preempted = False

    def drain() -> None:
        """Reads the pending step's metrics (blocks on it), checks them, logs them."""
        nonlocal pending, last_metrics
        if pending is None:
            return
        s, metrics = pending
        pending = None
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, phase.checked_metrics, s)
        last_metrics = metrics
        if s % log_every == 0 or s == total:
            speed = writer.progress(s, metrics)
            writer.write(s, {**metrics, **speed})

    def evaluate(step: int) -> None:
        if phase.evaluate is None:
            return
        with jax.set_mesh(mesh):
            results = phase.evaluate(state, step, workdir)
        if results:
            writer.write(step, results, prefix='eval/')
            shown = '  '.join(f'{k}={v:.4g}' for k, v in results.items())
            writer.message(f'eval at step {step}: {shown}')

    writer.start(start)
    try:
        with _SigtermFlag() as sigterm, jax.set_mesh(mesh):
            for step in range(start, total):
                if step == sigterm_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                # Multi-process runs agree on a preemption at log intervals only: the
                # allgather is a host-side sync across processes (single-process: every step).
                poll = jax.process_count() == 1 or step % log_every == 0
                if poll and _agree(sigterm.raised):
                    drain()
                    save(step)
                    preempted = True
                    writer.message(f'SIGTERM: saved checkpoint at step {step}, exiting.')
                    break
                if step > start and step % ckpt_every == 0:
                    drain()  # never save a state whose last losses were not checked finite
                    save(step)
                batch = parallel.host_to_global(next(data), mesh)
                state, metrics = step_fn(state, batch, jax.random.fold_in(step_rng, step), *consts)
                drain()  # reads step-1 while step runs
                pending = (step + 1, metrics)
                if eval_every and (step + 1) % eval_every == 0 and step + 1 < total:
                    drain()
                    evaluate(step + 1)
            else:
                drain()
                if latest != total:
                    save(total)
                evaluate(total)
        ckpt.wait()
    except BaseException:
        _close_quietly(ckpt, writer)
        raise
    ckpt.close()
    writer.close()
    final_step = int(jax.device_get(state.step))
    return RunResult(state, final_step, preempted, last_metrics, mesh)
