"""Phase 3: reinforcement learning inside the world model (PAPER 10).

Starts from a finished agent run (config.imagination.agent_workdir). Each step: dataset contexts
(the first `context` frames of task-relevant windows, with their tasks) are rolled out for
`horizon` steps by the current policy inside the frozen world model (imagination.imagine); the
reward head annotates the states; the value head learns TD(lambda) returns (PAPER 10.2, Eq. 10)
and the policy head PMPO with a reverse KL to a frozen copy of the behavior-cloning policy
(PAPER 10.3, Eq. 11).

Only the policy and value heads train (PAPER 10.1): the optimizer mask freezes the transformer,
the task embedding, the reward head and the prior copy, and the rollout runs on stop-gradient
parameters, so no gradient reaches them either.

Prompts: a context from a task-relevant window is prompted with its event's task; one from a
uniform window (data_mode 'mixture' or 'uniform') with a random task, or, with
config.imagination.uniform_prompts='ladder', with the ladder's task at its last frame, as
closed-loop ladder play prompts (data/pipeline.py, ladder_prompts).

Context latents: encoded in the step, or cached (config.data.latents='cache'): the contexts then
carry their in-episode history as the closed loop observes it (dreamer4_jax/data/latent_cache.py).

Continuation: c_t = 1 for every imagined step (no termination head; PAPER 10.2 [U] says
c_t = 1 is likely for Minecraft; Craftax deaths are rare over a short horizon).

Dimension keys: B batch (contexts = rollouts), H horizon, N offsets.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamer4_jax import pretrained, rl, world_model
from dreamer4_jax.agent import AgentHeads
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import align_actions
from dreamer4_jax.imagination import Trajectory, WorldModel, imagine
from dreamer4_jax.model_configs import closed_loop_config_dict
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import data_sources
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.agent_phase import batch_latents
from dreamer4_jax.train.loop import Phase
from dreamer4_jax.train.warm_start import load_into, mask_by_prefix
from dreamer4_jax.world_model import row_tasks

TRAINED = (('agent', 'policy'), ('agent', 'value'))
imagined_returns = rl.imagined_returns  # kept name: the equation lives in rl.py


def imagination_loss(
    heads: AgentHeads,
    agent_params,
    prior_policy,
    traj: Trajectory,
    cfg: ml_collections.ConfigDict,
    policy_weight: jax.Array | float = 1.0,
):
    """PMPO policy loss + MTP value loss (rl.imagination_loss_terms) on imagined trajectories.

    `policy_weight` (0 during config.imagination.policy_warmup steps) lets the new value head
    catch up first: a value head still near its zero init makes every advantage positive.
    Advantages are sg(R - v) (PAPER 10.3); the KL is the reverse KL(pi || pi_prior).
    """
    dist, vdist = heads.dist, heads.config.value_dist
    h = jax.lax.stop_gradient(traj.h)
    horizon = h.shape[1] - 1

    def pol(params):
        out = heads.apply({'params': params}, h, 1, method=AgentHeads.policy_params)
        return {k: v[:, :, 0] for k, v in out.items()}

    policy = pol(agent_params)
    prior = jax.lax.stop_gradient(pol({**agent_params, 'policy': prior_policy}))
    v_logits = heads.apply({'params': agent_params}, h, method=AgentHeads.value_logits)
    terms, metrics = rl.imagination_loss_terms(
        dist.log_prob(policy, traj.action),
        dist.kl(policy, prior),
        vdist.mean(v_logits[:, :, 0]),
        lambda target_BHN: -vdist.log_prob(v_logits[:, :horizon], target_BHN),
        traj.reward,
        gamma=float(cfg.gamma),
        lam=float(cfg.lam),
        alpha=float(cfg.alpha),
        beta=float(cfg.beta),
        num_value_offsets=v_logits.shape[2],
        continuation=str(cfg.get('continuation', 'ones')),
        reward_scale=float(cfg.get('reward_scale', 1.0)),
        deadzone=float(cfg.get('advantage_deadzone', 0.0)),
        reward_credit=str(cfg.get('reward_credit', 'sum')),
        reward_floor=float(cfg.get('reward_floor', 0.0)),
    )
    total = policy_weight * terms['policy'] + float(cfg.value_weight) * terms['value']
    metrics.update(
        {
            'loss/total': total,
            'loss/value': terms['value'],
            'imagine/reward_sum': jnp.mean(jnp.sum(traj.reward[:, 1:], axis=1)),
            'imagine/entropy': jnp.mean(dist.entropy(policy)),
        }
    )
    return total, metrics


@dataclasses.dataclass(frozen=True)
class ImaginationStep:
    """The static pieces of an imagination train step (bound with functools.partial)."""

    wm: WorldModel
    tokenizer: Tokenizer
    tx: optax.GradientTransformation
    cfg: Any  # config.imagination (read-only numbers)
    context: int
    horizon: int


def rollout(s: ImaginationStep, params, batch, rng, consts) -> Trajectory:
    """The step's imagined trajectories: one per window of `batch`, from its first `s.context`
    frames, prompted with the window's task, acting with the policy head in `params`."""
    k_task, k_img = jax.random.split(rng)
    ctx = jax.tree.map(lambda x: x[:, : s.context], batch)  # every entry is [B, T, ...]
    # The task of a window is found over the whole window: its event may lie ahead.
    task_B, _ = row_tasks(batch, s.wm.heads.config.num_tasks, k_task)
    z = batch_latents(s.tokenizer, ctx, consts)
    acts, has = align_actions(ctx['action'], ctx['has_action'], ctx['is_first'])
    frozen = jax.lax.stop_gradient(params)
    return imagine(s.wm, frozen, z, acts, has, task_B, k_img, s.horizon)


