"""The benchmark harness writes one JSON with machine info, both peaks and MFU ratios."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from synthetic_tokenizer import one_layer_tokenizer_settings, synthetic_tokenizer_config

from benchmarks import run as bench_run
from benchmarks import tokenizer_probe


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


def test_tokenizer_probe_learns_and_reports_held_out_psnr(tmp_path):
    """The README's tokenizer probes: a small tokenizer on synthetic frames gets better in 100
    steps, and the PSNR it reports is that of the mean MSE over the held-out frames."""
    settings = one_layer_tokenizer_settings(str(tmp_path), 'probe')
    synthetic_tokenizer_config(settings, episodes=6)
    result = tokenizer_probe.main(
        ['--steps=100', '--frames_per_step=4', '--optimizer=muon']
        + [f'--set={s}' for s in settings]
    )
    (step0, start), (step100, end) = result['psnr']
    assert (step0, step100) == (0, 100) and result['optimizer'] == 'muon'
    assert end > start + 3.0, result['psnr']
    # The held-out MSE per row of 7-pixel patches over the 63 x 63 grid: 9 rows at each of the
    # two evaluations, together within the frame's MSE (the padding row and column add to it).
    rows0, rows100 = (np.asarray(r) for r in result['patch_row_mse'])
    assert rows0.shape == rows100.shape == (9,) and rows100.mean() < rows0.mean()
    frame_mse = 10.0 ** (-end / 10.0)
    assert (63 / 64) ** 2 * rows100.mean() <= frame_mse * (1 + 1e-5)
    # The score it uses: one [N, 1, ...] horizon step, PSNR of the mean MSE.
    a, b = jnp.full((2, 1, 4, 4, 3), 0.5), jnp.full((2, 1, 4, 4, 3), 0.6)
    assert abs(float(tokenizer_probe.psnr_of_mean_mse(a, b)[0]) - 20.0) < 1e-4  # MSE 0.01
