"""benchmarks/action_lookup.py: the dynamics transformer reads its own frame's action."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from benchmarks import action_lookup
from dreamer4_jax.dynamics import Dynamics, DynamicsConfig, dummy_actions, init_params
from dreamer4_jax.nn import TransformerConfig


def small_config(**kw) -> DynamicsConfig:
    block = TransformerConfig(
        width=32, depth=2, num_heads=2, num_kv_heads=1, time_every=2, remat='none'
    )
    return DynamicsConfig(
        num_latents=8, latent_dim=4, actions=(('key', 'categorical', 5),), num_registers=1,
        transformer=block, **kw,
    )  # fmt: skip


def test_windows_put_the_looked_up_latent_after_each_action():
    table = np.arange(3 * 2 * 1, dtype=np.float32).reshape(3, 2, 1)
    z, a = action_lookup.lookup_windows(np.random.default_rng(0), table, batch=4, frames=5)
    assert z.shape == (4, 5, 2, 1) and a.shape == (4, 5)
    np.testing.assert_array_equal(z[:, 1:], table[a[:, :-1]])
    assert np.all(np.abs(z[:, 0]) <= 1)


def test_the_transformer_learns_the_lookup_from_its_action_token():
    """Frame t + 1 is decided by the action alone: the trained model's error with the real actions
    falls far below both the targets' mean (what an action-blind model reaches) and its own error
    when the actions are shuffled."""
    result = action_lookup.fit(
        small_config(input_scale='signal'), frames=3, steps=250, batch=16,
        learning_rate=3e-3, log_every=250, log=lambda _: None,
    )  # fmt: skip
    assert result['error'] < 0.3 * result['error_of_mean'], result
    assert result['error'] < 0.3 * result['error_shuffled'], result
    first = result['history'][0]
    assert first['error'] > 0.5 * first['error_shuffled']  # untrained: the actions barely matter


def test_input_scale_signal_zeroes_what_the_model_reads_of_pure_noise():
    """With input_scale='signal' a frame at tau = 0 reads nothing of its latents; with 'none' it
    does (the paper's input)."""
    outs = {}
    for scale in ('none', 'signal'):
        model = Dynamics(small_config(input_scale=scale))
        params = meta.unbox(init_params(model, jax.random.PRNGKey(0)))
        tau = jnp.array([[1.0, 0.0]])
        d = jnp.full((1, 2), 1 / 64)
        acts, has = dummy_actions(model.config.actions, 1, 2), jnp.ones((1, 2), bool)

        def run(z, model=model, params=params, tau=tau, d=d, acts=acts, has=has):
            return model.apply({'params': params}, z, tau, d, acts, has)[0][:, -1]

        z = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 8, 4))
        outs[scale] = float(jnp.max(jnp.abs(run(z) - run(z.at[:, 1].multiply(-3.0)))))
    assert outs['signal'] == 0.0
    assert outs['none'] > 1e-3


def test_the_default_model_is_the_demo_dynamics_stage():
    c = action_lookup.experiment_shape()
    assert (c.num_latents, c.latent_dim, c.pack, c.num_registers) == (96, 16, 6, 4)
    assert c.transformer.width == 96 and c.transformer.layer_kinds.count('time') == 1
    assert c.actions == (('discrete', 'categorical', 17),)


def test_bad_input_scale_and_lookups_are_refused():
    with pytest.raises(ValueError, match='input_scale'):
        small_config(input_scale='tau')
    with pytest.raises(ValueError, match='frames'):
        action_lookup.fit(small_config(), frames=1, steps=1)
    two = dataclasses.replace(small_config(), actions=(('a', 'categorical', 2), ('b', 'binary', 1)))
    with pytest.raises(ValueError, match='one categorical'):
        action_lookup.fit(two, steps=1)
