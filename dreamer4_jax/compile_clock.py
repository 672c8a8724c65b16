"""How much of a stretch of wall time went to compiling, measured by JAX itself.

JAX reports every tracing to a jaxpr, lowering to MLIR and backend (XLA) compilation as a time
span through `jax.monitoring`. `CompileClock` listens to those spans while it is open and sums
their union: nested spans (a jit traced inside another's trace) and spans on several threads
count once, and nothing is estimated from step timings (a first step also pays for data loading
and warm-up, which are not compilation).
"""

from __future__ import annotations

import threading
import time

import jax.monitoring

COMPILE_EVENTS = (
    '/jax/core/compile/jaxpr_trace_duration',
    '/jax/core/compile/jaxpr_to_mlir_module_duration',
    '/jax/core/compile/backend_compile_duration',
)


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float('-inf')
    for start, end in sorted(spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


class CompileClock:
    """`with CompileClock() as c: ...` then c.wall (seconds) and c.compile (seconds of it)."""

    def __init__(self):
        self._spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._start = self._end = 0.0

    def _listen(self, event: str, start: float, end: float, **_) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self._spans.append((start, end))

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_time_span_listener(self._listen)
        self._start = time.time()  # the spans are time.time() stamps
        return self

    def __exit__(self, *exc) -> None:
        self._end = time.time()
        jax.monitoring.unregister_event_time_span_listener(self._listen)

    @property
    def wall(self) -> float:
        return (self._end or time.time()) - self._start

    @property
    def compile(self) -> float:
        with self._lock:
            return union_seconds(list(self._spans))
