"""Craftax-Classic with pixel frames: batched reset / step for data collection and closed-loop eval.

Dimension keys: N parallel environments, P reset-pool size, K achievements (22), H = W = 64.

The package's auto-reset env generates a new world on every step (about 12x slower), so we use the
no-auto-reset env and reset from a pool of pre-generated worlds. Frames are the env's 63x63x3
pixels in [0, 1], stored as uint8 and zero-padded by one row at the bottom and one column at the
right to 64x64 (so patch sizes 4, 8 and 16 divide them).

Time-step semantics (DESIGN.md section 3), shared with the dataset: a `TimeStep` holds the frame
of the current state, the reward and achievement unlocks of the transition INTO it, and whether it
is the first / last / terminal frame of its episode. An episode ends (`is_last`) when the player
dies (health 0 or lava: `is_terminal`) or when its frame index reaches `max_steps - 1`
(truncation, not terminal). Stepping a state that is already last is absorbing: same state, same
frame, zero reward, no unlocks.

The first use of craftax builds a texture cache inside the installed package (about 15 s).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from craftax.craftax_classic import game_logic
from craftax.craftax_classic.constants import Achievement, Action, BlockType
from craftax.craftax_env import make_craftax_env_from_name

ENV_NAME = 'Craftax-Classic-Pixels-v1'
ACHIEVEMENT_NAMES: tuple[str, ...] = tuple(a.name.lower() for a in Achievement)
ACTION_NAMES: tuple[str, ...] = tuple(a.name.lower() for a in Action)
NUM_ACHIEVEMENTS = len(ACHIEVEMENT_NAMES)  # 22
NUM_ACTIONS = len(ACTION_NAMES)  # 17
# Per action, the achievement that only it can unlock (-1: none): the place_* and make_* actions,
# whose achievement has the action's name. Closed-loop evaluation counts how often such an action
# is pressed before its first success, i.e. how often the game refused it (missing materials or
# no table nearby).
ACTION_ACHIEVEMENT: tuple[int, ...] = tuple(
    ACHIEVEMENT_NAMES.index(a)
    if a in ACHIEVEMENT_NAMES and a.startswith(('place_', 'make_'))
    else -1
    for a in ACTION_NAMES
)
FRAME_SHAPE = (64, 64, 3)
RAW_FRAME_SHAPE = (63, 63, 3)
# Craftax's own step limit; our episodes are truncated at `max_steps` <= this.
CRAFTAX_MAX_TIMESTEPS = 10000
# What a death is put down to (`death_cause`), in order of precedence.
DEATH_CAUSES: tuple[str, ...] = ('lava', 'need_at_zero', 'damage')

EnvState = Any  # craftax.craftax_classic.envs.craftax_state.EnvState (a flax struct pytree)


class TimeStep(NamedTuple):
    """Per-env outputs; leading dim N when batched."""

    frame: jax.Array  # uint8 [N, 64, 64, 3]
    reward: jax.Array  # float32 [N], env reward of the transition into this frame
    unlocked: jax.Array  # bool [N, K], achievements first unlocked by that transition
    is_first: jax.Array  # bool [N]
    is_last: jax.Array  # bool [N]
    is_terminal: jax.Array  # bool [N]


class ResetPool(NamedTuple):
    """Pre-generated initial worlds and their frames."""

    states: EnvState  # leaves with leading dim P
    frames: jax.Array  # uint8 [P, 64, 64, 3]


def obs_to_frame(obs: jax.Array) -> jax.Array:
    """float [..., 63, 63, 3] in [0, 1] -> uint8 [..., 64, 64, 3], zero pad bottom/right."""
    pixels = jnp.clip(jnp.round(obs * 255.0), 0, 255).astype(jnp.uint8)
    pad = [(0, 0)] * (pixels.ndim - 3) + [(0, 1), (0, 1), (0, 0)]
    return jnp.pad(pixels, pad)


def strong_types(tree):
    """Drops JAX weak types from every leaf, so a jitted step sees the same types whether its
    input came from world generation or from a previous step (no second compilation)."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, jnp.asarray(x).dtype), tree)


def in_lava(state: EnvState) -> jax.Array:
    """Whether the player stands on lava (which ends the game at once)."""
    pos = state.player_position
    return state.map[pos[0], pos[1]] == BlockType.LAVA.value


def is_terminal(state: EnvState) -> jax.Array:
    """Death or lava (Craftax's own game-over minus its step limit)."""
    return jnp.logical_or(state.player_health <= 0, in_lava(state))


def death_cause(state: EnvState) -> jax.Array:
    """int32 index into DEATH_CAUSES of what ended a dead player's episode (meaningful only
    where `is_terminal`).

    Craftax-Classic takes health in two ways: 1 point at a time while food, drink or energy is
    at zero (energy counts as met while asleep), and hits from zombies, skeletons' arrows and
    lava. A death while a need is at zero is put down to that need, even where a hit in the
    same step did the rest (an attribution, not a measurement); a death with every need above
    zero is damage.
    """
    energy_out = jnp.logical_and(state.player_energy <= 0, jnp.logical_not(state.is_sleeping))
    need_out = (state.player_food <= 0) | (state.player_drink <= 0) | energy_out
    return jnp.where(in_lava(state), 0, jnp.where(need_out, 1, 2)).astype(jnp.int32)


@jax.jit
def generate_worlds(key: jax.Array, ids: jax.Array) -> tuple[EnvState, jax.Array]:
    """Initial states and frames [N, 64, 64, 3] of worlds generate(fold_in(key, i)), i in ids.

    Module-level so every CraftaxEnv shares one compilation per batch size (world generation
    does not depend on max_steps).
    """
    env = make_craftax_env_from_name(ENV_NAME, auto_reset=False)

    def one(i):
        state = env.reset_env(jax.random.fold_in(key, i), env.default_params)[1]
        return state, obs_to_frame(env.get_obs(state))

    return strong_types(jax.vmap(one)(ids))


