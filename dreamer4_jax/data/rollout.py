"""Jitted, vmapped Craftax-Classic rollouts that emit dataset rows, assembled into episodes on host.

Dimension keys: N parallel envs, K steps per jitted chunk, L episode length, A achievements (22).

Row t of an episode (DESIGN.md section 3; the one place this alignment is decided for Craftax):
  image[t]        frame t
  action[t]       the action taken AFTER observing frame t (placeholder -1 at the last frame, where
                  no action was taken: has_action[t] = False there)
  reward[t]       env reward of the transition INTO frame t (reward[0] = 0), i.e. for action[t-1]
  task_event[t]   task events of that same transition (task reward at t): the achievements it
                  first unlocks (task_events='first') or every achievement event it contains,
                  repeats included (task_events='every', as VPT counts its events;
                  CraftaxEnv.events_single)
  is_first / is_last / is_terminal: episode start, end (death or truncation at max_steps), death.

Determinism: episode e starts from pool world e % pool_size and draws its env and policy keys
from fold_in(seed keys, e) and the step index, so its content does not depend on which slot or
chunk ran it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax.data import policies
from dreamer4_jax.data.config import TASK_EVENTS
from dreamer4_jax.envs.craftax import CraftaxEnv, EnvState, ResetPool, TimeStep, strong_types

Episode = dict[str, Any]  # numpy arrays with leading dim L (see module doc) plus metadata


class _Carry(NamedTuple):
    state: EnvState
    ts: TimeStep
    pstate: policies.PolicyState
    events: jax.Array  # bool [N, A], task events of the transition into ts.frame (module doc)
    episode: jax.Array  # int32 [N], -1 when the slot is idle
    next_episode: jax.Array  # int32 scalar, next episode id to start


def rollout_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(world, env, policy) base keys; world e = generate(fold_in(world, e)), and step t of
    episode e uses fold_in(fold_in(env, e), t) (policy likewise)."""
    key_world, key_env, key_pol = jax.random.split(jax.random.PRNGKey(seed), 3)
    return key_world, key_env, key_pol


def episode_step_key(key: jax.Array, episode: jax.Array, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(key, episode), step)


def assign_policies(num_episodes: int, mix: Mapping[str, float], seed: int) -> np.ndarray:
    """int32 [num_episodes] policy ids: counts proportional to `mix`, order seeded-shuffled."""
    unknown = sorted(set(mix) - set(policies.POLICY_NAMES))
    if unknown:
        raise ValueError(
            f'policy_mix has unknown policies {unknown}; known: {policies.POLICY_NAMES}'
        )
    weights = np.array([max(float(mix.get(n, 0.0)), 0.0) for n in policies.POLICY_NAMES])
    if weights.sum() <= 0:
        raise ValueError(f'policy_mix weights must have a positive sum, got {dict(mix)}')
    counts = np.floor(weights / weights.sum() * num_episodes).astype(int)
    # Hand the remaining episodes to the largest fractional parts.
    frac = weights / weights.sum() * num_episodes - counts
    counts[np.argsort(-frac)[: num_episodes - counts.sum()]] += 1
    ids = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    return np.random.default_rng(seed).permutation(ids).astype(np.int32)


