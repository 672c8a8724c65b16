"""Agent tokens and heads: task embedding, policy / reward / value with multi-token prediction.

PAPER 9.1: agent tokens carry a task embedding (one-hot task indicator) into every frame block of
the dynamics transformer; they read every modality and nothing reads them, so the world model's
predictions never depend on the task. Their outputs h_t feed small MLP heads (PAPER 9.2): a
factorized policy, a symexp two-hot reward head and (phase 3, PAPER 10.1) a two-hot value head.

Multi-token prediction (PAPER 9.2, Eq. 9): every head has one output layer per offset n and
predicts the quantity of frame t + n from h_t. Offsets n = 0..L as Eq. 9 is printed (L + 1 = 9
output layers for L = 8; PAPER 9.2 [U] says L could also mean 8 distances). n = 0 must exist:
it is the action the agent takes now and the reward of the frame it sees.

Alignment (DESIGN 3, PAPER 5.2): the action stored at t is taken after observing frame t, so the
policy offset n at h_t predicts action[t + n]. The reward stored at t arrives WITH frame t (the
reward of the action stored at t - 1; see `frame_rewards`), so the reward offset n at h_t
predicts reward[t + n]; offset 0 is the reward of the frame the agent token reads, which is also
what imagination needs (the reward of a_t is read at h_{t+1}, after frame t + 1 is generated).

Dimension keys: B batch, T time, A agent tokens per frame, D model width, N offsets (L + 1),
F head hidden width, O outputs of one offset, K tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer4_jax.distributions import ActionDist, TwoHot
from dreamer4_jax.nn import RMSNorm, param_init

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Shapes of the agent tokens and heads (all [U] in the paper unless tagged).

    num_tasks: K (PAPER 9.1: 20 Minecraft tasks; 22 Craftax achievements).
    num_agent_tokens: A agent tokens per frame block (PAPER 5.1 [U]: 1 is natural).
    width: D, the dynamics transformer width (agent-token inputs and outputs).
    mtp_length: L; offsets n = 0..L (PAPER 9.2: L = 8).
    hidden, layers: the shared MLP trunk of each head ("small MLP heads", PAPER 9.1).
    reward_bins, value_bins, twohot_low, twohot_high: symexp two-hot (PAPER 9.2 / 14: 255 bins
      on [-20, 20] in symlog space, DreamerV3 defaults).
    """

    num_tasks: int = 22
    num_agent_tokens: int = 1
    width: int = 256
    mtp_length: int = 8
    hidden: int = 256
    layers: int = 1
    reward_bins: int = 255
    value_bins: int = 255
    twohot_low: float = -20.0
    twohot_high: float = 20.0

    def __post_init__(self):
        for name in ('num_tasks', 'num_agent_tokens', 'width', 'hidden', 'layers'):
            if getattr(self, name) < 1:
                raise ValueError(f'AgentConfig.{name} must be >= 1, got {getattr(self, name)}')
        if self.mtp_length < 0:
            raise ValueError(f'AgentConfig.mtp_length must be >= 0, got {self.mtp_length}')

    @property
    def num_offsets(self) -> int:
        return self.mtp_length + 1

    @property
    def reward_dist(self) -> TwoHot:
        return TwoHot(self.reward_bins, self.twohot_low, self.twohot_high)

    @property
    def value_dist(self) -> TwoHot:
        return TwoHot(self.value_bins, self.twohot_low, self.twohot_high)


class TaskEmbedding(nn.Module):
    """task_BT (int) -> agent-token inputs [B, T, A, D]: one-hot(task) @ table + learned base."""

    num_tasks: int
    num_tokens: int
    width: int

    @nn.compact
    def __call__(self, task_BT: Array) -> Array:
        init = nn.initializers.normal(0.02)
        table = self.param(
            'table',
            param_init(init, ('vocab', None, 'embed')),
            (self.num_tasks, self.num_tokens, self.width),
            jnp.float32,
        )
        base = self.param(
            'base', param_init(init, (None, 'embed')), (self.num_tokens, self.width), jnp.float32
        )
        # PAPER 9.1: a one-hot task indicator, linearly embedded (equal to a table lookup).
        onehot_BTK = jax.nn.one_hot(task_BT, self.num_tasks, dtype=jnp.float32)
        return jnp.einsum('btk,kad->btad', onehot_BTK, table) + base


