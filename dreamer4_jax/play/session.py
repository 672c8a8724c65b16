"""Interactive play inside a trained world model: one action in, one generated frame out.

A `PlaySession` holds one episode played inside the world model (PAPER 7, 10.1). `reset(seed)`
takes the first frame of a real Craftax-Classic world, encodes it with the frozen tokenizer and
commits it to the dynamics model's KV cache; every `step(action)` then generates the next frame
with K shortcut steps that read the cache, commits it (at the context signal level, block action
= the action just taken) and decodes it. For agent and imagination runs the commit pass also
gives h_t, from which the reward head predicts the prompted task's reward (PAPER 9.2). Optionally
the real environment takes the same actions from the same world, for a side-by-side view.

Every call into the model modules sits in the few small functions below `PlayModel`
(`load_model`, `_encode`, `_decode_step`, `_decoder_cache`, `_commit_first`, `_generate`), so they
can follow those modules as they move.

Key schedule: reset(seed) uses fold_in(key(seed), 1) split into (context, generation) keys exactly
as `generation.rollout`, and step h uses fold_in(generation key, h); so the frames of a session
equal `generation.rollout(..., cached=False)` from the same first frame and actions (tested).

Dimension keys: B batch (1 here), N latents, C channels, H, W frame size.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from typing import Any

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import generation, imagination, pretrained, world_model
from dreamer4_jax.dynamics import Dynamics, dummy_actions
from dreamer4_jax.envs import craftax
from dreamer4_jax.eval.closed_loop import load_agent_policy
from dreamer4_jax.nn import KVCache
from dreamer4_jax.tokenizer import Tokenizer, new_decoder_cache

Array = jax.Array

# Which run of a demo workdir (runs/demo/<stage>/) to play, best first: the later phases add the
# reward head (the agent phase also finetunes the dynamics model, PAPER 9.3; imagination keeps it).
RUN_PREFERENCE = ('imagination', 'agent', 'dynamics')
AGENT_PHASES = ('agent', 'imagination')


def find_run(workdir: str) -> str:
    """The phase run folder to play: `workdir` itself if it holds checkpoints, else the first
    of RUN_PREFERENCE under it that does."""

    def has_checkpoint(folder: str) -> bool:
        ckpts = os.path.join(folder, 'checkpoints')
        return os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))

    if has_checkpoint(workdir):
        return workdir
    for name in RUN_PREFERENCE:
        if has_checkpoint(os.path.join(workdir, name)):
            return os.path.join(workdir, name)
    raise FileNotFoundError(
        f'{workdir} has no checkpoints and none of its subfolders {RUN_PREFERENCE} does: '
        'pass a demo workdir (make demo) or a dynamics, agent or imagination run folder.'
    )


@dataclasses.dataclass(frozen=True)
class PlayModel:
    """The static pieces of a playable world model (hashable: a jit static argument).

    Parameters are passed separately as {'tokenizer': ..., 'dynamics': ..., 'agent': ...}
    ('agent' only with heads). `world_model` is None for a dynamics-only run (no reward head).
    `context`: frames kept by caches whose transformer has no time window (the run's window
    length: the model never saw longer contexts).
    """

    tokenizer: Tokenizer
    dynamics: Dynamics
    sampling: generation.SamplingConfig
    world_model: imagination.WorldModel | None
    context: int

    @property
    def has_reward(self) -> bool:
        return self.world_model is not None

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        c = self.tokenizer.config
        return (c.height, c.width, 3)

    @property
    def num_tasks(self) -> int:
        return self.world_model.heads.config.num_tasks if self.world_model else 0

    def max_frames(self, window: int | None) -> int | None:
        return None if window is not None else max(self.context - 1, 0)


def load_model(run_dir: str) -> tuple[PlayModel, dict, Any]:
    """(PlayModel, params, run config) of a dynamics, agent or imagination run folder.

    Weights come through `pretrained` (the EMA weights where the run keeps them, as the
    dynamics phase samples with them).
    """
    run = pretrained.load(run_dir)
    if run.phase in AGENT_PHASES:
        policy, params = load_agent_policy(run_dir, sample=False)
        wm = policy.wm
        model = PlayModel(policy.tokenizer, wm.dynamics, wm.sampling, wm, policy.context)
    elif run.phase == 'dynamics':
        tok_run = run.earlier()
        tok_cfg = tok_run.tokenizer_config()
        model = PlayModel(
            Tokenizer(tok_cfg),
            world_model.dynamics_of(run.config.dynamics, tok_cfg),
            world_model.sampling_config(run.config.dynamics),
            None,
            int(run.config.data.window_length),
        )
        params = {'tokenizer': tok_run.params(), 'dynamics': run.params()}
    else:
        raise ValueError(
            f'{run_dir} holds a {run.phase!r} run; play needs a dynamics, agent or imagination '
            'run (a world model that takes actions).'
        )
    comps = model.dynamics.config.actions
    if len(comps) != 1 or comps[0][1] != 'categorical':
        raise ValueError(f'play sends one categorical action per key; {run_dir} has {comps}')
    return model, params, run.config


def _decode_step(
    tok: Tokenizer, params: Any, z_B1NC: Array, cache: KVCache
) -> tuple[Array, KVCache]:
    """`Tokenizer.decode_step` of one new frame per row (the decoder is causal in time)."""
    return tok.apply({'params': params}, z_B1NC, cache, method=Tokenizer.decode_step)


def _encode(tok: Tokenizer, params: Any, frame_HWC: Array) -> Array:
    """Latents [1, 1, N, C] of one real uint8 frame (the first of an episode: no past frames)."""
    x = frame_HWC[None, None].astype(jnp.float32) / 255.0
    return tok.apply({'params': params}, x, method=Tokenizer.encode)


def _commit_first(model: PlayModel, params: Any, z_11NC: Array, task: Array, rng: Array) -> KVCache:
    """Dynamics cache holding the first frame (no action led to it: has_action False)."""
    d = model.dynamics
    acts = dummy_actions(d.config.actions, 1, 1)
    has = jnp.zeros((1, 1), bool)
    max_frames = model.max_frames(d.config.transformer.time_window)
    if model.world_model is None:
        return generation.prefill(
            d, params['dynamics'], z_11NC, acts, has, rng, model.sampling, max_frames
        )
    cache = generation.new_cache(d, 1, max_frames)
    wm = model.world_model
    _, cache = imagination.observe(wm, params, z_11NC, acts, has, task.reshape(1, 1), cache, rng)
    return cache


def _generate(
    model: PlayModel, params: Any, cache: KVCache, action: Array, task: Array, rng: Array
) -> tuple[Array, KVCache, Array]:
    """Next latents [1, 1, N, C] after `action` (K shortcut steps reading the cache), committed
    to the cache; (latents, cache, predicted reward of the prompted task or NaN)."""
    name = model.dynamics.config.actions[0][0]
    act = {name: action.astype(jnp.int32).reshape(1, 1)}
    has = jnp.ones((1, 1), bool)
    if model.world_model is None:
        z, cache = generation.generate_frame(
            model.dynamics, params['dynamics'], cache, act, has, rng, model.sampling
        )
        return z, cache, jnp.float32(jnp.nan)
    wm = model.world_model
    # The same keys as generate_frame: (denoising noise, commit noise).
    k_noise, k_commit = jax.random.split(rng)
    z = imagination.dream(wm, params, cache, act, has, k_noise)
    # The commit pass gives h of the new frame: its reward is the one that arrived with it.
    h, cache = imagination.observe(wm, params, z, act, has, task.reshape(1, 1), cache, k_commit)
    return z, cache, wm.reward(params, h)[0, 0]


def _decoder_cache(model: PlayModel) -> KVCache:
    return new_decoder_cache(model.tokenizer.config, 1, model.context)


def _to_uint8(pixels: Array) -> Array:
    return (jnp.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnums=0)
def reset_fn(model: PlayModel, params: Any, frame_HWC: Array, task: Array, rng: Array):
    """First real frame -> (caches, its latents [1, 1, N, C])."""
    rng_ctx, _ = jax.random.split(rng)  # as generation.rollout: (context key, generation key)
    z = _encode(model.tokenizer, params['tokenizer'], frame_HWC)
    dyn_cache = _commit_first(model, params, z, task, rng_ctx)
    # Decoded only to put the frame into the decoder's cache (the page shows the real frame).
    _, dec_cache = _decode_step(model.tokenizer, params['tokenizer'], z, _decoder_cache(model))
    return (dec_cache, dyn_cache), z


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def step_fn(model: PlayModel, params: Any, caches: tuple, action: Array, task: Array, rng: Array):
    """One key press: (caches, generated uint8 frame [H, W, 3], latents, predicted reward)."""
    dec_cache, dyn_cache = caches
    z, dyn_cache, reward = _generate(model, params, dyn_cache, action, task, rng)
    pixels, dec_cache = _decode_step(model.tokenizer, params['tokenizer'], z, dec_cache)
    return (dec_cache, dyn_cache), _to_uint8(pixels[0, 0]), z, reward


@dataclasses.dataclass
class StepResult:
    """What one key press gives the page."""

    frame: np.ndarray  # uint8 [H, W, 3], generated
    index: int  # frames generated since reset
    reward: float | None  # reward head's prediction for the prompted task (None: no head)
    task: str | None
    model_ms: float  # wall time of the generation call (generation + decode), in ms
    real_frame: np.ndarray | None = None  # the real env after the same actions
    real_reward: float | None = None  # 1.0 when the real env unlocked the prompted task
    real_done: bool = False


class PlaySession:
    """One episode inside the world model; not thread-safe (the server holds a lock).

    env: a Craftax-like env (`reset(key, n)`, `step(states, actions, key)` -> (states, TimeStep));
    defaults to Craftax-Classic. real_env: also step `env` with the same actions, side by side.
    max_record: the most recent frames kept for export.
    """

    def __init__(
        self,
        model: PlayModel,
        params: Any,
        *,
        env: Any = None,
        real_env: bool = False,
        task: str | None = None,
        task_names: tuple[str, ...] | None = None,
        action_names: tuple[str, ...] | None = None,
        max_record: int = 2048,
    ):
        self.model, self.params = model, params
        self.env = env if env is not None else craftax.CraftaxEnv()
        self.real_env = real_env
        self.action_names = action_names or craftax.ACTION_NAMES
        n_actions = model.dynamics.config.actions[0][2]
        if len(self.action_names) != n_actions:
            raise ValueError(
                f'the world model takes {n_actions} actions, the env names {len(self.action_names)}'
            )
        names = task_names or craftax.ACHIEVEMENT_NAMES
        if model.num_tasks > len(names):
            raise ValueError(f'the run prompts {model.num_tasks} tasks, only {len(names)} named')
        self.task_names = tuple(names[: model.num_tasks])
        self.task_id = 0
        if task is not None:
            self.set_task(task)
        self.frames: collections.deque = collections.deque(maxlen=max_record)
        # Latents [N, C] of the recorded frames (for tests and inspection).
        self.latents: collections.deque = collections.deque(maxlen=max_record)
        self.seed = 0
        self.index = 0
        self._caches = None

    @property
    def task(self) -> str | None:
        return self.task_names[self.task_id] if self.task_names else None

    def set_task(self, name: str) -> None:
        """Prompt another task (agent runs); takes effect from the next frame on."""
        if name not in self.task_names:
            raise ValueError(f'unknown task {name!r}; this run knows {list(self.task_names)}')
        self.task_id = self.task_names.index(name)

    def reset(self, seed: int = 0) -> np.ndarray:
        """Start from the first frame of the real world `seed`; returns that frame (uint8)."""
        self.seed, self.index = int(seed), 0
        key = jax.random.key(self.seed)
        env_state, ts = self.env.reset(jax.random.fold_in(key, 0), 1)
        frame = np.asarray(ts.frame[0])
        if frame.shape != self.model.frame_shape:
            raise ValueError(
                f'env frames are {frame.shape}, the tokenizer takes {self.model.frame_shape}'
            )
        self._rng = jax.random.fold_in(key, 1)
        self._gen_rng = jax.random.split(self._rng)[1]
        self._env_state = env_state
        self._caches, z = reset_fn(
            self.model, self.params, jnp.asarray(frame), jnp.int32(self.task_id), self._rng
        )
        self.latents.clear()
        self.latents.append(np.asarray(z[0, 0]))
        self.frames.clear()
        self.frames.append((frame, frame if self.real_env else None))
        return frame

    def step(self, action: int) -> StepResult:
        """Generate the frame that follows `action` (an int in [0, number of actions))."""
        if self._caches is None:
            raise RuntimeError('call reset(seed) before step(action)')
        if not 0 <= int(action) < len(self.action_names):
            raise ValueError(f'action {action} not in [0, {len(self.action_names)})')
        start = time.perf_counter()
        rng = jax.random.fold_in(self._gen_rng, self.index)
        self._caches, frame, z, reward = step_fn(
            self.model,
            self.params,
            self._caches,
            jnp.int32(action),
            jnp.int32(self.task_id),
            rng,
        )
        frame, reward = jax.device_get((frame, reward))
        ms = 1000.0 * (time.perf_counter() - start)
        self.index += 1
        self.latents.append(np.asarray(z[0, 0]))
        result = StepResult(
            frame=np.asarray(frame),
            index=self.index,
            reward=float(reward) if self.model.has_reward else None,
            task=self.task,
            model_ms=ms,
        )
        if self.real_env:
            key = jax.random.fold_in(jax.random.key(self.seed), 2 + self.index)
            self._env_state, ts = self.env.step(
                self._env_state, jnp.asarray([int(action)], jnp.int32), key
            )
            result.real_frame = np.asarray(ts.frame[0])
            result.real_done = bool(ts.is_last[0])
            if self.model.has_reward:
                result.real_reward = float(np.asarray(ts.unlocked[0, self.task_id]))
        self.frames.append((result.frame, result.real_frame))
        return result

    def export(self, fmt: str, fps: int = 8, scale: int = 4) -> bytes:
        """The recorded frames (generated | real when side by side) as GIF or MP4 bytes."""
        if fmt not in ('gif', 'mp4'):
            raise ValueError(f"export format must be 'gif' or 'mp4', got {fmt!r}")
        if not self.frames:
            raise RuntimeError('nothing to export: call reset(seed) first')
        video = np.stack([_side_by_side(g, r) for g, r in self.frames])
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
        if fmt == 'gif':
            return iio.imwrite('<bytes>', video, extension='.gif', duration=1000 / fps, loop=0)
        # H.264 with yuv420p needs even sizes.
        h, w = video.shape[1:3]
        video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        return iio.imwrite('<bytes>', video, extension='.mp4', fps=fps, codec='libx264')


def _side_by_side(generated: np.ndarray, real: np.ndarray | None, gap: int = 2) -> np.ndarray:
    if real is None:
        return generated
    h = generated.shape[0]
    return np.concatenate([generated, np.full((h, gap, 3), 255, np.uint8), real], axis=1)