def _make_chunk_fn(
    env: CraftaxEnv,
    num_steps: int,
    max_repeat: int,
    epsilon: float,
    used: tuple[int, ...],
    task_events: str = 'first',
    try_epsilon: float = 0.0,
):
    """Jitted: carry, pool, policy_of_episode, num_episodes, keys -> carry, rows [K, N, ...]."""

    def act_one(policy_id, state, pstate, key):
        kw = dict(max_repeat=max_repeat, epsilon=epsilon, used=used, try_epsilon=try_epsilon)
        return policies.act(policy_id, state, pstate, key, **kw)

    def step(carry: _Carry, pool: ResetPool, policy_of, num_episodes, keys):
        k_env, k_pol = keys
        ep, t = carry.episode, carry.state.timestep
        ep_safe = jnp.maximum(ep, 0)
        fold = jax.vmap(episode_step_key, (None, 0, 0))
        action, pstate = jax.vmap(act_one)(
            policy_of[ep_safe], carry.state, carry.pstate, fold(k_pol, ep_safe, t)
        )
        has_action = ~carry.ts.is_last
        row = dict(
            image=carry.ts.frame,
            action=jnp.where(has_action, action, -1),
            has_action=has_action,
            reward=carry.ts.reward,
            task_event=carry.events,
            is_first=carry.ts.is_first,
            is_last=carry.ts.is_last,
            is_terminal=carry.ts.is_terminal,
            episode=ep,
            step=t,
        )
        step_keys = fold(k_env, ep_safe, t)
        stepped_state, stepped_ts = jax.vmap(env.step_single)(carry.state, action, step_keys)
        if task_events == 'every':  # a second env step (same key) that only reads the events
            stepped_events = jax.vmap(env.events_single)(carry.state, action, step_keys)
        else:
            stepped_events = stepped_ts.unlocked
        # Slots whose episode just ended (or idle ones) take the next episode ids in slot order.
        restart = carry.ts.is_last | (ep < 0)
        new_ep = carry.next_episode + jnp.cumsum(restart) - 1
        new_ep = jnp.where(new_ep < num_episodes, new_ep, -1)
        pool_idx = jnp.maximum(new_ep, 0) % pool.frames.shape[0]
        reset_state, reset_ts = env.reset_from_pool(pool, pool_idx)

        def pick(a, b):
            m = restart.reshape(restart.shape + (1,) * (a.ndim - 1))
            return jnp.where(m, a, b)

        init_p = jax.vmap(lambda _: policies.init_policy_state())(ep)
        new_carry = _Carry(
            state=jax.tree.map(pick, reset_state, stepped_state),
            ts=jax.tree.map(pick, reset_ts, stepped_ts),
            events=pick(jnp.zeros_like(stepped_events), stepped_events),
            pstate=jax.tree.map(pick, init_p, pstate),
            episode=jnp.where(restart, new_ep, ep),
            next_episode=jnp.minimum(carry.next_episode + restart.sum(), num_episodes),
        )
        return strong_types(new_carry), row

    def chunk(carry, pool, policy_of, num_episodes, key_env, key_pol):
        def body(c, _):
            return step(c, pool, policy_of, num_episodes, (key_env, key_pol))

        return jax.lax.scan(body, carry, None, length=num_steps)

    return jax.jit(chunk)


class _EpisodeAssembler:
    """Groups chunk rows [K, N] by episode id, in time order, and emits finished episodes."""

    def __init__(self, on_episode: Callable[[Episode], None], policy_of: np.ndarray):
        self._parts: dict[int, list[dict[str, np.ndarray]]] = {}
        self._on_episode = on_episode
        self._policy_of = policy_of
        self.finished = 0
        self.frames = 0

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        rows = {k: np.swapaxes(v, 0, 1) for k, v in rows.items()}  # [N, K, ...]
        ep = rows['episode'].reshape(-1)
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in rows.items()}
        order = np.argsort(ep, kind='stable')  # keeps time order within each episode
        ep_sorted = ep[order]
        ids, starts = np.unique(ep_sorted, return_index=True)
        ends = np.append(starts[1:], len(ep_sorted))
        for e, s, t in zip(ids, starts, ends, strict=True):
            if e < 0:
                continue
            idx = order[s:t]
            part = {k: v[idx] for k, v in flat.items()}
            self._parts.setdefault(int(e), []).append(part)
            if part['is_last'][-1]:
                self._finish(int(e))

    def _finish(self, e: int) -> None:
        parts = self._parts.pop(e)
        ep = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if not (ep['is_first'][0] and ep['step'][0] == 0 and np.all(np.diff(ep['step']) == 1)):
            raise RuntimeError(f'episode {e} was assembled out of order (collector bug)')
        length = len(ep['step'])
        self.finished += 1
        self.frames += length
        self._on_episode(
            {
                'episode_id': e,
                'policy': policies.POLICY_NAMES[int(self._policy_of[e])],
                'image': ep['image'],
                'action': {'discrete': ep['action'].astype(np.int32)},
                'has_action': ep['has_action'],
                'reward': ep['reward'].astype(np.float32),
                'task_event': ep['task_event'],
                'is_first': ep['is_first'],
                'is_last': ep['is_last'],
                'is_terminal': ep['is_terminal'],
            }
        )