class MTPHead(nn.Module):
    """Shared MLP trunk on h_t, then one output layer per offset n: [B,T,A,D] -> [B,T,N,O]."""

    out_dim: int
    num_offsets: int
    hidden: int
    layers: int = 1
    zero_init: bool = False  # reward/value start at 0 (DreamerV3): no large early targets

    @nn.compact
    def __call__(self, h_BTAD: Array, offsets: int | None = None) -> Array:
        b, t = h_BTAD.shape[:2]
        x = RMSNorm(name='in_norm')(h_BTAD.reshape(b, t, -1).astype(jnp.float32))
        trunk_init = param_init(nn.initializers.lecun_normal(), ('embed', 'mlp'))
        for i in range(self.layers):
            x = nn.Dense(self.hidden, kernel_init=trunk_init, name=f'trunk_{i}')(x)
            x = jax.nn.silu(x)
        out_init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(0.01)
        w_NFO = self.param(
            'out',
            param_init(out_init, (None, 'mlp', 'io')),
            (self.num_offsets, self.hidden, self.out_dim),
            jnp.float32,
        )
        b_NO = self.param(
            'out_bias',
            param_init(nn.initializers.zeros, (None, 'io')),
            (self.num_offsets, self.out_dim),
            jnp.float32,
        )
        n = self.num_offsets if offsets is None else offsets
        # PAPER 9.2: one output layer per MTP distance (separate weights per offset).
        return jnp.einsum('btf,nfo->btno', x, w_NFO[:n]) + b_NO[:n]


class AgentHeads(nn.Module):
    """Task embedding plus policy, reward and value heads (parameter tree keys are stable:
    'task_embed', 'policy', 'reward', 'value'; phase 3 trains only 'policy' and 'value')."""

    config: AgentConfig
    action_components: tuple  # ((name, kind, size), ...) of the action space

    @property
    def dist(self) -> ActionDist:
        """The factorized policy distribution (usable outside init/apply)."""
        return ActionDist(self.action_components)

    def setup(self):
        c = self.config
        self.task_embed = TaskEmbedding(c.num_tasks, c.num_agent_tokens, c.width)
        sizes = self.dist.param_sizes()
        self.policy = MTPHead(sum(sizes.values()), c.num_offsets, c.hidden, c.layers)
        self.reward = MTPHead(c.reward_bins, c.num_offsets, c.hidden, c.layers, zero_init=True)
        self.value = MTPHead(c.value_bins, c.num_offsets, c.hidden, c.layers, zero_init=True)

    def agent_inputs(self, task_BT: Array) -> Array:
        return self.task_embed(task_BT)

    def policy_params(self, h_BTAD: Array, offsets: int | None = None) -> dict[str, Array]:
        """Per action component, distribution parameters [B, T, N, size]."""
        flat = self.policy(h_BTAD, offsets)
        out, start = {}, 0
        for name, size in self.dist.param_sizes().items():
            out[name] = flat[..., start : start + size]
            start += size
        return out

    def reward_logits(self, h_BTAD: Array, offsets: int | None = None) -> Array:
        return self.reward(h_BTAD, offsets)

    def value_logits(self, h_BTAD: Array, offsets: int | None = None) -> Array:
        return self.value(h_BTAD, offsets)

    def __call__(self, task_BT: Array, h_BTAD: Array):
        """Every output (used to create all parameters at init)."""
        return (
            self.agent_inputs(task_BT),
            self.policy_params(h_BTAD),
            self.reward_logits(h_BTAD),
            self.value_logits(h_BTAD),
        )


def init_agent_params(heads: AgentHeads, rng: Array) -> Any:
    """Parameters of the agent heads (boxed with logical axis names)."""
    c = heads.config
    task = jnp.zeros((1, 1), jnp.int32)
    h = jnp.zeros((1, 1, c.num_agent_tokens, c.width), jnp.float32)
    return heads.init(rng, task, h)['params']


# ------------------------------------------------------------------------------------------
# Multi-token targets (PAPER 9.2) and their validity masks
# ------------------------------------------------------------------------------------------


def shift_back(x_BT: Array, n: int) -> Array:
    """y[:, t] = x[:, t + n] (zeros past the end), for any trailing dims."""
    if n == 0:
        return x_BT
    t = x_BT.shape[1]
    pad = jnp.zeros((x_BT.shape[0], min(n, t), *x_BT.shape[2:]), x_BT.dtype)
    return jnp.concatenate([x_BT[:, n:], pad], axis=1)[:, :t]


def future_stack(x_BT: Array, num_offsets: int) -> Array:
    """[B, T, ...] -> [B, T, N, ...] with entry (t, n) = x[:, t + n] (zeros past the window)."""
    return jnp.stack([shift_back(x_BT, n) for n in range(num_offsets)], axis=2)


