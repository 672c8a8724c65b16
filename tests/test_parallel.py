"""Mesh, logical sharding rules, and 1-device vs (2 data, 2 fsdp, 2 model) equivalence."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dreamer4_jax import parallel
from dreamer4_jax.configs import DEFAULT_SHARDING_RULES
from dreamer4_jax.nn import partitioning
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train import toy
from experiments.toy import get_config


def test_logical_to_spec_maps_and_drops_non_dividing_axes():
    mesh = parallel.make_mesh((2, 2, 2))
    rules = DEFAULT_SHARDING_RULES
    assert parallel.logical_to_spec(('embed', 'mlp'), (64, 128), mesh, rules) == P('fsdp', 'model')
    assert parallel.logical_to_spec(('batch', None), (8, 3), mesh, rules) == P(
        ('data', 'fsdp'), None
    )
    # One KV head cannot be split over model=2: replicated instead of crashing.
    assert parallel.logical_to_spec(('kv_heads',), (1,), mesh, rules) == P(None)
    # Batch 2 splits over data only (data x fsdp = 4 does not divide 2).
    assert parallel.logical_to_spec(('batch',), (2,), mesh, rules) == P('data')
    # A mesh axis is never used twice in one array.
    assert parallel.logical_to_spec(('mlp', 'heads'), (4, 4), mesh, rules) == P('model', None)
    assert parallel.logical_to_spec(('unknown',), (4,), mesh, rules) == P(None)


def _train(mesh, config, steps):
    phase = toy.make_phase(config)
    rules = tuple(config.sharding_rules)
    state, shardings = parallel.create_sharded(phase.init, mesh, rules, jax.random.key(0))
    data = phase.make_data(0, 1)

    def step(state, batch, rng):
        with nn.logical_axis_rules(rules):
            return phase.train_step(state, batch, rng)

    step_fn = jax.jit(
        step,
        in_shardings=(shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
    )
    losses = []
    with jax.set_mesh(mesh):
        for i in range(steps):
            batch = parallel.host_to_global(next(data), mesh)
            state, metrics = step_fn(state, batch, jax.random.key(i))
            losses.append(float(metrics['loss']))
    return state, losses


def test_sharded_training_matches_single_device():
    config = get_config()
    one = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    eight = parallel.make_mesh((2, 2, 2))
    state1, losses1 = _train(one, config, steps=6)
    state8, losses8 = _train(eight, config, steps=6)
    # The parameters really are split over fsdp and model on the 8-device mesh.
    w2 = state8.params['w2']
    assert w2.sharding.spec == P('fsdp', 'model')
    assert len(w2.addressable_shards) == 8 and w2.addressable_shards[0].data.shape == (32, 64)
    np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert losses1[-1] < losses1[0]


def test_host_to_global_splits_batch_over_data_axes():
    mesh = parallel.make_mesh((2, 2, 2))
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    g = parallel.host_to_global({'x': x}, mesh)['x']
    assert g.shape == (8, 2) and g.sharding.spec == P(('data', 'fsdp'))
    np.testing.assert_array_equal(np.asarray(g), x)


def test_optimizer_mask_freezes_leaves():
    config = get_config()
    params = {'a': jnp.ones(3), 'b': jnp.ones(3)}
    tx = state_lib.make_optimizer(config.train, trainable_mask={'a': True, 'b': False})
    st = state_lib.create_train_state(params, tx)
    grads = {'a': jnp.ones(3), 'b': jnp.ones(3)}
    for _ in range(12):  # past warm-up so the learning rate is non-zero
        st = state_lib.apply_gradients(st, grads, tx)
    np.testing.assert_array_equal(np.asarray(st.params['b']), np.ones(3))
    assert np.all(np.asarray(st.params['a']) < 1.0)


def test_make_mesh_rejects_wrong_device_count():
    with pytest.raises(ValueError, match='does not match'):
        parallel.make_mesh((2, 2, 1), jax.devices())


def test_one_rules_interpreter_for_parameters_and_activations():
    """A mesh axis that does not divide is skipped, later ones still apply, for both users."""
    rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'))
    mesh_shape = {'data': 4, 'fsdp': 2, 'model': 1}
    # 2 rows: 'data' (4) does not divide, 'fsdp' (2) does; 'embed' then finds fsdp used.
    spec = partitioning.logical_spec(('batch', 'embed'), (2, 8), mesh_shape, rules)
    assert spec == P('fsdp', None)
    assert partitioning.fitted_spec((2, 8), ('batch', 'embed'), rules, mesh_shape) == spec
    devices = jax.devices()[:8]
    mesh = parallel.make_mesh((4, 2, 1), devices)
    assert parallel.logical_to_spec(('batch', 'embed'), (2, 8), mesh, rules) == spec

    def f(x):
        return partitioning.constrain(x * 2.0, ('batch', 'embed'))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(f)(jnp.ones((2, 8)))
    assert out.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), 2)
