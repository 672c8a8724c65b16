"""Reinforcement-learning math for imagination training: lambda-returns, advantages, PMPO.

PAPER 10.2 (value targets, standard Dreamer indexing; see the Eq. 10 typo in PAPER 2) and
PAPER 10.3 (PMPO policy loss with a reverse KL to the behavior-cloning prior). Imagination
rollouts live elsewhere; this module is only the equations.

Dimension keys: B batch (imagined trajectories), T time steps of a rollout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamer4_jax.agent import future_stack

Array = jax.Array


def _check_bt(**arrays: Array) -> None:
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f'Expected arrays of one shape [B, T], got {shapes}.')


def lambda_returns(
    rewards: Array, values: Array, continues: Array, gamma: float, lam: float
) -> Array:
    """TD(lambda) returns, [B, T] inputs -> [B, T-1].

    `rewards[:, t]` and `continues[:, t]` belong to the transition t -> t+1 (DESIGN 4):
      R_t = rewards_t + gamma * continues_t * ((1 - lam) * values_{t+1} + lam * R_{t+1}),
    with R_{T-1} = values_{T-1} as the bootstrap; rewards/continues at T-1 are unused.
    """
    _check_bt(rewards=rewards, values=values, continues=continues)
    if rewards.shape[1] < 2:
        raise ValueError(f'lambda_returns needs T >= 2 steps, got shape {rewards.shape}.')
    rewards_TB = jnp.swapaxes(rewards, 0, 1)[:-1].astype(jnp.float32)
    cont_TB = jnp.swapaxes(continues, 0, 1)[:-1].astype(jnp.float32)
    values_TB = jnp.swapaxes(values, 0, 1).astype(jnp.float32)
    next_values_TB = values_TB[1:]

    def step(next_ret_B, inputs):
        r_B, c_B, v_next_B = inputs
        ret_B = r_B + gamma * c_B * ((1.0 - lam) * v_next_B + lam * next_ret_B)
        return ret_B, ret_B

    _, returns_TB = jax.lax.scan(
        step, values_TB[-1], (rewards_TB, cont_TB, next_values_TB), reverse=True
    )
    return jnp.swapaxes(returns_TB, 0, 1)


def advantages(returns: Array, values: Array) -> Array:
    """A_t = sg(R_t - v_t), [B, T-1] returns and [B, T] values -> [B, T-1] (PAPER 10.3).

    Stop-gradient: the policy loss must not train the value head through the advantage.
    """
    if values.shape[1] != returns.shape[1] + 1 or values.shape[0] != returns.shape[0]:
        raise ValueError(
            f'advantages expects returns [B, T-1] and values [B, T]; got {returns.shape} and '
            f'{values.shape}.'
        )
    return jax.lax.stop_gradient(returns - values[:, :-1])


def alive_mask(continues: Array) -> Array:
    """[B, T] weight 1 for steps reached before any termination, else 0.

    Step t is valid iff continues_j = 1 for every j < t (continues_t ends transition t -> t+1),
    so step 0 is always valid. Use it as the `mask` of `pmpo_loss` and of the value loss.
    """
    c = continues.astype(jnp.float32)
    ones = jnp.ones_like(c[:, :1])
    return jnp.cumprod(jnp.concatenate([ones, c[:, :-1]], axis=1), axis=1)


def pmpo_loss_and_metrics(
    logp: Array,
    advantages: Array,
    kl: Array,
    alpha: float,
    beta: float,
    *,
    mask: Array | None = None,
    deadzone: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """PMPO loss (PAPER 10.3, Eq. 11) and diagnostics; see `pmpo_loss`."""
    _check_bt(logp=logp, advantages=advantages, kl=kl)
    if deadzone < 0:
        raise ValueError(f'deadzone={deadzone} must be >= 0')
    valid = jnp.ones_like(logp, jnp.float32) if mask is None else mask.astype(jnp.float32)
    adv = jax.lax.stop_gradient(advantages)
    pos = jnp.where(adv >= deadzone, valid, 0.0)
    neg = jnp.where(adv < -deadzone, valid, 0.0)
    n_pos, n_neg, n_all = pos.sum(), neg.sum(), valid.sum()
    # An empty set contributes 0 (divide by max(count, 1) with a zero numerator). `where`, not a
    # product, so masked steps may hold anything (even -inf or NaN) without leaking in.
    mean_pos = jnp.sum(jnp.where(pos > 0, logp, 0.0)) / jnp.maximum(n_pos, 1.0)
    mean_neg = jnp.sum(jnp.where(neg > 0, logp, 0.0)) / jnp.maximum(n_neg, 1.0)
    mean_kl = jnp.sum(jnp.where(valid > 0, kl, 0.0)) / jnp.maximum(n_all, 1.0)
    loss = (1.0 - alpha) * mean_neg - alpha * mean_pos + beta * mean_kl
    metrics = {
        'pmpo/loss': loss,
        'pmpo/frac_positive': n_pos / jnp.maximum(n_all, 1.0),
        'pmpo/frac_negative': n_neg / jnp.maximum(n_all, 1.0),
        'pmpo/logp_positive': mean_pos,
        'pmpo/logp_negative': mean_neg,
        'pmpo/kl': mean_kl,
    }
    return loss, metrics


def pmpo_loss(
    logp: Array,
    advantages: Array,
    kl: Array,
    alpha: float,
    beta: float,
    *,
    mask: Array | None = None,
    deadzone: float = 0.0,
) -> Array:
    """Scalar PMPO policy loss (PAPER 10.3, Eq. 11); all inputs [B, T].

      L = (1 - alpha)/|D-| sum_{D-} logp - alpha/|D+| sum_{D+} logp + beta/N sum_i kl_i
    with D+ = {A >= 0}, D- = {A < 0} over valid steps, N = number of valid steps; each sign set is
    averaged separately and an empty set contributes 0. Only the sign of the advantage is used and
    it is stop-gradient; `kl` = KL(pi || pi_prior) per state. `mask` (optional, [B, T]) drops
    invalid steps (e.g. after termination) from every set and from N.
    `deadzone` delta >= 0 ([U], not in the paper; 0 is Eq. 11): D+ = {A >= delta} and
    D- = {A < -delta}, so states whose advantage is within delta of 0 join neither set (the KL
    still counts them in N).
    """
    return pmpo_loss_and_metrics(logp, advantages, kl, alpha, beta, mask=mask, deadzone=deadzone)[0]


CONTINUATIONS = ('ones', 'until_reward')


def imagined_continues(reward_BS: Array, continuation: str = 'ones') -> Array:
    """Continuation flags [B, S] of the transitions s -> s+1 (entry S-1 unused).

    'ones': c = 1 throughout (PAPER 10.2 [U]: no termination head; Minecraft's task events
    repeat, mine_log 10 times in the ladder). 'until_reward': c_s = 1 - clip(r_{s+1}, 0, 1), the
    chance that the task is still undone at state s+1, for tasks that pay once (a Craftax
    achievement unlocks once per episode, and the ladder moves to the next task when it does):
    the return of a rollout is then at most one task success, not the sum of every step the
    reward head pays for. Not in the paper.
    """
    b, s = reward_BS.shape
    if continuation == 'ones':
        return jnp.ones((b, s), jnp.float32)
    if continuation == 'until_reward':
        done_BS = jnp.clip(jax.lax.stop_gradient(reward_BS[:, 1:]).astype(jnp.float32), 0.0, 1.0)
        return jnp.concatenate([1.0 - done_BS, jnp.ones((b, 1), jnp.float32)], axis=1)
    raise ValueError(f'continuation must be one of {CONTINUATIONS}, got {continuation!r}')


REWARD_CREDITS = ('sum', 'running_max')


def credited_rewards(reward_BS: Array, credit: str = 'sum') -> Array:
    """The per-state rewards [B, S] that the lambda-returns sum (entry 0, a context frame's, is
    kept: it belongs to no imagined action).

    'sum': the reward head as it is (PAPER 10.2). 'running_max' ([U], not in the paper): state
    s >= 1 earns only what raises the rollout's best reward so far, M_s - M_{s-1} with
    M_s = max(0, r_1, ..., r_s) and M_0 = 0, so a rollout's undiscounted return is its single
    best reward. For a task that pays once, whose success the world model does not draw (a
    craft), the reward head's pay for a press is a chance the next frame cannot settle; summed,
    sixteen presses at 0.08 buy what one real craft does, while in the game a refused press stays
    refused however often it is repeated. Crediting the best chance only takes that lottery away.
    """
    if credit == 'sum':
        return reward_BS
    if credit == 'running_max':
        best_BS = jax.lax.cummax(jnp.maximum(reward_BS[:, 1:], 0.0), axis=1)
        prev_BS = jnp.concatenate([jnp.zeros_like(best_BS[:, :1]), best_BS[:, :-1]], axis=1)
        return jnp.concatenate([reward_BS[:, :1], best_BS - prev_BS], axis=1)
    raise ValueError(f'reward credit must be one of {REWARD_CREDITS}, got {credit!r}')


def imagined_returns(
    reward_BS: Array, value_BS: Array, gamma: float, lam: float, continuation: str = 'ones'
) -> Array:
    """Lambda-returns [B, S-1] of states 0..S-2 from per-state rewards and values [B, S].

    reward_BS[:, s] is the reward that arrived WITH state s (the reward head at h_s), so the
    transition s -> s+1 of `lambda_returns` earns reward_BS[:, s + 1]; the reward of state 0 (a
    context frame) belongs to no imagined action. Continuation flags: `imagined_continues`.
    """
    b, s = reward_BS.shape
    transition_BS = jnp.concatenate([reward_BS[:, 1:], jnp.zeros((b, 1))], axis=1)
    return lambda_returns(
        transition_BS,
        jax.lax.stop_gradient(value_BS),
        imagined_continues(reward_BS, continuation),
        gamma,
        lam,
    )


def imagination_loss_terms(
    logp_BS: Array,
    kl_BS: Array,
    value_BS: Array,
    value_nll_fn,
    reward_BS: Array,
    *,
    gamma: float,
    lam: float,
    alpha: float,
    beta: float,
    num_value_offsets: int,
    continuation: str = 'ones',
    reward_scale: float = 1.0,
    deadzone: float = 0.0,
    reward_credit: str = 'sum',
    reward_floor: float = 0.0,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Named loss terms of one batch of imagined trajectories (PAPER 10.2-10.3).

    logp_BS / kl_BS: log pi(a_s | h_s) of the sampled actions and KL(pi || pi_prior) per state;
    value_BS: the value head's mean (its gradient is not used: returns and advantages are
    stop-gradient); reward_BS: the reward head per state. value_nll_fn(target_BHN) -> [B, H, N]
    negative log-likelihood of the value head's offset-n output at state t for R_{t+n}
    (multi-token prediction, like the other heads); continuation: see `imagined_continues`.

    `reward_scale` multiplies the rewards ([U]; 0 is a null control: no reward, so every
    advantage is value noise); `deadzone`: `pmpo_loss`'s; `reward_floor` ([U], 0: off): a reward
    below it counts 0, applied before the scale (PMPO uses only the advantage's sign, so a small
    reward the head pays wherever it is unsure, a refused press say, pushes as hard as a real
    success); `reward_credit`: `credited_rewards`'s, applied last.

    Returns ({'policy': PMPO loss, 'value': summed per-offset value NLL}, metrics); the caller
    weights and adds the terms.
    """
    b, length = reward_BS.shape
    horizon = length - 1
    if reward_floor > 0:
        reward_BS = jnp.where(reward_BS < reward_floor, 0.0, reward_BS)
    reward_BS = credited_rewards(reward_scale * reward_BS, reward_credit)
    returns = imagined_returns(reward_BS, value_BS, gamma, lam, continuation)
    adv = advantages(returns, value_BS)
    pmpo, metrics = pmpo_loss_and_metrics(
        logp_BS[:, :horizon], adv, kl_BS[:, :horizon], alpha, beta, deadzone=deadzone
    )
    target_BHN = future_stack(returns, num_value_offsets)
    valid_BHN = future_stack(jnp.ones((b, horizon), bool), num_value_offsets)
    nll_BHN = value_nll_fn(jax.lax.stop_gradient(target_BHN))
    per_n = jnp.sum(jnp.where(valid_BHN, nll_BHN, 0.0), axis=(0, 1)) / jnp.maximum(
        jnp.sum(valid_BHN, axis=(0, 1)), 1
    )
    metrics.update(
        {
            'imagine/return': jnp.mean(returns[:, 0]),
            'imagine/value': jnp.mean(value_BS),
            'imagine/advantage_abs': jnp.mean(jnp.abs(adv)),
            'imagine/advantage_abs_median': jnp.median(jnp.abs(adv)),
            'imagine/continue': jnp.mean(imagined_continues(reward_BS, continuation)[:, :horizon]),
        }
    )
    return {'policy': pmpo, 'value': jnp.sum(per_n)}, metrics
