"""Closed-loop evaluation: agents play the REAL Craftax-Classic environment (PAPER 12.1).

Every step of every episode: the env renders frame t; the frozen tokenizer encodes it with its
encoder's KV cache (causal in time); the dynamics transformer commits the frame block (the
action that led to it, the frame at the context signal level, agent tokens with the prompted
task) with its own KV cache, exactly as imagination commits generated frames
(imagination.observe); the policy head samples a_t from h_t; the env takes a_t. Success rates
count the achievements the ENV reports unlocked; nothing here reads a world-model prediction.

Modes (PAPER 11, Tables 6-7):
  ladder  the prompt walks a task ladder and advances as soon as the current task (or any later
          one already done) is unlocked; every achievement of the episode counts.
  single  one prompted task for the whole episode, once per task in the list; the table holds
          the success rate of the prompted task.
Episodes run in lockstep batches inside one jitted while-loop (env step + agent step). Every
agent meets the same worlds (same reset keys): a paired comparison with less variance.

Dimension keys: E parallel episodes, K achievements, N latents, C channels, P patches.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamer4_jax import pretrained
from dreamer4_jax.actions import craftax_action_space
from dreamer4_jax.distributions import ActionDist
from dreamer4_jax.envs import craftax
from dreamer4_jax.eval.success_table import mean_interval, rates_from_unlocks, write_tables
from dreamer4_jax.generation import new_cache
from dreamer4_jax.imagination import WorldModel, observe
from dreamer4_jax.ladder import ladder_task
from dreamer4_jax.model_configs import closed_loop_config_dict
from dreamer4_jax.nn import KVCache
from dreamer4_jax.tokenizer import Tokenizer, new_encoder_cache

Array = jax.Array


def encode_step(
    tok: Tokenizer, params: Any, frames_E1HWC: Array, cache: KVCache
) -> tuple[Array, KVCache]:
    """`Tokenizer.encode_step` of one new frame per row (frames in [0, 1])."""
    return tok.apply({'params': params}, frames_E1HWC, cache, method=Tokenizer.encode_step)


def encoder_cache(tok: Tokenizer, batch: int, context: int) -> KVCache:
    """Encoder cache holding `context` - 1 past frames (its window if the config has one)."""
    return new_encoder_cache(tok.config, batch, context)


@dataclasses.dataclass(frozen=True)
class AgentPolicy:
    """A trained agent (phase 2 or 3) as an env policy; hashable, so jit can take it static.

    params: {'tokenizer': ..., 'dynamics': ..., 'agent': ...} passed at call time.
    context: frames of memory for caches without a window (tokenizer: its training length).
    """

    wm: WorldModel
    tokenizer: Tokenizer
    context: int = 16
    sample: bool = True

    @property
    def dist(self) -> ActionDist:
        return self.wm.heads.dist

    def init(self, num_envs: int) -> tuple:
        """(encoder cache, dynamics cache, previous action [E, 1], has previous [E, 1])."""
        dyn_cache = new_cache(self.wm.dynamics, num_envs, self.context - 1)
        prev = jax.tree.map(lambda a: a[:, None], dist_zero_actions(self.dist, num_envs))
        return (
            encoder_cache(self.tokenizer, num_envs, self.context),
            dyn_cache,
            prev,
            jnp.zeros((num_envs, 1), bool),
        )

    def policy_params(
        self, params: Any, state: tuple, frames_EHWC: Array, task_E: Array, rng: Array
    ) -> tuple[dict[str, Array], tuple]:
        """Encode and commit frame t; returns (offset-0 policy parameters [E, 1, ...], caches)."""
        tok_cache, dyn_cache, prev_E1, has_E1 = state
        x = frames_EHWC[:, None].astype(jnp.float32) / 255.0
        z_E1NC, tok_cache = encode_step(self.tokenizer, params['tokenizer'], x, tok_cache)
        # Block t carries the action that led to frame t (none before the first frame).
        h, dyn_cache = observe(
            self.wm, params, z_E1NC, prev_E1, has_E1, task_E[:, None], dyn_cache, rng
        )
        return self.wm.policy(params, h), (tok_cache, dyn_cache)

    def act(
        self, params: Any, state: tuple, frames_EHWC: Array, task_E: Array, rng: Array
    ) -> tuple[dict[str, Array], tuple]:
        """Sample (or take the mode of) a_t after observing frame t; frames are uint8."""
        k_obs, k_act = jax.random.split(rng)
        pi, (tok_cache, dyn_cache) = self.policy_params(params, state, frames_EHWC, task_E, k_obs)
        act_E1 = self.dist.sample(k_act, pi) if self.sample else self.dist.mode(pi)
        return act_E1, (tok_cache, dyn_cache, act_E1, jnp.ones_like(state[3]))


@dataclasses.dataclass(frozen=True)
class RandomPolicy:
    """Uniform random actions (the floor of Table 7)."""

    dist: ActionDist

    def init(self, num_envs: int) -> tuple:
        return ()

    def act(
        self, params: Any, state: tuple, frames_EHWC: Array, task_E: Array, rng: Array
    ) -> tuple[dict[str, Array], tuple]:
        logits = {
            n: jnp.zeros((frames_EHWC.shape[0], 1, s)) for n, s in self.dist.param_sizes().items()
        }
        return self.dist.sample(rng, logits), state


def dist_zero_actions(dist: ActionDist, batch: int) -> dict[str, Array]:
    """Placeholder actions (read by nobody: has_action is False for them)."""
    return {
        n: (
            jnp.zeros((batch,), jnp.int32)
            if k == 'categorical'
            else jnp.zeros((batch, s), jnp.int32 if k == 'binary' else jnp.float32)
        )
        for n, k, s in dist.components
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _play_batch(env, policy, num_envs: int, max_steps: int, params, ladder_L: Array, rng: Array):
    """One lockstep batch of real episodes (env and policy are static: hashable objects)."""
    k_reset, k_loop = jax.random.split(rng)
    env_state, ts = env.reset(k_reset, num_envs)
    k = ts.unlocked.shape[-1]
    num_actions = policy.dist.components[0][2]
    # The achievement only each action unlocks (-1: none).
    if len(env.action_achievement) != num_actions:
        raise ValueError(
            f'env.action_achievement maps {len(env.action_achievement)} actions; the policy has '
            f'{num_actions}'
        )
    ach_A = jnp.asarray(env.action_achievement, jnp.int32)
    carry = dict(
        env=env_state,
        ts=ts,
        pol=policy.init(num_envs),
        t=jnp.zeros((), jnp.int32),
        unlocked=jnp.zeros((num_envs, k), bool),
        length=jnp.zeros(num_envs, jnp.int32),
        ret=jnp.zeros(num_envs, jnp.float32),
        death=jnp.full(num_envs, -1, jnp.int32),
        presses=jnp.zeros((num_envs, num_actions), jnp.int32),
        tries=jnp.zeros((num_envs, num_actions), jnp.int32),
    )

    def cond(c):
        return (c['t'] < max_steps - 1) & ~jnp.all(c['ts'].is_last)

    def body(c):
        k_act, k_env = jax.random.split(jax.random.fold_in(k_loop, c['t']))
        task = ladder_task(ladder_L, c['unlocked'])
        act_E1, pol = policy.act(params, c['pol'], c['ts'].frame, task, k_act)
        alive = ~c['ts'].is_last
        a_E = env_actions(policy, act_E1)
        env_state, ts = env.step(c['env'], a_E, k_env)
        # A try: an action pressed while the achievement only it unlocks is still locked; every
        # try but the one that unlocks it was refused by the game.
        ach_E = ach_A[a_E]
        locked_E = ~jnp.take_along_axis(c['unlocked'], jnp.maximum(ach_E, 0)[:, None], 1)[:, 0]
        pressed_EA = jax.nn.one_hot(a_E, num_actions, dtype=jnp.int32) * alive[:, None]
        tried_E = (ach_E >= 0) & locked_E
        # Absorbing ends: a finished episode's later steps add nothing.
        return dict(
            env=env_state,
            ts=ts,
            pol=pol,
            t=c['t'] + 1,
            unlocked=c['unlocked'] | (ts.unlocked & alive[:, None]),
            length=c['length'] + alive.astype(jnp.int32),
            ret=c['ret'] + jnp.where(alive, ts.reward, 0.0),
            # How the episode ended, read from the state it died in (-1: it did not die).
            death=jnp.where(alive & ts.is_terminal, env.death_cause(env_state), c['death']),
            presses=c['presses'] + pressed_EA,
            tries=c['tries'] + pressed_EA * tried_E[:, None],
        )

    c = jax.lax.while_loop(cond, body, carry)
    return {
        'unlocked': c['unlocked'],
        'length': c['length'],
        'return': c['ret'],
        'final_task': ladder_task(ladder_L, c['unlocked']),
        'death_cause': c['death'],
        'presses': c['presses'],
        'tries': c['tries'],
    }


def env_actions(policy, act_E1: dict[str, Array]) -> Array:
    """Policy action dict -> the env's integer action (one categorical component: Craftax)."""
    comps = policy.dist.components
    if len(comps) != 1 or comps[0][1] != 'categorical':
        raise ValueError(f'the Craftax env takes one categorical action; the policy has {comps}')
    return act_E1[comps[0][0]][:, 0]


