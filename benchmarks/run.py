"""Benchmark harness: `python -m benchmarks.run --out=benchmarks/results/bench.json [--only=x]`.

Writes one JSON file: machine info, this machine's f32 and bf16 matmul peaks measured in the same
run (so model FLOPs utilization is a ratio of two numbers taken together on a noisy machine), and
the figures of every `benchmarks/bench_<name>.py` (each exposes `run(quick: bool) -> dict`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp


def time_fn(fn, *args, repeats: int = 5, min_time: float = 0.2) -> float:
    """Best-of-`repeats` seconds per call of an already-compiled function."""
    jax.block_until_ready(fn(*args))
    best = float('inf')
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            jax.block_until_ready(fn(*args))
            n += 1
            if time.perf_counter() - t0 >= min_time:
                break
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def matmul_peak(dtype, out_dtype=None, n: int = 2048) -> float:
    """FLOP/s of a large square matmul (2 n^3 per call)."""
    a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n)).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=out_dtype))
    return 2 * n**3 / time_fn(f, a, b)


def machine_info() -> dict:
    return {
        'platform': platform.platform(),
        'python': sys.version.split()[0],
        'cpu_count': os.cpu_count(),
        'jax': jax.__version__,
        'backend': jax.default_backend(),
        'devices': [str(d) for d in jax.devices()],
        'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
    }


def discover() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(
        m.name[len('bench_') :] for m in pkgutil.iter_modules([here]) if m.name.startswith('bench_')
    )


def write_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix='.tmp')
    with os.fdopen(fd, 'w') as f:
        json.dump(payload, f, indent=2, default=float)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='benchmarks/results/bench.json')
    parser.add_argument('--only', default='', help='comma-separated benchmark names')
    parser.add_argument('--quick', action='store_true', help='small sizes (seconds each)')
    args = parser.parse_args(argv)

    names = discover()
    if args.only:
        wanted = args.only.split(',')
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f'unknown benchmark(s) {unknown}; available: {names}')
        names = wanted
    print('measuring matmul peaks...', flush=True)
    peaks = {
        'f32_matmul_flops': matmul_peak(jnp.float32),
        'bf16_matmul_f32_out_flops': matmul_peak(jnp.bfloat16, jnp.float32),
    }
    print(
        f'  f32 {peaks["f32_matmul_flops"] / 1e9:.0f} GFLOP/s, bf16->f32 '
        f'{peaks["bf16_matmul_f32_out_flops"] / 1e9:.0f} GFLOP/s',
        flush=True,
    )
    results = {'machine': machine_info(), 'peaks': peaks, 'benchmarks': {}}
    for name in names:
        print(f'running bench_{name}...', flush=True)
        t0 = time.perf_counter()
        try:
            figures = importlib.import_module(f'benchmarks.bench_{name}').run(quick=args.quick)
        except Exception:  # noqa: BLE001 - one broken benchmark must not lose the others
            figures = {'error': traceback.format_exc()}
        figures['wall_seconds'] = time.perf_counter() - t0
        # MFU against the f32 peak measured in this run, where a benchmark reports its FLOP/s.
        for key, value in list(figures.items()):
            if key.endswith('flops_per_sec') and isinstance(value, int | float):
                figures[key.replace('flops_per_sec', 'mfu_f32')] = value / peaks['f32_matmul_flops']
        results['benchmarks'][name] = figures
        print(json.dumps({name: figures}, indent=1, default=float)[:2000], flush=True)
    write_atomic(args.out, results)
    print(f'wrote {args.out}')
    return results


if __name__ == '__main__':
    main()
