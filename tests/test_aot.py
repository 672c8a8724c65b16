"""Ahead-of-time compilation for compile-only TPU devices (v5p:2x2x2, no TPU needed).

Needs the `tpu` extra (jax[tpu] brings libtpu; `make test` installs it); skipped without it.
"""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

pytest.importorskip('libtpu', reason="libtpu is missing: pip install -e '.[tpu]'")

from dreamer4_jax import aot, config_checks, parallel  # noqa: E402
from dreamer4_jax.configs import DEFAULT_SHARDING_RULES  # noqa: E402
from dreamer4_jax.nn import Transformer, TransformerConfig, dynamics_layout  # noqa: E402

TOPOLOGY = 'v5p:2x2x2'


@pytest.fixture(scope='module')
def devices():
    try:
        return aot.topology_devices(TOPOLOGY)
    except Exception as e:  # a libtpu that cannot describe topologies on this host
        pytest.skip(f'no compile-only TPU devices: {e}')


def test_toy_step_compiles_with_the_loops_shardings(devices):
    config = config_checks.load_config('experiments/toy.py')
    report = aot.compile_step(config, TOPOLOGY)
    assert report['chips'] == 8 == len(devices) and report['mesh_shape'] == [8, 1, 1]
    i, o, d, b = config.toy.in_dim, config.toy.out_dim, config.toy.width, config.train.batch_size
    assert report['params'] == i * d + d * 2 * d + 2 * d * o
    # Forward: three matmuls; backward: weight gradients of all three, input gradients of the
    # two upper layers (the data needs none).
    fwd = 2 * b * (i * d + d * 2 * d + 2 * d * o)
    assert report['flops'] == fwd + fwd + 2 * b * (d * 2 * d + 2 * d * o)
    assert report['model_flops'] == report['flops']  # no remat in the toy model
    mem = report['memory_gib']
    assert report['fits'] and 0 < mem['total'] < mem['hbm'] == pytest.approx(95.74)
    assert mem['aliased'] > 0  # the state is donated: its buffers are reused for the output
    assert report['step_time_bound_s'] == pytest.approx(report['flops'] / (8 * 459e12))


def test_multi_slice_mesh_puts_the_data_axis_across_slices():
    devices = aot.topology_devices('v5p:2x2x1', num_slices=2)
    mesh = parallel.make_mesh((2, 4, 1), devices, num_slices=2)
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert slice_of[:, :, 0].tolist() == [[0] * 4, [1] * 4]


def test_a_program_that_does_not_fit_answers_in_one_line(tmp_path):
    cmd = [sys.executable, '-m', 'dreamer4_jax.aot', '--config=experiments/toy.py',
           f'--topology={TOPOLOGY}', '--config.toy.width=131072',
           f'--out={tmp_path / "aot.json"}']  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [
        'does not fit: needs 512.1 GiB per chip (temporaries alone), TPU v5p has 95.7 GiB'
    ]
    assert not (tmp_path / 'aot.json').exists()


def test_imagination_phase_compiles_with_abstract_earlier_runs(tmp_path):
    """The tiny imagination step (rollouts with the KV cache, earlier runs from the same
    experiment file) through the command line; a subprocess, since a TPU compiler crash aborts
    the process (libtpu 0.0.42 aborted on the cache's multi-frame scatter here)."""
    out = tmp_path / 'aot.json'
    cmd = [sys.executable, '-m', 'dreamer4_jax.aot',
           '--config=experiments/craftax_tiny.py:imagination', f'--topology={TOPOLOGY}',
           f'--out={out}']  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['phase'] == 'imagination' and report['fits']
    assert report['frozen_params'] > 0 and report['params'] > report['frozen_params']
    assert report['unknown_trip_loops'] == 0  # rollouts are scans: counted by trip count
    assert report['flops'] > report['xla_flops']  # XLA counts each scan body once


def test_splash_attention_compiles_for_v5p(devices):
    """The Mosaic lowering of the splash kernel (space and time layers, under shard_map)."""
    cfg = TransformerConfig(width=256, depth=2, num_heads=4, num_kv_heads=2, head_dim=64,
                            pattern='st', time_window=4, dtype='bfloat16',
                            attention_impl='splash')  # fmt: skip
    layout = dynamics_layout(num_latents=16, num_registers=2)
    model = Transformer(cfg, layout)
    x = jax.ShapeDtypeStruct((8, 8, layout.num_tokens, 256), jnp.float32)
    mesh = parallel.make_mesh((8, 1, 1), devices)
    rules = DEFAULT_SHARDING_RULES
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    indep = jax.ShapeDtypeStruct((8,), jnp.bool_)
    batch = jax.sharding.NamedSharding(mesh, P(('data', 'fsdp')))

    def loss(p, x, ind):
        with nn.logical_axis_rules(rules):
            return jnp.sum(model.apply(p, x, ind) ** 2)

    with jax.set_mesh(mesh):
        step = jax.jit(jax.grad(loss), in_shardings=(None, batch, batch))
        compiled = step.lower(params, x, indep).compile()
    text = compiled.as_text()
    assert 'tpu_custom_call' in text  # the Pallas kernel, not an XLA fallback
    assert np.isfinite(compiled.memory_analysis().temp_size_in_bytes)
