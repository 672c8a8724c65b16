"""Metrics output: workdir/metrics.jsonl, TensorBoard event files, and a progress line.

Only process 0 writes; the others keep quiet. metrics.jsonl is appended (a resumed run continues
the same file), one JSON object per line: {"step": N, "name": value, ...}. Files are opened at
the first write, so a run that stops before its first logged step leaves none behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '?'
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class MetricsWriter:
    def __init__(self, workdir: str, *, phase: str, total_steps: int, main_metrics: Sequence[str]):
        self.enabled = jax.process_index() == 0
        self.phase = phase
        self.total_steps = total_steps
        self.main_metrics = tuple(main_metrics)
        self._t0 = None
        self._s0 = 0
        self._jsonl = self._tb = None
        if not self.enabled:
            return
        if '://' in workdir:
            # Object stores cannot append: metrics go to a local mirror, checkpoints to the bucket.
            workdir = os.path.join('runs', workdir.split('://', 1)[1].replace('/', '_'))
            print(f'[{phase}] metrics.jsonl and tensorboard/ are written locally to {workdir}')
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')

    def _open(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self._jsonl = open(self.jsonl_path, 'a', buffering=1)  # noqa: SIM115 - closed in close()
        from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it

        self._tb = SummaryWriter(os.path.join(self.workdir, 'tensorboard', self.phase))

    def start(self, step: int) -> None:
        self._t0, self._s0 = time.perf_counter(), step

    def write(self, step: int, metrics: Mapping[str, float], *, prefix: str = '') -> None:
        if not self.enabled:
            return
        if self._jsonl is None:
            self._open()
        row = {'step': int(step), 'phase': self.phase}
        for k, v in metrics.items():
            row[prefix + k] = float(v)
            self._tb.add_scalar(f'{prefix}{k}', float(v), int(step))
        try:
            self._jsonl.write(json.dumps(row) + '\n')
        except OSError as e:  # a write error does not name its file; say which one (disk full)
            raise OSError(e.errno, e.strerror, self.jsonl_path) from e

    def progress(self, step: int, metrics: Mapping[str, float]) -> dict:
        """Prints 'phase step/total | steps/s | ETA | main losses'; returns the speed figures.

        The rate is over the interval since the previous call, so compile time shows only in
        the first interval and the ETA follows the current speed.
        """
        now = time.perf_counter()
        elapsed = now - (self._t0 or now)
        done = step - self._s0
        rate = done / elapsed if elapsed > 0 and done > 0 else float('nan')
        self._t0, self._s0 = now, step
        eta = (self.total_steps - step) / rate if rate == rate and rate > 0 else float('nan')
        if self.enabled:
            shown = [k for k in self.main_metrics if k in metrics] or sorted(metrics)[:4]
            losses = '  '.join(f'{k}={float(metrics[k]):.4g}' for k in shown)
            print(
                f'[{self.phase}] step {step}/{self.total_steps} | {rate:.2f} steps/s | '
                f'ETA {_fmt_duration(eta)} | {losses}',
                flush=True,
            )
        return {'steps_per_sec': rate}

    def message(self, text: str) -> None:
        if self.enabled:
            print(f'[{self.phase}] {text}', file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._jsonl is None:
            return
        jsonl, tb = self._jsonl, self._tb
        self._jsonl = self._tb = None
        try:
            jsonl.close()
        finally:
            _close_tensorboard(tb)


def _close_tensorboard(tb) -> None:
    """Closes a SummaryWriter. When its last flush fails (a full disk), its writer threads are
    stopped and marked closed anyway: tensorboardX's exit hook would retry the flush and print
    a second traceback after the one-line error."""
    writers = list((tb.all_writers or {}).values())
    try:
        tb.close()
    except Exception:
        for writer in writers:
            event_writer = writer.event_writer
            with contextlib.suppress(Exception):
                event_writer._worker.stop()
            event_writer._closed = True
        raise
