"""Matmul FLOPs from the jaxpr (dreamer4_jax.jaxpr_flops), checked by hand and against XLA."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P
from nn_params import random_params

from dreamer4_jax.jaxpr_flops import function_flops
from dreamer4_jax.nn import Transformer, TransformerConfig, encoder_layout, train_step_flops

A = jnp.ones((64, 32))
W = jnp.ones((32, 16))


def _xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list | tuple) else cost)['flops']


def test_matmul_conv_and_loops_by_hand():
    one = 2 * 64 * 32 * 16
    assert function_flops(lambda a, w: a @ w, A, W).flops == one
    img = jnp.ones((2, 8, 8, 3))
    kernel = jnp.ones((3, 3, 3, 5))
    conv = lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    assert function_flops(conv, img, kernel).flops == 2 * (2 * 8 * 8 * 5) * (3 * 3 * 3)

    def scanned(a):  # 5 iterations of two matmuls
        return jax.lax.scan(lambda c, _: (c @ W @ W.T, None), a, None, length=5)[0]

    assert function_flops(scanned, A).flops == 5 * 2 * one
    # XLA's cost analysis counts the scan body once (why the AOT report does not use it).
    assert _xla_flops(scanned, A) < 1.1 * 2 * one

    def branches(a, p):
        return jax.lax.cond(p, lambda: (a @ W @ W.T).sum(), lambda: a.sum())

    assert function_flops(branches, A, True).flops == 2 * one  # the costlier branch

    def loop(a):  # trip count unknown at trace time: the body counts once, and is flagged
        return jax.lax.while_loop(lambda c: c.sum() < 0, lambda c: c @ W @ W.T, a)

    count = function_flops(loop, A)
    assert count.flops == 2 * one and count.loops == 1


def test_shard_map_counts_every_device():
    mesh = Mesh(np.array(jax.devices()[:4]), ('data',), axis_types=(AxisType.Auto,))
    fn = jax.shard_map(lambda a: a @ W, mesh=mesh, in_specs=P('data'), out_specs=P('data'))
    # Each of 4 devices multiplies 16 rows: together the same FLOPs as the global matmul.
    assert function_flops(fn, A).flops == 2 * 64 * 32 * 16


def test_transformer_step_agrees_with_the_analytic_count_and_xla():
    """No remat: forward + backward of an unscanned transformer is 3x its forward matmuls."""
    cfg = TransformerConfig(width=64, depth=2, num_heads=4, pattern='st', remat='none')
    layout = encoder_layout(12, 4)
    x = jnp.ones((2, 4, layout.num_tokens, 64))
    model = Transformer(cfg, layout)
    params = random_params(model, x)
    grad = jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2))
    count = function_flops(grad, params, x).flops
    # The analytic count includes the input gradient of the first layer, which grad w.r.t.
    # params skips: the jaxpr count is slightly below it.
    analytic = train_step_flops(cfg, layout.num_tokens, 2, 4)
    assert 0.9 * analytic <= count <= analytic
    # XLA counts elementwise work too (norms, softmax, RoPE): a little above the matmuls.
    xla = _xla_flops(grad, params, x)
    assert count <= xla <= 1.3 * count
    # Remat recomputes the forward in the backward: more executed FLOPs, same model.
    remat = Transformer(dataclasses.replace(cfg, remat='full'), layout)
    grad_remat = jax.grad(lambda p, x: jnp.sum(remat.apply(p, x) ** 2))
    assert function_flops(grad_remat, params, x).flops > 1.2 * count
