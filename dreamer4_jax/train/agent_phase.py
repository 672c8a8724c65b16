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
import optax

from dreamer4_jax import losses, shortcut
from dreamer4_jax.agent import AgentHeads, agent_loss_terms, init_agent_params
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import Dynamics, align_actions, init_params
from dreamer4_jax.generation import SamplingConfig
from dreamer4_jax.imagination import WorldModel
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_jax.train import data_sources
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.dynamics_phase import split_teacher_rows
from dreamer4_jax.train.loop import Phase
from dreamer4_jax.model_configs import (
    agent_config_from,
    dynamics_config_from,
    shortcut_config_from,
)
from dreamer4_jax.train.warm_start import mask_by_prefix, overlay

ROW_CHOICES = ('relevant', 'uniform', 'all')
TERMS = ('dynamics', 'bc', 'reward')


def build_world_model(
    dyn_cd: ml_collections.ConfigDict, tok_cfg: TokenizerConfig, agent_cd: ml_collections.ConfigDict
) -> WorldModel:
    """Dynamics model with agent tokens + heads, from the dynamics run's sub-config."""
    dcfg = dynamics_config_from(dyn_cd, tok_cfg)
    acfg = agent_config_from(agent_cd, dcfg.transformer.width)
    dcfg = dataclasses.replace(dcfg, num_agent_tokens=acfg.num_agent_tokens)
    sampling = SamplingConfig(
        num_steps=int(dyn_cd.sampling_steps),
        context_signal=float(dyn_cd.context_signal),
        prediction=str(dyn_cd.prediction),
        network_d=None if bool(dyn_cd.shortcut) else 1.0 / int(dyn_cd.k_max),
    )
    return WorldModel(Dynamics(dcfg), AgentHeads(acfg, dcfg.actions), sampling)


