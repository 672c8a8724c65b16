"""Phase 2: agent finetuning, behavior cloning + reward model on the dynamics model (PAPER 9).

The pretrained dynamics model (config.agent.dynamics_workdir) gains agent tokens carrying a task
embedding (PAPER 9.1) and the agent heads; the whole transformer keeps training. One forward pass
of the shortcut-forcing objective on noisy inputs (PAPER 9.2) gives both the latent predictions
(dynamics loss, Eq. 7) and h_t for the heads (BC and reward with multi-token prediction, Eq. 9).
Each term is divided by a running RMS of itself (PAPER 6.6) and weighted by
config.agent.loss_weights (1 each, PAPER 6.6).

Data mixture (PAPER 9.3): the pipeline's 'mixture' mode mixes task-relevant windows (they contain
an unlock of their task) with uniform ones, 50/50 by default. BC uses the relevant rows, the
dynamics loss the uniform rows ("to avoid optimistic generations"), the reward loss all rows
(PAPER 9.3 [U]); uniform rows without a task get a random task, so the reward head also learns
that other tasks' events are worth 0. config.agent.{bc,dynamics,reward}_rows change that.

The BC-without-world-model baseline (PAPER 12.1 'BC') is this phase with
`agent.from_scratch=True` (same architecture and data, random transformer weights) and
`agent.loss_weights.dynamics=0` (no video prediction); see agent_config_dict.

Latents: the frozen tokenizer's encoding of the batch's images in the step, or the batch's own
'latents' when config.data.latents='cache' (dreamer4_jax/data/latent_cache.py).

The value head exists from the start (its parameters are created here) but is frozen until
phase 3 initializes its training (PAPER 10.1).

Dimension keys: B batch, T time, N latents, C channels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dreamer4_jax import generation, losses, pretrained, shortcut, world_model
from dreamer4_jax.agent import (
    AgentHeads,
    agent_loss_terms,
    batch_majority_accuracy,
    with_health_reward,
)
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import align_actions
from dreamer4_jax.envs.craftax import ACTION_ACHIEVEMENT
from dreamer4_jax.model_configs import shortcut_config_from
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import data_sources
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.dynamics_phase import ema_decay_at, ema_update, teacher_stride
from dreamer4_jax.train.loop import Phase
from dreamer4_jax.train.warm_start import load_into, mask_by_prefix
from dreamer4_jax.world_model import WorldModel, build_world_model, row_tasks

ROW_CHOICES = ('relevant', 'uniform', 'all')
UNIFORM_PROMPTS = ('random', 'pressed')
TERMS = ('dynamics', 'bc', 'reward')
__all__ = [
    'build_world_model',
    'finetune_loss',
    'health_reward_weight',
    'held_out_heads',
    'held_out_metrics',
    'make_phase',
    'row_tasks',
    'step_terms',
]


def _rows(choice: str, relevant_B: jax.Array) -> jax.Array:
    return {'relevant': relevant_B, 'uniform': ~relevant_B, 'all': jnp.ones_like(relevant_B)}[
        choice
    ]


def finetune_loss(
    wm: WorldModel,
    objective: shortcut.ShortcutConfig,
    teacher_stride: int,
    params: Any,
    z1_BTNC: jax.Array,
    batch: dict,
    task_B: jax.Array,
    rows: dict[str, jax.Array],
    rng: jax.Array,
    use_dynamics: bool,
):
    """Unnormalized PAPER 9.2 terms {'dynamics', 'bc', 'reward'} and logs.

    One shortcut-forcing pass on noisy latents (PAPER 9.2: inputs stay noisy) gives the latent
    predictions and h_t. As in phase 1b, only every `teacher_stride`-th row pays the two
    bootstrap teacher passes (0: none; shortcut.teacher_rows_loss_terms).
    """
    t = z1_BTNC.shape[1]
    k_noise, k_terms = jax.random.split(rng)
    acts, has = align_actions(batch['action'], batch['has_action'], batch['is_first'])
    noise = jax.random.normal(k_noise, z1_BTNC.shape, jnp.float32)
    task_BT = jnp.broadcast_to(task_B[:, None], z1_BTNC.shape[:2])

    def apply_rows(z, tau, d, inputs):
        acts, has, task = inputs
        return wm.dynamics.apply(
            {'params': params['dynamics']},
            z,
            tau,
            d,
            acts,
            has,
            agent_in_BTAD=wm.agent_inputs(params, task),
        )

    stride = teacher_stride if use_dynamics else 0
    terms, h_BTAD = shortcut.teacher_rows_loss_terms(
        apply_rows, (acts, has, task_BT), z1_BTNC, noise, k_terms, objective, stride, has_aux=True
    )
    dyn_rows = rows['dynamics'].astype(jnp.float32)
    dynamics = jnp.sum(terms['loss'] * dyn_rows[:, None]) / jnp.maximum(dyn_rows.sum() * t, 1.0)
    heads = wm.heads
    policy = heads.apply({'params': params['agent']}, h_BTAD, method=AgentHeads.policy_params)
    reward = heads.apply({'params': params['agent']}, h_BTAD, method=AgentHeads.reward_logits)
    head_batch = {
        k: batch[k] for k in ('action', 'has_action', 'is_first', 'is_last', 'task_reward')
    }
    agent_terms, logs = agent_loss_terms(
        heads.dist,
        heads.config.reward_dist,
        policy,
        reward,
        head_batch,
        task_B,
        rows['bc'],
        rows['reward'],
    )
    n_flow = jnp.maximum(jnp.sum(terms['flow_mask'] * dyn_rows[:, None]), 1.0)
    logs['flow_mse'] = jnp.sum(terms['flow'] * terms['flow_mask'] * dyn_rows[:, None]) / n_flow
    logs['agent/relevant_rows'] = jnp.mean(rows['bc'].astype(jnp.float32))
    return {'dynamics': dynamics, **agent_terms}, logs


def held_out_heads(
    wm: WorldModel,
    tok_model: Tokenizer,
    params: Any,
    tok_params: Any,
    batch: dict,
    rng: jax.Array,
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array, jax.Array]:
    """(policy parameters, reward logits, task_B, relevant_B) of windows whose frames are all
    committed at the context signal level, as imagination and the closed loop commit them; each
    window is prompted with its first event's task (a random one if it has none)."""
    batch = {k: v for k, v in batch.items() if k not in ('task_id', 'relevant')}
    k_task, k_noise = jax.random.split(rng)
    task_B, relevant_B = row_tasks(batch, wm.heads.config.num_tasks, k_task)
    z = world_model.encode_frames(tok_model, tok_params, batch['image'])
    b, t = z.shape[:2]
    acts, has = align_actions(batch['action'], batch['has_action'], batch['is_first'])
    agent_in = wm.agent_inputs(params, jnp.broadcast_to(task_B[:, None], (b, t)))
    cache = generation.new_cache(wm.dynamics, b, t)
    (_, h), _ = generation.commit(
        wm.dynamics, params['dynamics'], z, acts, has, cache, k_noise, wm.sampling, agent_in
    )
    heads = wm.heads
    policy = heads.apply({'params': params['agent']}, h, method=AgentHeads.policy_params)
    reward = heads.apply({'params': params['agent']}, h, method=AgentHeads.reward_logits)
    return policy, reward, task_B, relevant_B


