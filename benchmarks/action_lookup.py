"""Can the dynamics transformer learn to read its actions? A synthetic lookup, no tokenizer.

  python -m benchmarks.action_lookup [--experiment=experiments/craftax_tiny.py] \
      [--input_scale=none|signal] [--frames=8] [--steps=300] [--batch=8] [--learning_rate=1e-3] \
      [--noise=1.0] [--pattern=tsss]

Synthetic latents where the action decides the next frame completely: frame t + 1 is a fixed
latent per action (a table of `num_actions` random latents), frame 0 is uniform noise. The model
is the experiment's dynamics model (`--experiment`, craftax_tiny by default: 96 latents of 16
channels packed by 6, width 96, 4 heads, 1 KV head, layers s s s t, 4 registers, 17 actions;
craftax_cpu's has 8 layers of width 128; the input scale is the flag's, 'none' unless given)
trained as a next-frame regressor:
every context frame at signal 1 - d_min, the last frame of each window from pure noise (tau = 0,
the input a sampler starts from), squared error on the last frame only. It reports the held-out
error with the real actions, with shuffled actions, and of the targets' mean (what a model that
ignores the actions converges to). A model that reads its action drives the first far below the
other two.

Why: in the demo the dynamics model ignores the actions (README, phase 1b: `counterfactual_mse`
near zero). Here the action is all there is to read, so this separates "the model cannot take
the action path" from "the data's action signal is too weak for the budget". `--noise=0` feeds
the predicted frame zeros instead of noise; `--input_scale=signal` is the dynamics option that
multiplies every frame's noisy latents by its signal level, which feeds zeros at tau = 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamer4_jax import config_checks
from dreamer4_jax.dynamics import (
    INPUT_SCALES,
    Dynamics,
    DynamicsConfig,
    align_actions,
    init_params,
)
from dreamer4_jax.model_configs import dynamics_config_from, tokenizer_config_from


def experiment_shape(experiment: str = 'experiments/craftax_tiny.py') -> DynamicsConfig:
    """The dynamics model an experiment's dynamics stage builds (craftax_tiny: the demo's)."""
    config = config_checks.load_config(f'{experiment}:dynamics')
    return dynamics_config_from(config.dynamics, tokenizer_config_from(config.tokenizer))


def lookup_windows(
    rng: np.random.Generator, table_ANC: np.ndarray, batch: int, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """(z [B, T, N, C], actions [B, T]): frame t + 1 is table[action taken after frame t]."""
    a_BT = rng.integers(0, table_ANC.shape[0], (batch, frames))
    z = np.empty((batch, frames, *table_ANC.shape[1:]), np.float32)
    z[:, 0] = rng.uniform(-1, 1, (batch, *table_ANC.shape[1:]))
    z[:, 1:] = table_ANC[a_BT[:, :-1]]
    return z, a_BT


def fit(
    config: DynamicsConfig,
    *,
    frames: int = 8,
    steps: int = 300,
    batch: int = 8,
    learning_rate: float = 1e-3,
    noise: float = 1.0,
    eval_windows: int = 64,
    log_every: int = 100,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Train on the lookup and return held-out errors (see the module doc) at every log step."""
    if frames < 2:
        raise ValueError(f'frames must be >= 2 (a context frame and a predicted one), got {frames}')
    (name, kind, num_actions), *rest = config.actions
    if kind != 'categorical' or rest:
        raise ValueError(f'the lookup needs one categorical action component, got {config.actions}')
    rng = np.random.default_rng(seed)
    shape = (config.num_latents, config.latent_dim)
    table = np.tanh(rng.normal(0.0, 1.0, (num_actions, *shape))).astype(np.float32)
    model = Dynamics(config)
    params = flax.linen.meta.unbox(init_params(model, jax.random.PRNGKey(seed)))
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    d_min = 1.0 / config.k_max
    tau_T = jnp.full((frames,), 1.0 - d_min).at[-1].set(0.0)

    def last_frame(p, z, a, key):
        b = z.shape[0]
        tau = jnp.broadcast_to(tau_T, (b, frames))
        eps = noise * jax.random.normal(key, z.shape)
        z_tilde = tau[..., None, None] * z + (1.0 - tau[..., None, None]) * eps
        acts, has = align_actions({name: a}, jnp.ones((b, frames), bool))
        out, _ = model.apply({'params': p}, z_tilde, tau, jnp.full((b, frames), d_min), acts, has)
        return out[:, -1]

    def loss(p, z, a, key):
        return jnp.mean((last_frame(p, z, a, key) - z[:, -1]) ** 2)

    @jax.jit
    def step(p, s, z, a, key):
        value, grads = jax.value_and_grad(loss)(p, z, a, key)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    evaluate = jax.jit(loss)
    held_z, held_a = lookup_windows(np.random.default_rng(seed + 1), table, eval_windows, frames)
    shuffled_a = np.random.default_rng(seed + 2).permutation(held_a.reshape(-1))
    shuffled_a = shuffled_a.reshape(held_a.shape)
    mean_error = float(np.mean((held_z[:, -1] - table.mean(0)) ** 2))
    eval_key = jax.random.PRNGKey(seed + 3)
    history, t0 = [], time.time()
    for i in range(steps + 1):
        if i % log_every == 0 or i == steps:
            row = dict(
                step=i,
                error=float(evaluate(params, held_z, held_a, eval_key)),
                error_shuffled=float(evaluate(params, held_z, shuffled_a, eval_key)),
            )
            history.append(row)
            log(
                f'step {i}: held-out error {row["error"]:.4f}, shuffled actions '
                f"{row['error_shuffled']:.4f}, targets' mean {mean_error:.4f} "
                f'({time.time() - t0:.0f} s)'
            )
        if i == steps:
            break
        z, a = lookup_windows(rng, table, batch, frames)
        params, opt_state, _ = step(params, opt_state, z, a, jax.random.PRNGKey(seed + 10 + i))
    return dict(history=history, error_of_mean=mean_error, **history[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--experiment', default='experiments/craftax_tiny.py')
    parser.add_argument(
        '--input_scale', choices=INPUT_SCALES, default='none', help="overrides the experiment's"
    )
    parser.add_argument('--frames', type=int, default=8)
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--learning_rate', type=float, default=1e-3)
    parser.add_argument('--noise', type=float, default=1.0, help='std of the predicted input')
    parser.add_argument('--pattern', default=None, help="layer pattern, e.g. 'tsss'")
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    config = dataclasses.replace(experiment_shape(args.experiment), input_scale=args.input_scale)
    if args.pattern:
        block = dataclasses.replace(config.transformer, pattern=args.pattern)
        config = dataclasses.replace(config, transformer=block)
    result = fit(
        config,
        frames=args.frames,
        steps=args.steps,
        batch=args.batch,
        learning_rate=args.learning_rate,
        noise=args.noise,
        seed=args.seed,
    )
    print(json.dumps({**result, **vars(args)}))
    return result


if __name__ == '__main__':
    main()
