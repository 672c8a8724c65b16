"""Tiny tokenizer / dynamics / agent runs saved as real checkpoints, and a fast fake env.

The runs are randomly initialised (no training): enough to load them the way the play command
does (pretrained.load from the saved configs) and to check shapes, caches and the
server in seconds.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from dreamer4_jax import checkpoint, parallel
from dreamer4_jax.envs.craftax import NUM_ACHIEVEMENTS, TimeStep
from dreamer4_jax.model_configs import transformer_config_dict
from dreamer4_jax.train import phases
from experiments.craftax_tiny import get_config

NUM_TASKS = 5


def _block(**kw):
    return transformer_config_dict(**{**dict(width=16, depth=2, num_heads=2, time_every=2), **kw})


def _config(variant: str):
    c = get_config(variant)
    c.data.window_length = 4
    c.tokenizer.patch = 16  # the whole 64x64 Craftax frame -> 16 patches
    c.tokenizer.content_height = c.tokenizer.content_width = 0
    c.tokenizer.num_latents = 4
    c.tokenizer.latent_dim = 4
    c.tokenizer.encoder = _block()
    c.tokenizer.decoder = _block()
    c.dynamics.transformer = _block(time_window=4)
    c.dynamics.pack = 4  # the 4 latents in one token, whatever craftax_tiny packs its latents by
    c.dynamics.num_registers = 1
    c.dynamics.k_max = 8
    c.agent.num_tasks = NUM_TASKS
    c.agent.mtp_length = 1
    c.agent.head_hidden = 16
    c.agent.reward_bins = 11
    c.agent.value_bins = 11
    return c


def _random_state(config, seed: int):
    """A train state of `config`'s phase with random weights, without running its init (slow
    op by op on CPU): vectors near 1 (norm scales), matrices ~ N(0, 1 / fan_in), the rest 0."""
    rng = np.random.default_rng(seed)
    init = phases.make_phase(config).init
    shapes = jax.eval_shape(lambda: parallel.unboxed(init(jax.random.key(0))))

    def fill(s):
        if not jnp.issubdtype(s.dtype, jnp.floating) or len(s.shape) == 0:
            return jnp.zeros(s.shape, s.dtype)
        if len(s.shape) == 1:
            return jnp.asarray(1 + 0.1 * rng.normal(size=s.shape), s.dtype)
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), s.dtype)

    return jax.tree.map(fill, shapes)


def _save(config, workdir: str, seed: int) -> str:
    """A random state of `config`'s phase, saved as step 0 of `workdir`."""
    state = _random_state(config, seed)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(0, state, None, jax.random.key(seed), config)
    ckpt.close()
    return workdir


def make_runs(root: str, agent: bool = True) -> dict[str, str]:
    """{'tokenizer', 'dynamics'[, 'agent']: run folder} under `root` (a demo-workdir layout)."""
    runs = {'tokenizer': _save(_config('tokenizer'), os.path.join(root, 'tokenizer'), 0)}
    c = _config('dynamics')
    c.dynamics.tokenizer_workdir = runs['tokenizer']
    runs['dynamics'] = _save(c, os.path.join(root, 'dynamics'), 1)
    if agent:
        c = _config('agent')
        c.agent.dynamics_workdir = runs['dynamics']
        runs['agent'] = _save(c, os.path.join(root, 'agent'), 2)
    return runs


class FakeEnv:
    """Craftax's batched reset / step interface with synthetic 64x64 frames (compiles in
    milliseconds, unlike Craftax's world generation). World `key` gives a random first frame;
    action a rolls the picture by a pixels and unlocks achievement a."""

    def reset(self, key, n):
        frame = jax.random.randint(key, (n, 64, 64, 3), 0, 256).astype(jnp.uint8)
        return frame, self._ts(frame, jnp.zeros(n, jnp.int32), first=True)

    def step(self, state, actions, key):
        del key
        frame = jax.vmap(lambda f, a: jnp.roll(f, a, axis=1))(state, actions)
        return frame, self._ts(frame, actions, first=False)

    @staticmethod
    def _ts(frame, actions, first):
        n = frame.shape[0]
        unlocked = jax.nn.one_hot(actions, NUM_ACHIEVEMENTS, dtype=bool) & (not first)
        return TimeStep(
            frame=frame,
            reward=unlocked.any(-1).astype(jnp.float32),
            unlocked=unlocked,
            is_first=jnp.full(n, first),
            is_last=jnp.zeros(n, bool),
            is_terminal=jnp.zeros(n, bool),
        )