def play(
    env,
    policy,
    params: Any,
    rng: Array,
    episodes: int,
    num_envs: int,
    tasks_L: Sequence[int],
    max_steps: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """`episodes` real episodes, `num_envs` at a time in lockstep; per-episode results.

    tasks_L: the task ladder (single-task mode: one task). progress(done, episodes), if given,
    is called after every batch of `num_envs`. Returns {'unlocked': bool [E, K],
    'length': int [E], 'return': float [E], 'final_task': int [E], 'death_cause': int [E]}
    (an index into the env's DEATH_CAUSES, -1 where the episode did not end in death),
    'presses': int [E, A] (each action's count over the episode) and 'tries': int [E, A] (the
    presses of an action while the achievement only it unlocks, `env.action_achievement`, was
    still locked: all but the unlocking one were refused by the game; 0 for other actions).
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f'episodes={episodes} and num_envs={num_envs} must be >= 1')
    ladder = jnp.asarray(tasks_L, jnp.int32)
    num_envs = min(num_envs, episodes)
    parts = []
    for i in range(-(-episodes // num_envs)):
        out = _play_batch(
            env, policy, num_envs, max_steps, params, ladder, jax.random.fold_in(rng, i)
        )
        parts.append(jax.tree.map(np.asarray, out))
        if progress is not None:
            progress(min((i + 1) * num_envs, episodes), episodes)
    return {k: np.concatenate([p[k] for p in parts])[:episodes] for k in parts[0]}


def load_agent_policy(workdir: str, sample: bool = True) -> tuple[AgentPolicy, dict]:
    """(policy, params) of a finished agent (phase 2) or imagination (phase 3) run."""
    run = pretrained.load(workdir)
    if run.phase not in ('agent', 'imagination'):
        raise ValueError(
            f'{workdir} holds a {run.phase!r} run; closed-loop evaluation needs an '
            "'agent' or 'imagination' run (a policy head)."
        )
    agent_run = run.earlier() if run.phase == 'imagination' else run
    tok_run = agent_run.earlier().earlier()
    params = run.params()
    # Caches without a time window keep as many frames as the agent's training windows had:
    # its latents came from encoding windows of that length.
    tok = Tokenizer(tok_run.tokenizer_config())
    policy = AgentPolicy(run.world_model(), tok, int(agent_run.config.data.window_length), sample)
    return policy, {
        'tokenizer': tok_run.params(),
        'dynamics': params['dynamics'],
        'agent': params['agent'],
    }


def evaluate_agents(
    agents: Mapping[str, str],
    out_dir: str,
    cfg: ml_collections.ConfigDict | None = None,
    *,
    env=None,
    log: Callable[[str], None] | None = functools.partial(print, flush=True),
) -> dict:
    """Plays every agent in the real env; writes success.json / success.md to `out_dir`.

    log (None: silent) gets one line per batch of `cfg.num_envs` episodes: how many of each
    agent's episodes are done and the seconds since its first.

    agents: {column name: workdir of an agent or imagination run, or 'random'}, e.g.
    {'random': 'random', 'BC': bc_dir, 'WM+BC': agent_dir, 'Dreamer 4': imagination_dir}
    (PAPER 12.1 Table 7 columns). cfg: closed_loop_config_dict(). Returns the results dict.
    """
    cfg = cfg or closed_loop_config_dict()
    names = craftax.ACHIEVEMENT_NAMES
    env = env or craftax.CraftaxEnv(max_steps=int(cfg.max_steps))
    ladder = [craftax.achievement_index(n) for n in _names(cfg.ladder)]
    singles = [craftax.achievement_index(n) for n in _names(cfg.single_tasks)]
    modes = _names(cfg.modes)
    unknown = set(modes) - {'ladder', 'single'}
    if unknown or not agents:
        raise ValueError(
            f"closed-loop modes must be 'ladder' and/or 'single' (got {modes}) and "
            f'agents must be non-empty (got {list(agents)})'
        )
    info = {'episodes': int(cfg.episodes), 'max_steps': int(cfg.max_steps)}
    results = {
        m: {
            'rows': list(names) if m == 'ladder' else [names[i] for i in singles],
            'rates': {},
            'info': dict(info),
            'episode_stats': {},
        }
        for m in modes
    }
    rng = jax.random.key(int(cfg.seed))
    for column, where in agents.items():
        if where == 'random':
            policy = RandomPolicy(ActionDist(craftax_action_space()))
            params = {}
        else:
            policy, params = load_agent_policy(where, bool(cfg.sample))
            if policy.wm.heads.config.num_tasks != len(names):
                raise ValueError(
                    f'agent {column!r} ({where}) knows {policy.wm.heads.config.num_tasks} '
                    f'tasks; Craftax-Classic prompts need {len(names)}.'
                )

        def run(tasks, what, policy=policy, params=params):
            start = time.perf_counter()

            def progress(done, total):
                seconds = time.perf_counter() - start
                log(f'[closed-loop] {what}: {done}/{total} episodes ({seconds:.0f} s)')

            return play(
                env,
                policy,
                params,
                rng,
                int(cfg.episodes),
                int(cfg.num_envs),
                tasks,
                int(cfg.max_steps),
                None if log is None else progress,
            )

        if 'ladder' in modes:
            out = run(ladder, f'{column}, ladder')
            results['ladder']['rates'][column] = rates_from_unlocks(out['unlocked'], names)
            results['ladder']['episode_stats'][column] = _stats(out, craftax.DEATH_CAUSES, ladder)
            results['ladder'].setdefault('tries', {})[column] = tries_stats(
                out, env.action_achievement, craftax.ACTION_NAMES
            )
        if 'single' in modes:
            rates = {}
            for task in singles:
                # A ladder of one task, padded to the ladder's length: one compilation serves
                # both modes (the prompt stays on the last rung).
                out = run([task] * len(ladder), f'{column}, {names[task]}')
                rates[names[task]] = rates_from_unlocks(out['unlocked'], names)[names[task]]
            results['single']['rates'][column] = rates
    write_tables(out_dir, results)
    return results


def _names(text: str) -> list[str]:
    return [n.strip() for n in str(text).split(',') if n.strip()]


def _stats(out: dict, death_causes: Sequence[str], ladder: Sequence[int]) -> dict:
    """Mean length and return (95 % interval) of an agent's episodes; the ladder's tasks
    unlocked per episode (95 % interval), what the prompts ask for, where the return also
    counts unprompted achievements and health; and how the episodes ended: the share that died
    (`died`) and the share per death cause (`died/<cause>`)."""
    mean, low, high = mean_interval(out['return'])
    rung_mean, rung_low, rung_high = mean_interval(
        np.sum(np.asarray(out['unlocked'])[:, list(ladder)], axis=1).astype(np.float64)
    )
    cause = np.asarray(out['death_cause'])
    return {
        'mean_length': float(np.mean(out['length'])),
        'mean_return': mean,
        'return_ci_low': low,
        'return_ci_high': high,
        'ladder_unlocks': rung_mean,
        'ladder_unlocks_ci_low': rung_low,
        'ladder_unlocks_ci_high': rung_high,
        'died': float(np.mean(cause >= 0)),
        **{f'died/{name}': float(np.mean(cause == i)) for i, name in enumerate(death_causes)},
    }


def tries_stats(out: dict, action_achievement: Sequence[int], action_names: Sequence[str]) -> dict:
    """Per action that alone unlocks an achievement (action_achievement[a] >= 0): its presses
    and tries (presses while that achievement was still locked) per episode, the episodes it
    succeeded in, and the share of tries the game refused. A policy that presses `make_*` where
    the game lacks the materials or a table shows here, not in the success rates."""
    presses, tries = np.asarray(out['presses']), np.asarray(out['tries'])
    unlocked = np.asarray(out['unlocked'], bool)
    stats = {}
    for a, k in enumerate(action_achievement):
        if k < 0:
            continue
        total, wins = int(tries[:, a].sum()), int(unlocked[:, k].sum())
        stats[action_names[a]] = {
            'presses_per_episode': float(presses[:, a].mean()),
            'tries_per_episode': float(tries[:, a].mean()),
            'successes': wins,
            'refused': (total - wins) / total if total else 0.0,
        }
    return stats