def same_episode_mask(is_first_BT: Array, num_offsets: int) -> Array:
    """[B, T, N] bool: frame t + n is inside the window and in the same episode as frame t."""
    b, t = is_first_BT.shape
    segment_BT = jnp.cumsum(is_first_BT.astype(jnp.int32), axis=1)
    inside_BT = jnp.ones((b, t), bool)
    return future_stack(inside_BT, num_offsets) & (
        future_stack(segment_BT, num_offsets) == segment_BT[:, :, None]
    )


def policy_targets(batch: dict, num_offsets: int) -> tuple[dict[str, Array], Array]:
    """BC targets: (actions {name: [B,T,N,...]}, valid [B,T,N]) with entry (t, n) = action[t+n].

    Valid iff t + n is in the window and the same episode, the action is labeled (has_action;
    unlabeled steps are never given a made-up action, DESIGN 3) and t + n is not an episode's
    last frame (no action follows the last frame). Invalid entries hold 0 instead of the
    dataset's placeholder (-1 / NaN), so no NaN can enter a log-likelihood or its gradient.
    """
    labeled_BT = batch['has_action'].astype(bool) & ~batch['is_last'].astype(bool)
    valid = same_episode_mask(batch['is_first'], num_offsets)
    valid &= future_stack(labeled_BT, num_offsets)

    def clean(a_BT):
        a = future_stack(a_BT, num_offsets)
        keep = valid.reshape(valid.shape + (1,) * (a.ndim - valid.ndim))
        return jnp.where(keep, a, jnp.zeros((), a.dtype))

    return {k: clean(v) for k, v in batch['action'].items()}, valid


def frame_rewards(batch: dict, task_B: Array) -> Array:
    """Task reward that arrives with frame t, [B, T] (batch['task_reward'] is [B, T, K]).

    Data convention (data/rollout.py, envs/craftax.py): row t holds frame t, the reward and
    achievement unlocks of the transition INTO frame t, and the action taken after it. So the
    reward caused by action[t] is task_reward[t + 1], and the reward that arrives with frame t
    is task_reward[t]: no shift here.
    """
    tr_BTK = batch['task_reward']
    idx = jnp.broadcast_to(task_B[:, None, None], tr_BTK.shape[:2] + (1,)).astype(jnp.int32)
    return jnp.take_along_axis(tr_BTK, idx, axis=2)[..., 0].astype(jnp.float32)


def health_rewards(batch: dict) -> Array:
    """Craftax-Classic's health term of the reward that arrives with frame t, [B, T].

    The game pays 1 per achievement unlocked for the first time plus 0.1 per health point gained
    or lost on the transition (`batch['reward']`). With task events 'first' over the 22
    achievements, `batch['task_reward']` holds the first part, so the env reward minus their sum
    is the second: -0.2 for a zombie's hit, +0.1 for a point healed back.
    """
    return batch['reward'].astype(jnp.float32) - jnp.sum(batch['task_reward'], axis=-1)


def with_health_reward(batch: dict, weight: float) -> dict:
    """`batch` whose every task's reward also carries `weight` times the health term
    (`health_rewards`; config.agent.health_reward, not in the paper [U]). Weight 1 makes each
    task's reward the game's own reward restricted to that task's achievement: the prompted
    achievement plus 0.1 per health point. Weight 0 returns `batch` itself."""
    if weight == 0:
        return batch
    health_BT = health_rewards(batch)
    return {**batch, 'task_reward': batch['task_reward'] + weight * health_BT[..., None]}


def reward_targets(batch: dict, task_B: Array, num_offsets: int) -> tuple[Array, Array]:
    """Reward targets (reward [B,T,N], valid [B,T,N]) with entry (t, n) = reward of frame t+n."""
    r_BT = frame_rewards(batch, task_B)
    return future_stack(r_BT, num_offsets), same_episode_mask(batch['is_first'], num_offsets)


