"""Sharded forward/backward on a (data, fsdp, model) = (2, 2, 2) mesh of the 8 fake CPU devices
equals the single-device result (DESIGN 5, 7). KV heads (1) do not divide the 'model' axis (2):
such axes are dropped (replicated) for parameters and activations instead of failing."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from dreamer4_jax.configs import DEFAULT_SHARDING_RULES
from dreamer4_jax.nn import Transformer, TransformerConfig, constrain, encoder_layout, fitted_spec

RULES = DEFAULT_SHARDING_RULES  # the rules every experiment uses
CFG = TransformerConfig(
    width=32,
    depth=2,
    num_heads=4,
    num_kv_heads=1,
    pattern='st',
    time_window=2,
    softcap=20.0,
    remat='none',
)
LAYOUT = encoder_layout(4, 2)


def _mesh():
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    return Mesh(devices, ('data', 'fsdp', 'model'), axis_types=(AxisType.Auto,) * 3)


def _loss_and_grad(model, x, indep):
    def loss(p):
        return jnp.sum(jnp.sin(model.apply(p, x, indep)))

    return jax.value_and_grad(loss)


def test_sharded_forward_and_grad_equal_unsharded():
    model = Transformer(CFG, LAYOUT)
    x = jax.random.normal(jax.random.key(0), (4, 3, LAYOUT.num_tokens, CFG.width))
    indep = jnp.array([True, False, False, True])
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3, s.dtype), boxed)
    y_ref = model.apply(params, x, indep)
    l_ref, g_ref = jax.jit(lambda p: _loss_and_grad(model, x, indep)(p))(params)

    plain = nn.unbox(params)  # outside the mesh context: unboxing there adds constraints
    mesh = _mesh()
    logical = nn.get_partition_spec(boxed)
    specs = jax.tree.map(
        lambda spec, s: fitted_spec(s.shape, tuple(spec), RULES, dict(mesh.shape)),
        logical,
        nn.unbox(boxed),
        is_leaf=lambda v: isinstance(v, PartitionSpec),
    )
    # The qkv kernel's KV-head axis (size 1) cannot split over 'model' and is dropped.
    qkv_spec = specs['params']['block_0']['attn']['qkv']
    assert qkv_spec == PartitionSpec('fsdp', None, None, None)
    assert specs['params']['block_0']['mlp']['wi'] == PartitionSpec('fsdp', None, 'model')
    # The sharded run also rematerializes (custom VJP under a mesh); results must not change.
    model = Transformer(dataclasses.replace(CFG, remat='full'), LAYOUT)
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        shardings = jax.tree.map(
            lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda v: isinstance(v, PartitionSpec)
        )
        p_sh = jax.device_put(plain, shardings)
        x_sh = jax.device_put(x, NamedSharding(mesh, PartitionSpec(('data', 'fsdp'))))
        y = jax.jit(lambda p, x: model.apply(p, x, indep))(p_sh, x_sh)
        loss, grads = jax.jit(lambda p, x: _loss_and_grad(model, x, indep)(p))(p_sh, x_sh)
        assert y.sharding.spec[0] == ('data', 'fsdp')
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss), float(l_ref), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_constrain_is_a_noop_without_mesh_and_drops_indivisible_axes():
    x = jnp.ones((3, 5))
    assert constrain(x, ('batch', 'act_mlp')) is x
    with jax.set_mesh(_mesh()), nn.logical_axis_rules(RULES):
        # 3 rows on 4 (data x fsdp) devices and 5 columns on 2 'model' devices: both dropped.
        y = jax.jit(lambda x: constrain(x, ('batch', 'act_mlp')))(x)
        z = jax.jit(lambda x: constrain(x, ('batch', 'act_mlp')))(jnp.ones((2, 4)))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    # 2 rows keep the 'data' axis (the longest dividing prefix of ('data', 'fsdp')).
    assert z.sharding.spec == PartitionSpec('data', 'model')