def held_out_metrics(
    wm: WorldModel,
    tok_model: Tokenizer,
    params: Any,
    tok_params: Any,
    batch: dict,
    rng: jax.Array,
    groups: dict[str, jax.Array] | None = None,
    health_reward: float = 0.0,
) -> dict[str, jax.Array]:
    """BC / reward quality on held-out windows in the inference setting: every frame committed
    at the context signal level, as imagination and the closed loop commit them (one pass over
    an empty cache equals frame-by-frame commits, tests/test_imagination.py). Each window's task
    is the first event in it (random if none), so the reward head is scored on real events.

    `groups` (name -> bool [B] rows, e.g. the policy that recorded each window's episode) adds
    BC accuracy and its majority baseline per group: `bc_accuracy_offset0/<name>`. The group
    'relevant' is always added: the windows in which an achievement unlocks, prompted with it,
    the kind of window BC trains on (PAPER 9.3); the other windows get a random task, so the
    accuracy over all windows also scores the policy under prompts it never learned to follow.
    The reward head is scored against the targets it trains on (`health_reward`: the weight of
    the health term in them, agent.with_health_reward).
    """
    batch = {k: v for k, v in batch.items() if k not in ('task_id', 'relevant')}
    policy, reward, task_B, relevant_B = held_out_heads(
        wm, tok_model, params, tok_params, batch, rng
    )
    batch = with_health_reward(batch, health_reward)
    groups = {**(groups or {}), 'relevant': relevant_B}
    heads = wm.heads
    every = jnp.ones((task_B.shape[0],), bool)
    terms, logs = agent_loss_terms(
        heads.dist, heads.config.reward_dist, policy, reward, batch, task_B, every, every
    )
    out = {
        'bc_nll': terms['bc'],
        'reward_nll': terms['reward'],
        'bc_accuracy_offset0': logs['agent/bc_accuracy_offset0'],
        # Always playing the commonest action of these windows: what BC accuracy is read against.
        'majority_accuracy_offset0': batch_majority_accuracy(batch),
        'reward_abs_err_offset0': logs['agent/reward_abs_err_offset0'],
    }
    for name, rows_B in groups.items():
        _, group_logs = agent_loss_terms(
            heads.dist, heads.config.reward_dist, policy, reward, batch, task_B, rows_B, every
        )
        out[f'bc_accuracy_offset0/{name}'] = group_logs['agent/bc_accuracy_offset0']
        out[f'majority_accuracy_offset0/{name}'] = batch_majority_accuracy(batch, rows_B)
        out[f'windows/{name}'] = jnp.sum(rows_B.astype(jnp.int32))
    return out