def majority_accuracy(actions: dict[str, Array], valid: Array) -> Array:
    """Accuracy of always answering the most frequent (joint) action among the valid targets.

    The baseline that BC accuracy is read against: 0.06 is chance over Craftax's 17 actions, but
    a policy that always plays the commonest action of these very targets scores this (an
    optimistic baseline: it picks the majority with the labels in hand). Counts come from a
    pairwise-equality matrix over the targets, so any action space works without a class count;
    it is M x M, so it belongs on evaluation batches, not in the train step.
    actions: {component: [M] or [M, n]}; valid: bool [M].
    """
    same_MM = jnp.ones((valid.shape[0],) * 2, bool)
    for a in actions.values():
        a2 = jnp.reshape(a, (a.shape[0], -1))
        same_MM &= jnp.all(a2[:, None, :] == a2[None, :, :], axis=-1)
    counts_M = jnp.sum(same_MM & valid[None, :], axis=1)
    best = jnp.max(jnp.where(valid, counts_M, 0))
    return best / jnp.maximum(jnp.sum(valid), 1)


def batch_majority_accuracy(batch: dict, rows_B: Array | None = None) -> Array:
    """`majority_accuracy` over the offset-0 BC targets of a batch (the targets BC accuracy at
    offset 0 is scored on), over every row or the rows selected by `rows_B` (bool [B])."""
    actions, valid = policy_targets(batch, 1)
    valid_BT = valid[:, :, 0]
    if rows_B is not None:
        valid_BT &= rows_B.astype(bool)[:, None]
    flat = {k: jnp.reshape(v[:, :, 0], (-1, *v.shape[3:])) for k, v in actions.items()}
    return majority_accuracy(flat, jnp.reshape(valid_BT, (-1,)))


def _masked_offset_mean(nll_BTN: Array, valid_BTN: Array) -> tuple[Array, Array]:
    """(sum over offsets of the per-offset mean over valid (b, t), per-offset means [N])."""
    m = valid_BTN.astype(jnp.float32)
    per_n = jnp.sum(jnp.where(valid_BTN, nll_BTN, 0.0), axis=(0, 1)) / jnp.maximum(
        jnp.sum(m, axis=(0, 1)), 1.0
    )
    return jnp.sum(per_n), per_n


def agent_loss_terms(
    dist: ActionDist,
    reward_dist: TwoHot,
    policy_BTN: dict[str, Array],
    reward_logits_BTN: Array,
    batch: dict,
    task_B: Array,
    bc_rows_B: Array,
    reward_rows_B: Array,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """PAPER 9.2, Eq. 9: -sum_n ln p(a_{t+n} | h_t) and -sum_n ln p(r_{t+n} | h_t).

    Each offset's negative log-likelihood is averaged over its valid (b, t) entries and the
    offsets are summed, as in Eq. 9. `bc_rows_B` / `reward_rows_B` select the rows each term
    uses (PAPER 9.3: behavior cloning on task-relevant windows only). Returns (losses with
    keys 'bc' and 'reward', metrics).
    """
    n = reward_logits_BTN.shape[2]
    actions, a_valid = policy_targets(batch, n)
    a_valid &= bc_rows_B.astype(bool)[:, None, None]
    bc_nll = -dist.log_prob(policy_BTN, actions)
    bc, bc_per_n = _masked_offset_mean(bc_nll, a_valid)

    rewards, r_valid = reward_targets(batch, task_B, n)
    r_valid &= reward_rows_B.astype(bool)[:, None, None]
    r_nll = -reward_dist.log_prob(reward_logits_BTN, rewards)
    rew, rew_per_n = _masked_offset_mean(r_nll, r_valid)

    metrics = {
        'agent/bc_nll_offset0': bc_per_n[0],
        'agent/bc_nll_last_offset': bc_per_n[-1],
        'agent/reward_nll_offset0': rew_per_n[0],
        'agent/bc_targets': jnp.sum(a_valid[:, :, 0]).astype(jnp.float32),
    }
    modes = dist.mode({k: v[:, :, 0] for k, v in policy_BTN.items()})
    hits = [
        jnp.all(
            jnp.reshape(
                modes[k] == actions[k][:, :, 0].astype(modes[k].dtype), modes[k].shape[:2] + (-1,)
            ),
            axis=-1,
        )
        for k in modes
    ]
    hit_BT = jnp.all(jnp.stack(hits), axis=0)
    v0 = a_valid[:, :, 0]
    metrics['agent/bc_accuracy_offset0'] = jnp.sum(hit_BT & v0) / jnp.maximum(jnp.sum(v0), 1)
    pred_r = reward_dist.mean(reward_logits_BTN[:, :, 0])
    r0 = r_valid[:, :, 0]
    metrics['agent/reward_abs_err_offset0'] = jnp.sum(
        jnp.where(r0, jnp.abs(pred_r - rewards[:, :, 0]), 0.0)
    ) / jnp.maximum(jnp.sum(r0), 1)
    return {'bc': bc, 'reward': rew}, metrics
