"""The train state every phase uses, and the optimizer built from the config."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed whole.

    `aux` holds phase-specific state that is not optimized by gradient descent: the running-RMS
    loss normalizer (PAPER 6.6), EMA weights for sampling, frozen sub-models' parameters, ...
    """

    step: jax.Array
    params: Any
    opt_state: Any
    aux: Any


def make_optimizer(train_config, trainable_mask: Any = None) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, global-norm clipping.

    PAPER 8: the optimizer is not stated [U]; AdamW is the safe default at small scale. With
    `trainable_mask` (a pytree of bools like params), frozen leaves get no update and no state.
    """
    steps = int(train_config.steps)
    warmup = min(int(train_config.warmup_steps), max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(train_config.learning_rate),
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=0.1 * float(train_config.learning_rate),
    )
    tx = optax.chain(
        optax.clip_by_global_norm(float(train_config.grad_clip)),
        optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=float(train_config.weight_decay)),
    )
    if trainable_mask is not None:
        labels = jax.tree.map(lambda t: 'train' if t else 'frozen', trainable_mask)
        tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
    return tx


def create_train_state(params: Any, tx: optax.GradientTransformation, aux: Any = None):
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), aux=aux or {}
    )


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation, **changes):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **changes)