def row_tasks(batch: dict, num_tasks: int, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(task_B, relevant_B): the task each window is about, and whether it is task-relevant.

    The pipeline gives 'task_id' and 'relevant' per step ([B, T], constant along T; task -1 for
    uniform rows). Without them (hand-made batches) a row is relevant when an achievement
    unlocks in it at t >= 1, and its task is the first such one. Rows without a task get a
    uniformly random one: reward negatives, and a prompt for imagination.
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
    return jnp.where(task_B >= 0, task_B, random_B), relevant_B


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
    bootstrap teacher passes (0: none); rows are regrouped, and the per-row data follows them.
    """
    b, t = z1_BTNC.shape[:2]
    k_noise, k_teacher, k_flow = jax.random.split(rng, 3)
    acts, has = align_actions(batch['action'], batch['has_action'], batch['is_first'])
    per_row = {
        'z1': z1_BTNC,
        'noise': jax.random.normal(k_noise, z1_BTNC.shape, jnp.float32),
        'acts': acts,
        'has': has,
        'task': task_B,
        'rows': rows,
        'batch': {
            k: batch[k] for k in ('action', 'has_action', 'is_first', 'is_last', 'task_reward')
        },
    }
    flow_only = dataclasses.replace(objective, shortcut=False)
    if not use_dynamics or teacher_stride == 0:
        groups = [(per_row, flow_only, k_flow)]
    elif teacher_stride == 1:
        groups = [(per_row, objective, k_teacher)]
    else:
        teacher, flow = split_teacher_rows(per_row, teacher_stride)
        groups = [(teacher, objective, k_teacher), (flow, flow_only, k_flow)]

    parts, hs = [], []
    for g, cfg, key in groups:
        tau, d = shortcut.sample_training_tau_d(key, g['z1'].shape[:2], cfg)
        task_BT = jnp.broadcast_to(g['task'][:, None], g['z1'].shape[:2])
        agent_in = wm.agent_inputs(params, task_BT)

        def predict(z, tau, d, g=g, agent_in=agent_in):
            return wm.dynamics.apply(
                {'params': params['dynamics']},
                z,
                tau,
                d,
                g['acts'],
                g['has'],
                agent_in_BTAD=agent_in,
            )

        terms, h = shortcut.shortcut_loss_terms(
            predict, g['z1'], g['noise'], tau, d, cfg, has_aux=True
        )
        parts.append(terms)
        hs.append(h)
    cat = lambda *xs: jnp.concatenate(xs, axis=0)  # noqa: E731
    g_all = jax.tree.map(cat, *[g for g, _, _ in groups])
    terms = jax.tree.map(cat, *parts)
    h_BTAD = cat(*hs)

    dyn_rows = g_all['rows']['dynamics'].astype(jnp.float32)
    dynamics = jnp.sum(terms['loss'] * dyn_rows[:, None]) / jnp.maximum(dyn_rows.sum() * t, 1.0)
    heads = wm.heads
    policy = heads.apply({'params': params['agent']}, h_BTAD, method=AgentHeads.policy_params)
    reward = heads.apply({'params': params['agent']}, h_BTAD, method=AgentHeads.reward_logits)
    agent_terms, logs = agent_loss_terms(
        heads.dist,
        heads.config.reward_dist,
        policy,
        reward,
        g_all['batch'],
        g_all['task'],
        g_all['rows']['bc'],
        g_all['rows']['reward'],
    )
    n_flow = jnp.maximum(jnp.sum(terms['flow_mask'] * dyn_rows[:, None]), 1.0)
    logs['flow_mse'] = jnp.sum(terms['flow'] * terms['flow_mask'] * dyn_rows[:, None]) / n_flow
    logs['agent/relevant_rows'] = jnp.mean(g_all['rows']['bc'].astype(jnp.float32))
    return {'dynamics': dynamics, **agent_terms}, logs


def held_out_metrics(
    wm: WorldModel, tok_model: Tokenizer, params: Any, tok_params: Any, batch: dict, rng: jax.Array
) -> dict[str, jax.Array]:
    """BC / reward quality on held-out windows in the inference setting: every frame at the
    context signal level, as imagination and the closed loop commit them (no cache needed: a
    full pass equals frame-by-frame commits, tests/test_imagination.py). Each window's task is
    the first event in it (random if none), so the reward head is scored on real events."""
    batch = {k: v for k, v in batch.items() if k not in ('task_id', 'relevant')}
    k_task, k_noise = jax.random.split(rng)
    task_B, _ = row_tasks(batch, wm.heads.config.num_tasks, k_task)
    images = jnp.asarray(batch['image'], jnp.float32) / 255.0
    z = tok_model.apply({'params': tok_params}, images, method=Tokenizer.encode)
    b, t = z.shape[:2]
    k_max = wm.dynamics.config.k_max
    z_ctx, tau_ctx = shortcut.corrupt_context(k_noise, z, wm.sampling.context_signal, k_max=k_max)
    acts, has = align_actions(batch['action'], batch['has_action'], batch['is_first'])
    agent_in = wm.agent_inputs(params, jnp.broadcast_to(task_B[:, None], (b, t)))
    _, h = wm.dynamics.apply(
        {'params': params['dynamics']},
        z_ctx,
        jnp.full((b, t), tau_ctx),
        jnp.full((b, t), 1.0 / k_max),
        acts,
        has,
        agent_in_BTAD=agent_in,
    )
    heads = wm.heads
    policy = heads.apply({'params': params['agent']}, h, method=AgentHeads.policy_params)
    reward = heads.apply({'params': params['agent']}, h, method=AgentHeads.reward_logits)
    every = jnp.ones((b,), bool)
    terms, logs = agent_loss_terms(
        heads.dist, heads.config.reward_dist, policy, reward, batch, task_B, every, every
    )
    return {
        'bc_nll': terms['bc'],
        'reward_nll': terms['reward'],
        'bc_accuracy_offset0': logs['agent/bc_accuracy_offset0'],
        'reward_abs_err_offset0': logs['agent/reward_abs_err_offset0'],
    }


def load_pretrained_dynamics(config: ml_collections.ConfigDict):
    """(dynamics params, the dynamics run's config) from config.agent.dynamics_workdir."""
    from dreamer4_jax.checkpoint import load_trained, require_phase

    where = str(config.agent.dynamics_workdir)
    if not where:
        raise ConfigError(
            'config.agent.dynamics_workdir is empty: point it at the workdir of a '
            'finished dynamics run (phase 1b). Its saved config fixes the '
            'architecture; with agent.from_scratch=True only that is used.'
        )
    require_phase(where, 'dynamics', 'config.agent.dynamics_workdir')
    return load_trained(where)


def make_phase(
    config: ml_collections.ConfigDict,
    *,
    dynamics: tuple | None = None,
    tokenizer: tuple | None = None,
) -> Phase:
    """The agent phase. `dynamics` = (params, dynamics run config) and `tokenizer` = (params,
    TokenizerConfig) skip loading checkpoints (tests)."""
    from dreamer4_jax.train.dynamics_phase import load_tokenizer

    ac = config.agent
    for field in ('bc_rows', 'dynamics_rows', 'reward_rows'):
        if str(ac[field]) not in ROW_CHOICES:
            raise ConfigError(f'config.agent.{field}={ac[field]!r} must be one of {ROW_CHOICES}')
    dyn_params, dyn_run = dynamics if dynamics is not None else load_pretrained_dynamics(config)
    tok_params, tok_cfg = tokenizer if tokenizer is not None else load_tokenizer(dyn_run)
    wm = build_world_model(dyn_run.dynamics, tok_cfg, ac)
    objective = shortcut_config_from(dyn_run.dynamics)
    weights = {k: float(ac.loss_weights[k]) for k in TERMS}
    use_dynamics = weights['dynamics'] > 0
    if not use_dynamics:
        weights.pop('dynamics')
    stride = 0
    if objective.shortcut and float(ac.teacher_rows) > 0:
        stride = int(round(1.0 / float(ac.teacher_rows)))
        if int(config.train.batch_size) % stride:
            raise ConfigError(
                f'config.agent.teacher_rows={ac.teacher_rows}: 1/teacher_rows '
                f'must divide train.batch_size={config.train.batch_size}'
            )
    tok_model = Tokenizer(tok_cfg)
    num_tasks = wm.heads.config.num_tasks

    def init_params_all(rng):
        k_dyn, k_agent = jax.random.split(rng)
        return {
            'dynamics': init_params(wm.dynamics, k_dyn),
            'agent': init_agent_params(wm.heads, k_agent),
        }

    # PAPER 10.1: the value head is trained only in phase 3; here it stays at its init.
    mask = mask_by_prefix(
        jax.eval_shape(init_params_all, jax.random.key(0)), (('agent', 'value'),), inside=False
    )
    tx = state_lib.make_optimizer(config.train, trainable_mask=mask)

    def init(rng):
        params = init_params_all(rng)
        if not bool(ac.from_scratch):
            # Pretrained weights for every existing leaf; the agent-token embedding is new.
            params['dynamics'] = overlay(
                params['dynamics'], dyn_params, 'config.agent.dynamics_workdir'
            )
        return state_lib.create_train_state(params, tx, {'rms': losses.init_rms_state(TERMS)})

    def latents(batch, consts):
        images = jnp.asarray(batch['image'], jnp.float32) / 255.0
        z = tok_model.apply({'params': consts['tokenizer']}, images, method=Tokenizer.encode)
        return jax.lax.stop_gradient(z)

    def train_step(state, batch, rng, consts):
        k_task, k_loss = jax.random.split(rng)
        task_B, relevant_B = row_tasks(batch, num_tasks, k_task)
        rows = {
            'bc': _rows(str(ac.bc_rows), relevant_B),
            'dynamics': _rows(str(ac.dynamics_rows), relevant_B),
            'reward': _rows(str(ac.reward_rows), relevant_B),
        }
        z1 = latents(batch, consts)

        def loss_fn(params):
            terms, logs = finetune_loss(
                wm, objective, stride, params, z1, batch, task_B, rows, k_loss, use_dynamics
            )
            terms = {k: terms[k] for k in weights}
            total, rms, metrics = losses.update_and_normalize(
                state.aux['rms'], terms, weights, beta=float(ac.rms_beta)
            )
            return total, (rms, {**metrics, **logs})

        (_, (rms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics['grad_norm'] = optax.tree.norm(grads)
        return state_lib.apply_gradients(state, grads, tx, aux={'rms': rms}), metrics

    held_out = jax.jit(functools.partial(held_out_metrics, wm, tok_model))

    def evaluate(state, step, workdir):
        del step, workdir
        batch = data_sources.eval_batch(config)
        out = held_out(state.params, tok_params, batch, jax.random.key(0))
        return {k: float(v) for k, v in out.items()}

    return Phase(
        name='agent',
        init=init,
        train_step=train_step,
        evaluate=evaluate,
        make_data=lambda pi, pc: data_sources.train_windows(config, pi, pc, mode=str(ac.data_mode)),
        main_metrics=('loss/total', 'loss/bc', 'loss/reward', 'agent/bc_accuracy_offset0'),
        checked_metrics=tuple(f'loss/{k}' for k in weights) + ('loss/total',),
        constants=lambda: {'tokenizer': tok_params},
    )