def policy_groups(batch: dict, episode_ids: Any, policies: Any) -> dict[str, np.ndarray]:
    """Rows of a batch by the policy that recorded each window's episode (bool [B] per policy).

    `episode_ids` / `policies`: the split's episodes and their policies (data.build.SplitMeta).
    Policies with no row in the batch are left out; empty when fewer than two remain (the overall
    metrics already say it all).
    """
    policy_of = dict(zip((int(e) for e in episode_ids), policies, strict=True))
    row_policy = [policy_of[int(e)] for e in np.asarray(batch['episode_id'])[:, 0]]
    present = sorted(set(row_policy))
    if len(present) < 2:
        return {}
    return {p: np.array([r == p for r in row_policy]) for p in present}


def batch_latents(tok: Tokenizer, batch: dict, consts: dict) -> jax.Array:
    """Clean latents of a batch: its cached 'latents' (config.data.latents='cache'), else the
    frozen tokenizer's encoding of its images."""
    if 'latents' in batch:
        return jnp.asarray(batch['latents'], jnp.float32)
    return world_model.encode_frames(tok, consts['tokenizer'], batch['image'])


@dataclasses.dataclass(frozen=True)
class AgentStep:
    """The static pieces of an agent train step (bound with functools.partial)."""

    wm: WorldModel
    tokenizer: Tokenizer
    objective: shortcut.ShortcutConfig
    teacher_stride: int
    tx: optax.GradientTransformation
    weights: tuple[tuple[str, float], ...]
    rows: tuple[tuple[str, str], ...]  # (term, row choice)
    rms_beta: float
    ema_decay: float  # 0: no EMA
    pressed_task: tuple[int, ...] | None = None  # config.agent.uniform_prompts='pressed'
    health_reward: float = 0.0  # config.agent.health_reward (agent.with_health_reward)


def step_terms(s: AgentStep, batch, rng, consts, use_dynamics: bool):
    """params -> (unnormalized terms, logs) of one train step on `batch` (`finetune_loss` with
    the step's task prompts, row choices and clean latents)."""
    k_task, k_loss = jax.random.split(rng)
    task_B, relevant_B = row_tasks(batch, s.wm.heads.config.num_tasks, k_task, s.pressed_task)
    # After the prompts: which task a window is about stays the achievement's, not the health's.
    batch = with_health_reward(batch, s.health_reward)
    rows = {term: _rows(choice, relevant_B) for term, choice in s.rows}
    z1 = batch_latents(s.tokenizer, batch, consts)
    return functools.partial(
        finetune_loss,
        s.wm,
        s.objective,
        s.teacher_stride,
        z1_BTNC=z1,
        batch=batch,
        task_B=task_B,
        rows=rows,
        rng=k_loss,
        use_dynamics=use_dynamics,
    )


