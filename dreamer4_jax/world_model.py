"""Assembling the world model from configs: tokenizer + dynamics + agent heads (PAPER 4, 5, 9).

Every user of a trained model (the phases, closed-loop evaluation, the play server, the
ahead-of-time compiler) builds it here from the ml-collections sub-configs that the runs save
with their checkpoints, so one architecture is always rebuilt the same way. Nothing here reads
a file: loading runs is `dreamer4_jax.pretrained`; the config <-> dataclass converters are
`dreamer4_jax.model_configs`.

Dimension keys: B batch, T time, A agent tokens, D model width, K tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from dreamer4_jax.agent import AgentHeads, init_agent_params
from dreamer4_jax.dynamics import Dynamics, init_params
from dreamer4_jax.generation import SamplingConfig
from dreamer4_jax.model_configs import (
    agent_config_from,
    dynamics_config_from,
    tokenizer_config_from,
)
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class WorldModel:
    """The static pieces an agent step needs (hashable: usable as a jit static argument).

    Parameters are always passed separately as {'dynamics': ..., 'agent': ...}.
    """

    dynamics: Dynamics
    heads: AgentHeads
    sampling: SamplingConfig = SamplingConfig()

    def __post_init__(self):
        dc, ac = self.dynamics.config, self.heads.config
        if dc.num_agent_tokens != ac.num_agent_tokens or dc.transformer.width != ac.width:
            raise ValueError(
                f'dynamics has {dc.num_agent_tokens} agent tokens of width '
                f'{dc.transformer.width}, the heads expect {ac.num_agent_tokens} of width '
                f'{ac.width}; build both from the same agent config.'
            )

    def agent_inputs(self, params: Any, task_BT: Array) -> Array:
        return self.heads.apply(
            {'params': params['agent']}, task_BT, method=AgentHeads.agent_inputs
        )

    def policy(self, params: Any, h_BTAD: Array) -> dict[str, Array]:
        """Offset-0 policy parameters at h_t (the action to take now), [B, T, ...]."""
        out = self.heads.apply(
            {'params': params['agent']}, h_BTAD, 1, method=AgentHeads.policy_params
        )
        return {k: v[:, :, 0] for k, v in out.items()}

    def reward(self, params: Any, h_BTAD: Array) -> Array:
        """Offset-0 reward (the reward that arrived with frame t), [B, T]."""
        logits = self.heads.apply(
            {'params': params['agent']}, h_BTAD, 1, method=AgentHeads.reward_logits
        )
        return self.heads.config.reward_dist.mean(logits[:, :, 0])

    def value(self, params: Any, h_BTAD: Array) -> Array:
        logits = self.heads.apply(
            {'params': params['agent']}, h_BTAD, 1, method=AgentHeads.value_logits
        )
        return self.heads.config.value_dist.mean(logits[:, :, 0])


def sampling_config(dyn_cd: ml_collections.ConfigDict) -> SamplingConfig:
    """How a dynamics run samples frames (PAPER 7), from its `config.dynamics`."""
    return SamplingConfig(
        num_steps=int(dyn_cd.sampling_steps),
        context_signal=float(dyn_cd.context_signal),
        prediction=str(dyn_cd.prediction),
        # Plain diffusion forcing never trained the d embedding beyond d_min.
        network_d=None if bool(dyn_cd.shortcut) else 1.0 / int(dyn_cd.k_max),
    )


def tokenizer_of(tok_cd: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer module of a tokenizer run's `config.tokenizer`."""
    return Tokenizer(tokenizer_config_from(tok_cd))


def dynamics_of(dyn_cd: ml_collections.ConfigDict, tok_cfg: TokenizerConfig) -> Dynamics:
    """The dynamics model (no agent tokens) of a dynamics run's `config.dynamics`."""
    return Dynamics(dynamics_config_from(dyn_cd, tok_cfg))


def build_world_model(
    dyn_cd: ml_collections.ConfigDict, tok_cfg: TokenizerConfig, agent_cd: ml_collections.ConfigDict
) -> WorldModel:
    """Dynamics model with agent tokens + heads (PAPER 9.1), from the dynamics run's sub-config."""
    dcfg = dynamics_config_from(dyn_cd, tok_cfg)
    acfg = agent_config_from(agent_cd, dcfg.transformer.width)
    dcfg = dataclasses.replace(dcfg, num_agent_tokens=acfg.num_agent_tokens)
    return WorldModel(Dynamics(dcfg), AgentHeads(acfg, dcfg.actions), sampling_config(dyn_cd))


