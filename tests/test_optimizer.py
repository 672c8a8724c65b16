"""`train.optimizer`: AdamW and Muon (matrices orthogonalized, Adam for the rest)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from optax.contrib import MuonDimensionNumbers

from dreamer4_jax import parallel
from dreamer4_jax.config_checks import ConfigError, check_train
from dreamer4_jax.configs import DEFAULT_SHARDING_RULES, base_config
from dreamer4_jax.dynamics import Dynamics, DynamicsConfig, init_params
from dreamer4_jax.nn import TransformerConfig
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_jax.train import state as state_lib


def train_config(optimizer='muon', **kw):
    return ml_collections.ConfigDict(
        dict(
            steps=100,
            warmup_steps=1,
            learning_rate=1e-3,
            muon_learning_rate=0.02,
            weight_decay=0.0,
            grad_clip=1e6,
            optimizer=optimizer,
            **kw,
        )
    )


def tokenizer_params(boxed: bool):
    tc = TransformerConfig(width=32, depth=2, num_heads=2, time_every=2)
    cfg = TokenizerConfig(height=16, width=16, patch=8, num_latents=4, latent_dim=4, encoder=tc)
    cfg = TokenizerConfig(**{**cfg.__dict__, 'decoder': tc})
    params = Tokenizer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 16, 16, 3)))['params']
    return params if boxed else parallel.unboxed(params)


@pytest.mark.parametrize('boxed', [False, True])
def test_muon_takes_the_weight_matrices_and_leaves_tables_and_vectors_to_adam(boxed):
    dims = state_lib.muon_dimension_numbers(tokenizer_params(boxed))
    if boxed:  # the rule sees through logical-partitioning boxes
        dims = parallel.unboxed(dims)
    enc = dims['encoder']['block_0']
    assert enc['attn']['qkv'] == MuonDimensionNumbers((0,), (3,))
    assert enc['attn']['out'] == MuonDimensionNumbers((0, 1), (2,))
    assert enc['mlp']['wi'] == MuonDimensionNumbers((0,), (2,))
    assert enc['mlp']['wo'] == MuonDimensionNumbers((0,), (1,))
    assert dims['patch_in']['kernel'] == MuonDimensionNumbers((0,), (1,))
    for adam in (
        dims['patch_in']['bias'],
        dims['latent_tokens'],
        dims['readout_tokens'],
        dims['mask_embed'],
        enc['attn']['q_norm'],
        enc['attn_norm']['scale'],
    ):
        assert adam is None


def test_muon_takes_the_dynamics_projections_and_leaves_its_embedding_tables_to_adam():
    """craftax_tiny trains its dynamics stage with Muon: the transformer, the latent input
    projection and the x-prediction head are matrices; the action, shortcut (tau, d), register
    and agent-token tables are looked up and stay with Adam."""
    tc = TransformerConfig(width=32, depth=2, num_heads=2, num_kv_heads=1, time_every=2)
    cfg = DynamicsConfig(
        num_latents=4,
        latent_dim=4,
        pack=2,
        actions=(('discrete', 'categorical', 5), ('keys', 'binary', 3)),
        num_registers=2,
        num_agent_tokens=1,
        k_max=8,
        transformer=tc,
    )
    params = parallel.unboxed(init_params(Dynamics(cfg), jax.random.key(0)))
    dims = state_lib.muon_dimension_numbers(params)
    block = dims['transformer']['block_1']
    assert block['attn']['qkv'] == MuonDimensionNumbers((0,), (3,))
    assert block['mlp']['wo'] == MuonDimensionNumbers((0,), (1,))
    assert dims['latent_in']['kernel'] == MuonDimensionNumbers((0,), (1,))
    assert dims['head']['kernel'] == MuonDimensionNumbers((0,), (1,))
    tables = [dims['tau_table'], dims['d_table'], dims['registers'], dims['agent_tokens']]
    tables += jax.tree.leaves(dims['action_embed'], is_leaf=lambda x: x is None)
    assert len(tables) == 7 and all(t is None for t in tables)
    assert dims['latent_in']['bias'] is None and block['attn']['q_norm'] is None


def test_muon_dimension_numbers_of_stacked_layers_skip_the_layer_axis():
    params = {'groups': {'block_0': {'attn': {'qkv': jnp.ones((3, 8, 1, 3, 4))}}}}
    dims = state_lib.muon_dimension_numbers(params)
    assert dims['groups']['block_0']['attn']['qkv'] == MuonDimensionNumbers((1,), (4,))


def test_muon_update_of_a_matrix_is_orthogonalized_and_adam_updates_the_rest():
    """Same gradient twice: the momentum points along it, and the update of the matrix has
    (nearly) equal singular values although the gradient's span a factor of 100."""
    rs = np.random.default_rng(0)
    u, _ = np.linalg.qr(rs.normal(size=(32, 16)))
    v, _ = np.linalg.qr(rs.normal(size=(16, 16)))
    sv = np.geomspace(1.0, 0.01, 16)
    grad_w = (u * sv) @ v.T
    params = {'proj': {'kernel': jnp.zeros((32, 16)), 'bias': jnp.zeros(16)}}
    grads = {'proj': {'kernel': jnp.asarray(grad_w, jnp.float32), 'bias': jnp.ones(16)}}
    tx = state_lib.make_optimizer(train_config())
    st = state_lib.create_train_state(params, tx)
    for _ in range(2):
        before = st.params
        st = state_lib.apply_gradients(st, grads, tx)
    step_w = np.asarray(st.params['proj']['kernel'] - before['proj']['kernel'])
    s = np.linalg.svd(step_w, compute_uv=False)
    assert s.max() / s.min() < 2.0, s  # the gradient's ratio is 100
    # Descent direction: the step is anti-aligned with the gradient.
    assert np.sum(step_w * grad_w) < 0
    # The bias: Adam's sign-like step of about the learning rate (1.16x: optax's Muon runs its
    # Adam half with Nesterov momentum), not a step scaled by the gradient's size.
    step_b = np.asarray(st.params['proj']['bias'] - before['proj']['bias'])
    np.testing.assert_allclose(step_b, -1e-3, rtol=0.25)


def test_adamw_stays_the_default_and_steps_every_leaf_by_about_the_learning_rate():
    assert base_config().train.optimizer == 'adamw'
    params = {'w': jnp.zeros((4, 4))}
    tx = state_lib.make_optimizer(train_config('adamw'))
    st = state_lib.create_train_state(params, tx)
    for _ in range(2):
        st = state_lib.apply_gradients(st, {'w': jnp.ones((4, 4))}, tx)
    # Warm-up step 0 has lr 0; step 1 moves every entry by -lr (Adam on a constant gradient).
    np.testing.assert_allclose(np.asarray(st.params['w']), -1e-3, rtol=0.05)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        state_lib.make_optimizer(train_config('sgd'))
    config = base_config()
    config.train.optimizer = 'sgd'
    with pytest.raises(ConfigError, match='adamw'):
        check_train(config)


def test_muon_train_state_is_created_sharded():
    """Muon's state holds empty placeholders for the Adam leaves; sharding skips them."""
    mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    tx = state_lib.make_optimizer(train_config())

    def init(rng):
        del rng
        return state_lib.create_train_state(tokenizer_params(boxed=True), tx)

    st, shardings = parallel.create_sharded(init, mesh, DEFAULT_SHARDING_RULES, None)
    grads = jax.tree.map(jnp.ones_like, st.params)
    st2 = state_lib.apply_gradients(st, grads, tx)
    assert int(st2.step) == 1
    assert jax.tree.structure(shardings) == jax.tree.structure(st)
