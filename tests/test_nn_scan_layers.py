"""scan_layers: the scanned transformer is the unrolled one with stacked parameters.

Same parameters (restacked) give the same outputs and gradients in the full-sequence pass (with
remat, and rows trained as separate images), the same frame-by-frame outputs with the KV cache,
and the stacked 'layers' axis is replicated while the other axes shard as before.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_params import random_params

from dreamer4_jax import parallel
from dreamer4_jax.configs import DEFAULT_SHARDING_RULES
from dreamer4_jax.nn import Transformer, TransformerConfig, dynamics_layout, init_cache

# depth 5 = two scanned groups of 2 (space, time) + one unrolled space layer.
CFG = TransformerConfig(width=32, depth=5, num_heads=4, num_kv_heads=2, time_every=2,
                        time_window=3, softcap=20.0)  # fmt: skip
SCAN = dataclasses.replace(CFG, scan_layers=True)
LAYOUT = dynamics_layout(num_latents=3, num_registers=1, num_agents=1)
X = jax.random.normal(jax.random.key(0), (2, 4, LAYOUT.num_tokens, 32))
INDEP = jnp.array([False, True])


def _restack(params):
    """Unrolled params {'block_i': ...} -> scanned {'groups': {'block_j': stacked}, ...}."""
    p = dict(params['params'])
    groups = {f'block_{j}': jax.tree.map(lambda *a: jnp.stack(a), p.pop(f'block_{j}'),
                                         p.pop(f'block_{j + 2}')) for j in range(2)}  # fmt: skip
    return {'params': {**p, 'groups': groups}}


@pytest.fixture(scope='module')
def params():
    unrolled = nn.unbox(random_params(Transformer(CFG, LAYOUT), X))
    scanned = _restack(unrolled)
    shapes = jax.eval_shape(Transformer(SCAN, LAYOUT).init, jax.random.key(0), X)
    shapes = nn.unbox(shapes)
    assert jax.tree.map(lambda a: a.shape, scanned) == jax.tree.map(lambda a: a.shape, shapes)
    return unrolled, scanned


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_scanned_forward_and_gradients_equal_unrolled(params, remat):
    unrolled, scanned = params

    def value_and_grad(cfg):
        model = Transformer(dataclasses.replace(cfg, remat=remat), LAYOUT)
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(model.apply(p, X, INDEP)))))

    loss_u, grad_u = value_and_grad(CFG)(unrolled)
    loss_s, grad_s = value_and_grad(SCAN)(scanned)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(_restack(grad_u)), jax.tree.leaves(grad_s), strict=True):
        # float32 summation order differs: tolerance relative to the largest entry
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_scanned_step_with_cache_equals_unrolled(params):
    unrolled, scanned = params
    outs = []
    for cfg, p in ((CFG, unrolled), (SCAN, scanned)):
        model = Transformer(cfg, LAYOUT)
        cache = init_cache(cfg, LAYOUT.num_tokens, 2)
        ys = []
        for t in range(X.shape[1]):
            y, cache = model.apply(p, X[:, t : t + 1], cache, True, INDEP, method='step')
            ys.append(y)
        outs.append(np.concatenate(ys, axis=1))
    np.testing.assert_allclose(outs[1], outs[0], rtol=2e-5, atol=2e-5)


def test_stacked_layers_axis_is_replicated_and_the_rest_sharded():
    mesh = parallel.make_mesh((2, 2, 2), jax.devices()[:8])
    with nn.logical_axis_rules(DEFAULT_SHARDING_RULES):
        boxed = jax.eval_shape(Transformer(SCAN, LAYOUT).init, jax.random.key(0), X)
    specs = parallel.logical_shardings(boxed, mesh, DEFAULT_SHARDING_RULES)
    wi = specs['params']['groups']['block_0']['mlp']['wi'].spec
    assert wi[0] is None and 'fsdp' in wi  # [layers, D, 2, F]: layers replicated, D over fsdp
    with pytest.raises(ValueError, match='scan_layers'):
        TransformerConfig(pattern='st', depth=2, scan_layers=True)
