"""Agent tokens in the dynamics model and imagination rollouts (PAPER 9.1, 10.1)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import dynamics as dyn
from dreamer4_jax import shortcut
from dreamer4_jax.agent import AgentConfig, AgentHeads, init_agent_params
from dreamer4_jax.generation import SamplingConfig, new_cache
from dreamer4_jax.imagination import WorldModel, dream, imagine, observe
from dreamer4_jax.nn import TransformerConfig

ACTIONS = (('action', 'categorical', 5),)


def tiny_world_model(num_agents=1, window=8):
    tcfg = TransformerConfig(width=16, depth=2, num_heads=2, time_every=2, time_window=window)
    dcfg = dyn.DynamicsConfig(
        num_latents=4,
        latent_dim=3,
        actions=ACTIONS,
        num_registers=1,
        num_agent_tokens=num_agents,
        k_max=8,
        transformer=tcfg,
    )
    acfg = AgentConfig(
        num_tasks=3,
        num_agent_tokens=num_agents,
        width=16,
        mtp_length=2,
        hidden=8,
        reward_bins=9,
        value_bins=9,
    )
    wm = WorldModel(dyn.Dynamics(dcfg), AgentHeads(acfg, ACTIONS), SamplingConfig(num_steps=2))
    k1, k2 = jax.random.split(jax.random.key(0))
    params = jax.jit(
        lambda a, b: {
            'dynamics': nn.unbox(dyn.init_params(wm.dynamics, a)),
            'agent': nn.unbox(init_agent_params(wm.heads, b)),
        }
    )(k1, k2)
    # Non-zero reward/value outputs so the task actually reaches the heads' predictions.
    params['agent']['reward']['out'] = 0.1 * jax.random.normal(
        jax.random.key(3), params['agent']['reward']['out'].shape
    )
    return wm, params


@pytest.fixture(scope='module')
def world():
    return tiny_world_model()


def _context(b=2, t=3):
    z = jax.random.normal(jax.random.key(1), (b, t, 4, 3))
    actions = {'action': jnp.arange(b * t, dtype=jnp.int32).reshape(b, t) % 5}
    return z, actions, jnp.ones((b, t), bool)


def test_task_input_changes_no_latent_prediction(world):
    """PAPER 9.1 at the model level: the task (agent input) reaches h_t but no latent."""
    wm, params = world
    z, actions, has = _context()
    tau = jnp.full((2, 3), 0.5)
    d = jnp.full((2, 3), 0.25)

    @jax.jit
    def run(agent_in):
        return wm.dynamics.apply(
            {'params': params['dynamics']}, z, tau, d, actions, has, agent_in_BTAD=agent_in
        )

    def embed(task):
        return wm.agent_inputs(params, jnp.full((2, 3), task, jnp.int32))

    out0, h0 = run(embed(0))
    out2, h2 = run(embed(2))
    np.testing.assert_array_equal(out2, out0)
    assert float(jnp.max(jnp.abs(h2 - h0))) > 1e-3
    # Perturbing the agent input arbitrarily (not only through the task table) changes nothing.
    out_n, _ = run(10.0 * jax.random.normal(jax.random.key(5), h0.shape))
    np.testing.assert_array_equal(out_n, out0)


def test_task_in_the_cache_changes_no_generated_frame(world):
    """Committed agent tokens (in the KV cache) must not steer generation either."""
    wm, params = world
    z, actions, has = _context()

    @jax.jit
    def next_frame(task_BT):
        _, cache = observe(
            wm, params, z, actions, has, task_BT, new_cache(wm.dynamics, 2), jax.random.key(7)
        )
        nxt = {'action': jnp.ones((2, 1), jnp.int32)}
        return dream(wm, params, cache, nxt, jnp.ones((2, 1), bool), jax.random.key(8))

    frames = [next_frame(jnp.full((2, 3), task, jnp.int32)) for task in (0, 2)]
    np.testing.assert_array_equal(frames[0], frames[1])


def test_observe_with_cache_equals_full_sequence(world):
    """Frame-by-frame commits give the agent outputs of one full pass at the same noise."""
    wm, params = world
    z, actions, has = _context(t=4)
    task = jnp.asarray([[1] * 4, [2] * 4], jnp.int32)
    full, _ = jax.jit(
        lambda: observe(
            wm, params, z, actions, has, task, new_cache(wm.dynamics, 2), jax.random.key(3)
        )
    )()
    z_noisy, _ = shortcut.corrupt_context(jax.random.key(3), z, 0.9, k_max=8)

    @jax.jit
    def commit(cache, z_B1, act_B1, task_B1):
        # observe re-noises its input, so the already-noised frame goes in directly here.
        tau = jnp.full((2, 1), round(0.9 * 8) / 8)
        agent_in = wm.agent_inputs(params, task_B1)
        (_, h), cache = wm.dynamics.apply(
            {'params': params['dynamics']},
            z_B1,
            tau,
            jnp.full((2, 1), 1 / 8),
            {'action': act_B1},
            jnp.ones((2, 1), bool),
            cache,
            True,
            agent_in,
            method=dyn.Dynamics.step,
        )
        return h, cache

    cache = new_cache(wm.dynamics, 2)
    outs = []
    for i in range(4):
        h, cache = commit(
            cache, z_noisy[:, i : i + 1], actions['action'][:, i : i + 1], task[:, i : i + 1]
        )
        outs.append(h)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5)


def test_imagine_shapes_determinism_and_action_effect(world):
    wm, params = world
    z, actions, has = _context()
    run = jax.jit(imagine, static_argnums=(0, 7))
    task = jnp.asarray([0, 1])
    traj = run(wm, params, z, actions, has, task, jax.random.key(4), 5)
    assert traj.h.shape == (2, 6, 1, 16)
    assert traj.action['action'].shape == (2, 6) and traj.reward.shape == (2, 6)
    assert traj.z.shape == (2, 5, 4, 3)
    assert bool(jnp.all((traj.action['action'] >= 0) & (traj.action['action'] < 5)))
    again = run(wm, params, z, actions, has, task, jax.random.key(4), 5)
    np.testing.assert_array_equal(again.z, traj.z)
    # Another key samples other actions, and other actions give other frames.
    other = run(wm, params, z, actions, has, task, jax.random.key(9), 5)
    assert not np.array_equal(other.action['action'][:, :5], traj.action['action'][:, :5])
    assert float(jnp.max(jnp.abs(other.z - traj.z))) > 1e-3
    # The rollout's first state is the last context frame; the task reaches the reward head.
    other_task = run(wm, params, z, actions, has, jnp.asarray([2, 2]), jax.random.key(4), 5)
    assert float(jnp.max(jnp.abs(other_task.reward - traj.reward))) > 1e-4