def train_step(s: ImaginationStep, state, batch, rng, consts):
    """Imagine rollouts from dataset contexts, then one PMPO + value update (PAPER 10)."""
    traj = rollout(s, state.params, batch, rng, consts)
    policy_weight = (state.step >= int(s.cfg.policy_warmup)).astype(jnp.float32)

    def loss_fn(params):
        return imagination_loss(
            s.wm.heads, params['agent'], params['prior_policy'], traj, s.cfg, policy_weight
        )

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return state_lib.apply_gradients(state, grads, s.tx), metrics


UNIFORM_PROMPTS = ('random', 'ladder')


def uniform_prompt_ladder(config: ml_collections.ConfigDict) -> str | None:
    """The ladder (task names) that prompts the contexts from uniform windows, for
    config.imagination.uniform_prompts='ladder' (config.closed_loop.ladder, or its default where
    the config has no closed_loop); None for 'random' (row_tasks draws a task)."""
    ic = config.imagination
    choice = str(ic.get('uniform_prompts', 'random'))
    if choice not in UNIFORM_PROMPTS:
        raise ConfigError(
            f'config.imagination.uniform_prompts={choice!r} must be one of {UNIFORM_PROMPTS}'
        )
    if choice == 'random':
        return None
    if str(ic.data_mode) == 'relevant':
        raise ConfigError(
            "config.imagination.uniform_prompts='ladder' prompts the contexts from uniform "
            "windows, and data_mode='relevant' draws none: set config.imagination.data_mode to "
            "'uniform' or 'mixture'"
        )
    closed_loop = config.get('closed_loop') or closed_loop_config_dict()
    return str(closed_loop.ladder)


def make_phase(
    config: ml_collections.ConfigDict,
    *,
    agent: tuple | None = None,
    tokenizer: tuple | None = None,
    world_model: WorldModel | None = None,
    load=pretrained.load,
) -> Phase:
    """The imagination phase on the agent run of `config.imagination.agent_workdir`.

    `load(workdir, expect=...)` finds earlier runs (`pretrained.load`; ahead-of-time compilation
    passes abstract ones). `agent` = (params, agent run config), `tokenizer` = (params,
    TokenizerConfig) and `world_model` skip loading checkpoints (tests).
    """
    ic = config.imagination
    context, horizon = int(ic.context), int(ic.horizon)
    if context < 1 or horizon < 1:
        raise ConfigError(
            f'config.imagination: context={context} and horizon={horizon} must be >= 1'
        )
    for name, default, choices in (
        ('continuation', 'ones', rl.CONTINUATIONS),
        ('reward_credit', 'sum', rl.REWARD_CREDITS),
    ):
        if str(ic.get(name, default)) not in choices:
            raise ConfigError(
                f'config.imagination.{name}={ic.get(name)!r}: choose one of {choices}'
            )
    ladder = uniform_prompt_ladder(config)
    for name in ('reward_scale', 'advantage_deadzone', 'reward_floor'):
        if float(ic.get(name, 0.0)) < 0:
            raise ConfigError(f'config.imagination.{name}={ic.get(name)} must be >= 0')
    if int(config.data.window_length) < context:
        raise ConfigError(
            f'config.data.window_length={config.data.window_length} is shorter '
            f'than imagination.context={context}'
        )
    agent_run = None
    if agent is not None:
        agent_params = agent[0]
    else:
        agent_run = pretrained.load_earlier(config, load=load)
        agent_params = None
    wm = world_model if world_model is not None else agent_run.world_model()
    tok_run = None
    if tokenizer is not None:
        tok_params, tok_cfg = tokenizer
    else:
        tok_run = agent_run.earlier().earlier()
        tok_params, tok_cfg = None, tok_run.tokenizer_config()

    def init_params(rng):
        """Boxed parameters shaped like phase 2's; PAPER 10.1: a frozen copy of the BC policy
        head is the behavioral prior."""
        params = _init_world_model_params(wm, rng)
        return {**params, 'prior_policy': params['agent']['policy']}

    tx = state_lib.make_optimizer(
        config.train,
        trainable_mask=mask_by_prefix(
            jax.eval_shape(init_params, jax.random.key(0)), TRAINED, inside=True
        ),
    )
    step = ImaginationStep(wm, Tokenizer(tok_cfg), tx, ic, context, horizon)

    def init(rng):
        return state_lib.create_train_state(init_params(rng), tx, {})

    def warm_start(state):
        shardings = pretrained.device_shardings({k: state.params[k] for k in ('dynamics', 'agent')})
        loaded = agent_params if agent_params is not None else agent_run.params(shardings)
        prior = jax.tree.map(jnp.copy, loaded['agent']['policy'])
        where = 'config.imagination.agent_workdir'
        return load_into(state, None, {**loaded, 'prior_policy': prior}, where)

    @functools.cache
    def frozen_tokenizer():
        return tok_params if tok_params is not None else tok_run.params()

    return Phase(
        name='imagination',
        init=init,
        train_step=functools.partial(train_step, step),
        make_data=lambda pi, pc: data_sources.train_windows(
            config,
            pi,
            pc,
            mode=str(ic.data_mode),
            encoder=data_sources.tokenizer_encoder(tok_run, frozen_tokenizer),
            ladder=ladder,
            ladder_frame=context - 1,  # the prompt is the ladder's at the context's last frame
        ),
        main_metrics=('loss/total', 'imagine/return', 'pmpo/frac_positive', 'pmpo/kl'),
        checked_metrics=('loss/total', 'loss/value', 'pmpo/loss'),
        constants=lambda: {'tokenizer': frozen_tokenizer()},
        warm_start=warm_start,
    )


_init_world_model_params = world_model.init_world_model_params  # `world_model` is a kwarg above