class CollectStats(NamedTuple):
    episodes: int
    frames: int
    seconds: float  # all of it: world pool, compilation, collection
    frames_per_second: float  # frames / seconds
    warmup_seconds: float  # world pool + compilation + first chunk
    steady_frames_per_second: float  # stored frames per second after the first chunk
    steady_slot_steps_per_second: float  # env slot steps (incl. idle slots) after it


def collect_episodes(
    *,
    num_episodes: int,
    max_steps: int,
    num_envs: int,
    seed: int,
    policy_of: np.ndarray,
    on_episode: Callable[[Episode], None],
    max_repeat: int = 4,
    epsilon: float = 0.05,
    pool_size: int = 1024,
    chunk_steps: int = 32,
    progress: bool = True,
    task_events: str = 'first',
    try_epsilon: float = 0.0,
) -> CollectStats:
    """Runs `num_episodes` Craftax episodes with `num_envs` parallel envs; calls `on_episode`
    once per finished episode (in completion order) with an Episode dict. `task_events` says
    which events become task rewards (module doc); the episodes are the same either way."""
    if len(policy_of) != num_episodes:
        raise ValueError(f'policy_of has {len(policy_of)} entries for {num_episodes} episodes')
    if task_events not in TASK_EVENTS:
        raise ValueError(f'task_events={task_events!r}; choose one of {TASK_EVENTS}')
    start = time.perf_counter()
    env = CraftaxEnv(max_steps=max_steps)
    num_envs = min(num_envs, num_episodes)
    key_world, key_env, key_pol = rollout_keys(seed)
    pool = env.make_pool(key_world, min(pool_size, num_episodes), chunk=min(num_envs, 64))
    used = tuple(sorted({int(p) for p in np.asarray(policy_of)}))
    chunk = _make_chunk_fn(env, chunk_steps, max_repeat, epsilon, used, task_events, try_epsilon)

    first = jnp.arange(num_envs, dtype=jnp.int32)
    state, ts = env.reset_from_pool(pool, first % pool.frames.shape[0])
    carry = strong_types(
        _Carry(
            state=state,
            ts=ts,
            events=jnp.zeros_like(ts.unlocked),
            pstate=jax.vmap(lambda _: policies.init_policy_state())(first),
            episode=first,
            next_episode=jnp.asarray(num_envs, jnp.int32),
        )
    )
    policy_of_dev = jnp.asarray(policy_of, jnp.int32)
    assembler = _EpisodeAssembler(on_episode, np.asarray(policy_of))
    bar = _progress_bar(num_episodes) if progress else None
    warmup, steady_rows, steady_chunks = None, 0, 0
    while assembler.finished < num_episodes:
        carry, rows = chunk(carry, pool, policy_of_dev, num_episodes, key_env, key_pol)
        rows = jax.device_get(rows)
        before = assembler.finished
        assembler.add(rows)
        now = time.perf_counter()
        if warmup is None:
            warmup = now - start
        else:
            steady_rows += int(np.sum(rows['episode'] >= 0))
            steady_chunks += 1
        fps = steady_rows / max(now - start - warmup, 1e-9)
        if bar is not None:
            bar.update(assembler.finished - before)
            bar.set_postfix(frames=assembler.frames, fps=f'{fps:.0f}')
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    return CollectStats(
        episodes=num_episodes,
        frames=assembler.frames,
        seconds=seconds,
        frames_per_second=assembler.frames / seconds,
        warmup_seconds=float(warmup),
        steady_frames_per_second=fps if steady_chunks else float('nan'),
        steady_slot_steps_per_second=(
            steady_chunks * chunk_steps * num_envs / (seconds - warmup)
            if steady_chunks
            else float('nan')
        ),
    )


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit='ep', desc='collecting', dynamic_ncols=True)