class CraftaxEnv:
    """Batched pure functions around the no-auto-reset Craftax-Classic pixel env.

    Methods take and return batched pytrees (leading dim N) and are jitted; the object only holds
    the env, its params and the compiled functions (no episode state).
    """

    action_achievement = ACTION_ACHIEVEMENT

    def __init__(self, max_steps: int = CRAFTAX_MAX_TIMESTEPS):
        if not 2 <= max_steps <= CRAFTAX_MAX_TIMESTEPS:
            raise ValueError(
                f'max_steps={max_steps} must be in [2, {CRAFTAX_MAX_TIMESTEPS}] (Craftax ends '
                'every episode at its own step limit)'
            )
        self.max_steps = max_steps
        self.env = make_craftax_env_from_name(ENV_NAME, auto_reset=False)
        self.params = self.env.default_params
        self.reset_from_pool = jax.jit(self._reset_from_pool)
        self.step = jax.jit(self._step)
        self._first_timesteps = jax.jit(jax.vmap(self.first_timestep))

    # Single-environment pieces (vmapped below; also used by the collector's scan).
    def render(self, state: EnvState) -> jax.Array:
        return obs_to_frame(self.env.get_obs(state))

    def death_cause(self, states: EnvState) -> jax.Array:
        """int32 [N] indices into DEATH_CAUSES (see the module function)."""
        return jax.vmap(death_cause)(states)

    def is_last(self, state: EnvState) -> jax.Array:
        return jnp.logical_or(is_terminal(state), state.timestep >= self.max_steps - 1)

    def step_single(
        self, state: EnvState, action: jax.Array, key: jax.Array
    ) -> tuple[EnvState, TimeStep]:
        """One env step with absorbing end; returns the next state and its TimeStep."""
        new_state, reward = game_logic.craftax_step(
            key, state, action, self.params, self.env.static_env_params
        )
        done = self.is_last(state)
        new_state = jax.tree.map(lambda old, new: jnp.where(done, old, new), state, new_state)
        unlocked = jnp.logical_and(new_state.achievements, jnp.logical_not(state.achievements))
        ts = TimeStep(
            frame=self.render(new_state),
            reward=jnp.where(done, 0.0, reward).astype(jnp.float32),
            unlocked=unlocked,
            is_first=jnp.zeros((), bool),
            is_last=self.is_last(new_state),
            is_terminal=is_terminal(new_state),
        )
        return strong_types((new_state, ts))

    def events_single(self, state: EnvState, action: jax.Array, key: jax.Array) -> jax.Array:
        """bool [K]: the achievement events of the step `step_single(state, action, key)` takes,
        repeats included (a second tree felled is a collect_wood event; `unlocked` has only the
        first). VPT's task events count every occurrence too (data/vpt.py, PAPER 11).

        Craftax marks an event by OR-ing it into `state.achievements` and reads achievements for
        nothing but the reward, so the same step (same key) from the state with achievements
        cleared leaves exactly this step's events there (tests/test_data_collect.py checks that
        everything else matches the real step).
        """
        cleared = state.replace(achievements=jnp.zeros_like(state.achievements))
        stepped, _ = game_logic.craftax_step(
            key, cleared, action, self.params, self.env.static_env_params
        )
        return jnp.logical_and(stepped.achievements, jnp.logical_not(self.is_last(state)))

    def first_timestep(self, state: EnvState, frame: jax.Array) -> TimeStep:
        ts = TimeStep(
            frame=frame,
            reward=jnp.zeros((), jnp.float32),
            unlocked=jnp.zeros((NUM_ACHIEVEMENTS,), bool),
            is_first=jnp.ones((), bool),
            is_last=self.is_last(state),
            is_terminal=is_terminal(state),
        )
        return strong_types(ts)

    # Batched API.
    def reset(self, key: jax.Array, num_envs: int) -> tuple[EnvState, TimeStep]:
        """`num_envs` fresh worlds (world i from fold_in(key, i)) and their first TimeSteps."""
        states, frames = generate_worlds(key, jnp.arange(num_envs))
        return states, self._first_timesteps(states, frames)

    def _reset_from_pool(self, pool: ResetPool, indices: jax.Array) -> tuple[EnvState, TimeStep]:
        states = jax.tree.map(lambda x: x[indices], pool.states)
        return states, jax.vmap(self.first_timestep)(states, pool.frames[indices])

    def _step(
        self, states: EnvState, actions: jax.Array, key: jax.Array
    ) -> tuple[EnvState, TimeStep]:
        keys = jax.random.split(key, actions.shape[0])
        return jax.vmap(self.step_single)(states, actions.astype(jnp.int32), keys)

    def make_pool(self, key: jax.Array, size: int, chunk: int = 64) -> ResetPool:
        """`size` worlds from keys fold_in(key, i), generated `chunk` at a time."""
        parts = []
        for start in range(0, size, chunk):
            parts.append(generate_worlds(key, jnp.arange(start, start + chunk)))
        states, frames = jax.tree.map(lambda *xs: jnp.concatenate(xs)[:size], *parts)
        return ResetPool(states, frames)


def achievement_index(name: str) -> int:
    """Index of an achievement (task) name; raises with the list of valid names."""
    if name not in ACHIEVEMENT_NAMES:
        raise ValueError(f'unknown Craftax achievement {name!r}; valid: {ACHIEVEMENT_NAMES}')
    return ACHIEVEMENT_NAMES.index(name)
