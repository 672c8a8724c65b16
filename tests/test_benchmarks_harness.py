"""The benchmark harness writes one JSON with machine info, both peaks and MFU ratios."""

import json

import pytest

from benchmarks import run as bench_run


def test_harness_writes_peaks_and_derived_mfu(tmp_path, monkeypatch):
    out = tmp_path / 'bench.json'

    class Fake:
        @staticmethod
        def run(quick):
            return {'train_flops_per_sec': 1e9, 'note': 'x'}

    monkeypatch.setattr(bench_run, 'discover', lambda: ['fake'])
    monkeypatch.setattr(bench_run.importlib, 'import_module', lambda name: Fake)
    monkeypatch.setattr(bench_run, 'matmul_peak', lambda dtype, out_dtype=None: 4e9)
    results = bench_run.main(['--out', str(out), '--quick'])
    saved = json.loads(out.read_text())
    assert saved['peaks']['f32_matmul_flops'] == 4e9
    assert saved['benchmarks']['fake']['train_mfu_f32'] == pytest.approx(0.25)
    assert saved['machine']['cpu_count'] >= 1
    assert results['benchmarks']['fake']['note'] == 'x'


def test_harness_rejects_unknown_benchmark(tmp_path):
    with pytest.raises(SystemExit):
        bench_run.main(['--out', str(tmp_path / 'x.json'), '--only', 'no_such_bench'])
    assert not (tmp_path / 'x.json').exists()


def test_matmul_peak_is_positive_and_finite():
    import jax.numpy as jnp

    flops = bench_run.matmul_peak(jnp.float32, n=128)
    assert 1e6 < flops < 1e15