def train_step(s: AgentStep, state, batch, rng, consts):
    """One finetuning step: shortcut forcing + BC + reward, RMS-normalized (PAPER 9.2-9.3)."""
    weights = dict(s.weights)
    terms_of = step_terms(s, batch, rng, consts, 'dynamics' in weights)

    def loss_fn(params):
        terms, logs = terms_of(params)
        terms = {k: terms[k] for k in weights}
        total, rms, metrics = losses.update_and_normalize(
            state.aux['rms'], terms, weights, beta=s.rms_beta
        )
        return total, (rms, {**metrics, **logs})

    (_, (rms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    new = state_lib.apply_gradients(state, grads, s.tx, aux={**state.aux, 'rms': rms})
    if s.ema_decay > 0:
        decay = ema_decay_at(state.step, s.ema_decay)
        new = new.replace(aux={**new.aux, 'ema': ema_update(state.aux['ema'], new.params, decay)})
    return new, metrics


def uniform_prompt_table(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """`row_tasks`'s pressed_task for config.agent.uniform_prompts: None for 'random'; for
    'pressed', Craftax's task (achievement) of each place/make action."""
    choice = str(config.agent.get('uniform_prompts', 'random'))
    if choice not in UNIFORM_PROMPTS:
        raise ConfigError(
            f'config.agent.uniform_prompts={choice!r} must be one of {UNIFORM_PROMPTS}'
        )
    if choice == 'random':
        return None
    source = config.data.get('source', '')
    if source != 'craftax':
        raise ConfigError(
            "config.agent.uniform_prompts='pressed' needs actions that are tasks (Craftax's "
            f'place/make actions); config.data.source={source!r} has none'
        )
    return tuple(int(t) for t in ACTION_ACHIEVEMENT)


def health_reward_weight(config: ml_collections.ConfigDict) -> float:
    """config.agent.health_reward, checked: >= 0, and above 0 only on Craftax data whose task
    events are first unlocks, where the env reward minus the task rewards is the health term
    (agent.health_rewards)."""
    weight = float(config.agent.get('health_reward', 0.0))
    if weight < 0:
        raise ConfigError(f'config.agent.health_reward={weight} must be >= 0 (0 = off)')
    if weight == 0:
        return 0.0
    source = config.data.get('source', '')
    events = config.data.get('collect', {}).get('task_events', 'first')
    if source != 'craftax' or events != 'first':
        raise ConfigError(
            f'config.agent.health_reward={weight} reads the health term as the env reward minus '
            "the achievements' first unlocks: it needs config.data.source='craftax' with "
            f"collect.task_events='first' (here source={source!r}, task_events={events!r})"
        )
    return weight


def make_phase(
    config: ml_collections.ConfigDict,
    *,
    dynamics: tuple | None = None,
    tokenizer: tuple | None = None,
    load=pretrained.load,
) -> Phase:
    """The agent phase on the dynamics run of `config.agent.dynamics_workdir`.

    `load(workdir, expect=...)` finds earlier runs (`pretrained.load`; ahead-of-time compilation
    passes abstract ones). `dynamics` = (params, dynamics run config) and `tokenizer` = (params,
    TokenizerConfig) skip loading checkpoints (tests).
    """
    ac = config.agent
    for field in ('bc_rows', 'dynamics_rows', 'reward_rows'):
        if str(ac[field]) not in ROW_CHOICES:
            raise ConfigError(f'config.agent.{field}={ac[field]!r} must be one of {ROW_CHOICES}')
    if dynamics is not None:
        dyn_params, dyn_cfg = dynamics
        dyn_run = None
    else:
        dyn_run = pretrained.load_earlier(config, load=load)
        dyn_params, dyn_cfg = None, dyn_run.config
    tok_run = None
    if tokenizer is not None:
        tok_params, tok_cfg = tokenizer
    else:
        tok_run = (
            dyn_run.earlier()
            if dyn_run is not None
            else pretrained.load_earlier(dyn_cfg, phase='dynamics', load=load)
        )
        tok_params, tok_cfg = None, tok_run.tokenizer_config()
    wm = build_world_model(dyn_cfg.dynamics, tok_cfg, ac)
    objective = shortcut_config_from(dyn_cfg.dynamics)
    weights = {k: float(ac.loss_weights[k]) for k in TERMS}
    if weights['dynamics'] <= 0:
        weights.pop('dynamics')
    stride = teacher_stride(
        objective.shortcut, float(ac.teacher_rows), int(config.train.batch_size), 'agent'
    )
    init_params = functools.partial(world_model.init_world_model_params, wm)
    # PAPER 10.1: the value head is trained only in phase 3; here it stays at its init.
    mask = mask_by_prefix(
        jax.eval_shape(init_params, jax.random.key(0)), (('agent', 'value'),), inside=False
    )
    step = AgentStep(
        wm=wm,
        tokenizer=Tokenizer(tok_cfg),
        objective=objective,
        teacher_stride=stride,
        tx=state_lib.make_optimizer(config.train, trainable_mask=mask),
        weights=tuple(weights.items()),
        rows=tuple((k, str(ac[f'{k}_rows'])) for k in ('bc', 'dynamics', 'reward')),
        rms_beta=float(ac.rms_beta),
        ema_decay=float(ac.get('ema_decay', 0.0)),
        pressed_task=uniform_prompt_table(config),
        health_reward=health_reward_weight(config),
    )
    if not 0.0 <= step.ema_decay < 1.0:
        raise ConfigError(f'config.agent.ema_decay={step.ema_decay} must be in [0, 1) (0 = off)')

    def init(rng):
        params = init_params(rng)
        aux = {'rms': losses.init_rms_state(TERMS)}
        if step.ema_decay > 0:
            aux['ema'] = params
        return state_lib.create_train_state(params, step.tx, aux)

    def warm_start(state):
        if bool(ac.from_scratch):  # the BC baseline: the dynamics run fixes only the shapes
            return state
        # Pretrained weights for every existing leaf; the agent-token embedding is new.
        shardings = pretrained.device_shardings(state.params['dynamics'])
        loaded = dyn_params if dyn_params is not None else dyn_run.params(shardings)
        return load_into(state, 'dynamics', loaded, 'config.agent.dynamics_workdir')

    @functools.cache
    def frozen_tokenizer():
        return tok_params if tok_params is not None else tok_run.params()

    held_out = jax.jit(
        functools.partial(held_out_metrics, wm, step.tokenizer, health_reward=step.health_reward),
    )

    def evaluate(state, step_, workdir):
        del step_, workdir
        from dreamer4_jax.data import build as data_build  # deferred: tfds loads slowly

        batch = data_sources.eval_batch(config, batch_size=int(ac.get('eval_windows', 0)) or None)
        split = data_build.load_meta(config.data).splits['eval']
        groups = policy_groups(batch, split.episode_ids, split.policies)
        params = state.aux['ema'] if step.ema_decay > 0 else state.params
        out = held_out(params, frozen_tokenizer(), batch, jax.random.key(0), groups)
        return {k: float(v) for k, v in out.items()}

    return Phase(
        name='agent',
        init=init,
        train_step=functools.partial(train_step, step),
        evaluate=evaluate,
        make_data=lambda pi, pc: data_sources.train_windows(
            config,
            pi,
            pc,
            mode=str(ac.data_mode),
            encoder=data_sources.tokenizer_encoder(tok_run, frozen_tokenizer),
        ),
        main_metrics=('loss/total', 'loss/bc', 'loss/reward', 'agent/bc_accuracy_offset0'),
        checked_metrics=tuple(f'loss/{k}' for k in weights) + ('loss/total',),
        constants=lambda: {'tokenizer': frozen_tokenizer()},
        warm_start=warm_start,
    )