def init_tokenizer_params(tok: Tokenizer, rng: Array) -> Any:
    """Tokenizer parameters (boxed with logical axis names) from a one-frame dummy input."""
    c = tok.config
    return tok.init(rng, jnp.zeros((1, 1, c.height, c.width, 3), jnp.float32))['params']


def init_world_model_params(wm: WorldModel, rng: Array) -> dict[str, Any]:
    """{'dynamics', 'agent'} parameters of an agent-carrying world model (boxed)."""
    k_dyn, k_agent = jax.random.split(rng)
    return {
        'dynamics': init_params(wm.dynamics, k_dyn),
        'agent': init_agent_params(wm.heads, k_agent),
    }


def encode_frames(tok: Tokenizer, tok_params: Any, image_BTHWC: Array) -> Array:
    """Latents of uint8 frames through the frozen tokenizer (no gradient reaches it)."""
    images = jnp.asarray(image_BTHWC, jnp.float32) / 255.0
    z = tok.apply({'params': tok_params}, images, method=Tokenizer.encode)
    return jax.lax.stop_gradient(z)


def row_tasks(
    batch: dict, num_tasks: int, rng: Array, pressed_task: tuple[int, ...] | None = None
) -> tuple[Array, Array]:
    """(task_B, relevant_B): the task each window is about, and whether it is task-relevant.

    The pipeline gives 'task_id' and 'relevant' per step ([B, T], constant along T; task -1 for
    uniform rows). Without them (hand-made batches) a row is relevant when an achievement
    unlocks in it at t >= 1, and its task is the first such one. Rows without a task get a
    uniformly random one: reward negatives, and a prompt for imagination (PAPER 9.3).

    `pressed_task` (a task per categorical action, -1 for none; `config.agent.uniform_prompts =
    'pressed'`): a row without a task is prompted instead with the task of an action pressed in
    it (one of them at random) before its last frame, so the frame its reward arrives with is in
    the window; rows with no such press keep a random task. A press the game refused is then
    a reward target of 0 under its own task, which random prompts give once in num_tasks.
    """
    tr_BTK = batch['task_reward']
    b = tr_BTK.shape[0]
    if tr_BTK.shape[-1] != num_tasks:
        raise ValueError(
            f'the data has {tr_BTK.shape[-1]} tasks (task_reward {tr_BTK.shape}) but the agent '
            f'was built for {num_tasks}: set config.agent.num_tasks={tr_BTK.shape[-1]}.'
        )
    if 'task_id' in batch:
        task_B = jnp.asarray(batch['task_id'], jnp.int32)[:, 0]
        relevant_B = jnp.asarray(batch['relevant'], bool)[:, 0]
    else:
        hit_BTK = tr_BTK[:, 1:] > 0  # the action causing the event must be in the window
        relevant_B = jnp.any(hit_BTK, axis=(1, 2))
        first_t_BK = jnp.where(
            jnp.any(hit_BTK, axis=1), jnp.argmax(hit_BTK, axis=1), tr_BTK.shape[1]
        )
        task_B = jnp.where(relevant_B, jnp.argmin(first_t_BK, axis=1), -1).astype(jnp.int32)
    random_B = jax.random.randint(rng, (b,), 0, num_tasks)
    if pressed_task is not None:  # its own key: the random prompts stay as they were
        pressed_B = pressed_tasks(batch, pressed_task, jax.random.fold_in(rng, 1))
        task_B = jnp.where(task_B >= 0, task_B, pressed_B)
    return jnp.where(task_B >= 0, task_B, random_B), relevant_B


def pressed_tasks(batch: dict, pressed_task: tuple[int, ...], rng: Array) -> Array:
    """int [B]: the task of one action (uniformly among them) that each row presses before its
    last frame and that has a task in `pressed_task`; -1 for rows with none."""
    (name,) = batch['action']  # one categorical action component
    a_BT = jnp.asarray(batch['action'][name], jnp.int32)
    table = jnp.asarray(pressed_task, jnp.int32)
    valid = jnp.asarray(batch['has_action'], bool) & (a_BT >= 0) & (a_BT < table.shape[0])
    task_BT = jnp.where(valid, table[jnp.clip(a_BT, 0, table.shape[0] - 1)], -1)
    task_BT = task_BT.at[:, -1].set(-1)  # its reward would arrive after the window
    # A uniform choice among the pressed positions: the largest of uniform scores, +1 on presses.
    score = jax.random.uniform(rng, task_BT.shape) + (task_BT >= 0)
    pick = jnp.argmax(score, axis=1)
    return jnp.take_along_axis(task_BT, pick[:, None], axis=1)[:, 0]
