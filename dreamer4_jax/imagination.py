"""Imagination rollouts: the policy acts inside the world model (PAPER 10.1).

From a dataset context, every step: the policy head samples a_t from h_t (the agent token's
output at frame t); the dynamics model generates frame t + 1 with K shortcut steps that read the
KV cache (PAPER 7); a commit pass feeds the new frame (at the context signal level, block action
a_t, agent tokens carrying the task) through the transformer, appends it to the cache and gives
h_{t+1}; the heads annotate reward and value. One rollout per context (PAPER 10.1).

`observe` is also the closed-loop agent's step on REAL frames (eval/closed_loop.py): the same
commit pass, so the policy sees its inputs the same way in imagination and in the environment.

Which pass gives h_t (PAPER 10.1 [U]): the commit pass, where the frame sits at the context
signal level like every past frame. Its tau is on the k_max grid (0.9 -> 58/64 for k_max = 64),
a level phase-2 training covers, since its frames have tau uniform on the grid.

Dimension keys: B batch, T context frames, H horizon, N latents, C channels, A agent tokens,
D model width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dreamer4_jax import generation
from dreamer4_jax.generation import new_cache
from dreamer4_jax.nn import KVCache
from dreamer4_jax.world_model import WorldModel

__all__ = ['Trajectory', 'WorldModel', 'dream', 'imagine', 'observe']

Array = jax.Array


def observe(
    wm: WorldModel,
    params: Any,
    z_BTNC: Array,
    actions: Mapping[str, Array],
    has_BT: Array,
    task_BT: Array,
    cache: KVCache,
    rng: Array,
) -> tuple[Array, KVCache]:
    """Commit frames (real or generated) to the cache; returns (h_BTAD, cache).

    The frames are re-noised to the context signal level (PAPER 2, 7) exactly as generation
    commits them; `actions` are block-aligned (entry t led to frame t).
    """
    agent_in = wm.agent_inputs(params, task_BT)
    (_, h_BTAD), cache = generation.commit(
        wm.dynamics, params['dynamics'], z_BTNC, actions, has_BT, cache, rng, wm.sampling, agent_in
    )
    return h_BTAD, cache


def dream(
    wm: WorldModel,
    params: Any,
    cache: KVCache,
    actions: Mapping[str, Array],
    has_B1: Array,
    rng: Array,
) -> Array:
    """Next frame's latents [B, 1, N, C] with K shortcut steps reading (never writing) the cache.

    Agent tokens are left at their learned embedding here: nothing reads them (PAPER 9.1), so the
    task cannot change a generated frame.
    """
    c = wm.dynamics.config
    b = has_B1.shape[0]
    agent_in = jnp.zeros((b, 1, c.num_agent_tokens, c.transformer.width), jnp.float32)
    return generation.denoise_next(
        wm.dynamics, params['dynamics'], cache, actions, has_B1, rng, wm.sampling, agent_in
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Trajectory:
    """One imagined rollout per context; index 0 is the last context frame.

    h: [B, H+1, A, D] agent-token outputs; action: {name: [B, H+1, ...]} sampled at every state
    (action[:, t] leads to state t + 1; the last one is unused by returns); reward: [B, H+1]
    reward head at each state (reward[:, t] arrived with state t); z: [B, H, N, C] generated
    latents (states 1..H); task: [B].
    """

    h: Array
    action: dict
    reward: Array
    z: Array
    task: Array


def imagine(
    wm: WorldModel,
    params: Any,
    z_ctx_BTNC: Array,
    actions_ctx: Mapping[str, Array],
    has_ctx_BT: Array,
    task_B: Array,
    rng: Array,
    horizon: int,
    max_frames: int | None = None,
) -> Trajectory:
    """Roll the policy out for `horizon` steps inside the world model (no gradients needed).

    actions_ctx / has_ctx_BT: block-aligned actions of the context frames. Jit with wm, horizon
    and max_frames static.
    """
    c = wm.dynamics.config
    b, t = z_ctx_BTNC.shape[:2]
    if horizon < 1:
        raise ValueError(f'imagination horizon must be >= 1, got {horizon}')
    if c.transformer.time_window is None and max_frames is None:
        max_frames = t + horizon
    rng_ctx, rng_loop = jax.random.split(rng)
    task_BT = jnp.broadcast_to(task_B[:, None], (b, t)).astype(jnp.int32)
    cache = new_cache(wm.dynamics, b, max_frames)
    h_ctx, cache = observe(wm, params, z_ctx_BTNC, actions_ctx, has_ctx_BT, task_BT, cache, rng_ctx)
    task_B1 = task_B[:, None].astype(jnp.int32)
    has_B1 = jnp.ones((b, 1), bool)
    dist = wm.heads.dist

    def body(carry, i):
        cache, h_B1AD = carry
        k_act, k_dream, k_obs = jax.random.split(jax.random.fold_in(rng_loop, i), 3)
        act_B1 = dist.sample(k_act, wm.policy(params, h_B1AD))
        z_B1NC = dream(wm, params, cache, act_B1, has_B1, k_dream)
        # Block t + 1 carries a_t, the action that led to it (DESIGN 3).
        h_next, cache = observe(wm, params, z_B1NC, act_B1, has_B1, task_B1, cache, k_obs)
        return (cache, h_next), (
            h_next[:, 0],
            jax.tree.map(lambda a: a[:, 0], act_B1),
            z_B1NC[:, 0],
        )

    h0 = h_ctx[:, -1:]
    _, (h_HB, act_HB, z_HB) = jax.lax.scan(body, (cache, h0), jnp.arange(horizon))
    h_BH = jnp.concatenate([h0, jnp.swapaxes(h_HB, 0, 1)], axis=1)
    last = dist.sample(jax.random.fold_in(rng_loop, horizon), wm.policy(params, h_BH[:, -1:]))
    action = {
        k: jnp.concatenate([jnp.swapaxes(v, 0, 1), last[k]], axis=1) for k, v in act_HB.items()
    }
    return Trajectory(
        h=h_BH,
        action=action,
        reward=wm.reward(params, h_BH),
        z=jnp.swapaxes(z_HB, 0, 1),
        task=task_B.astype(jnp.int32),
    )
