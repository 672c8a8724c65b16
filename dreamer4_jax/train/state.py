"""The train state every phase uses, and the optimizer built from the config."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers, muon

from dreamer4_jax.configs import OPTIMIZERS


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


# The transformer's weight matrices by parameter name: (reduction axes, output axes) of the
# matmul each one takes part in (dreamer4_jax/nn: block.py, mlp.py); the remaining axes (heads,
# the q/k/v slot, the SwiGLU gate/up slot) are batch axes, each slice orthogonalized on its own.
_MUON_AXES = {
    'qkv': ((0,), (3,)),  # [D, KV heads, G + 2, K]: one D x K matrix per query head, key, value
    'out': ((0, 1), (2,)),  # [H, K, D]
    'wi': ((0,), (2,)),  # [D, 2, F]: gate and up separately
    'wo': ((0,), (1,)),  # [F, D]
    'kernel': ((0,), (1,)),  # 2D nn.Dense kernels (patch, latent, head projections)
}


def muon_dimension_numbers(params: Any) -> Any:
    """Per leaf: `MuonDimensionNumbers` for the weight matrices Muon updates, None for the rest.

    Matrices are the transformer's projections (`_MUON_AXES`) and 2D dense kernels; vectors
    (norm scales, biases) and learned token tables (latent, read-out, register, action and task
    embeddings: rows are looked up, not multiplied) stay with Adam, as in the reproduction
    PAPER 8 cites (S9). Stacked layers (`scan_layers`, under 'groups') carry a leading layer
    axis, which is a batch axis here.
    """

    def rule(path, leaf):
        # Dict keys only: a logically partitioned box adds an attribute key ('value').
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        axes = _MUON_AXES.get(keys[-1]) if hasattr(leaf, 'ndim') else None
        if axes is None or (keys[-1] == 'out' and (len(keys) < 2 or keys[-2] != 'attn')):
            return None
        shift = 1 if 'groups' in keys else 0
        red, out = (tuple(a + shift for a in ax) for ax in axes)
        if leaf.ndim != max(red + out) + 1 or (keys[-1] == 'kernel' and leaf.ndim != 2):
            return None
        return MuonDimensionNumbers(reduction_axis=red, output_axis=out)

    return jax.tree_util.tree_map_with_path(rule, params)


def _schedule(train_config, peak: float) -> optax.Schedule:
    steps = int(train_config.steps)
    warmup = min(int(train_config.warmup_steps), max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=0.1 * peak,
    )


def make_optimizer(train_config, trainable_mask: Any = None) -> optax.GradientTransformation:
    """AdamW or Muon with linear warm-up then cosine decay, global-norm clipping.

    PAPER 8: the optimizer is not stated [U]. `train.optimizer='adamw'` (the default) is the
    safe choice at small scale. 'muon' follows the reproduction PAPER 8 cites (S9): Muon
    (Nesterov momentum 0.95, 5 Newton-Schulz steps) at `train.muon_learning_rate` on the weight
    matrices (`muon_dimension_numbers`), Adam at `train.learning_rate` on everything else; both
    share the warm-up/cosine shape. Measured on the Craftax tokenizer (README, phase 1a): 18.8 dB
    held out after 300 steps where AdamW reaches 17.3. With `trainable_mask` (a pytree of bools
    like params), frozen leaves get no update and no state.
    """
    # .get: configs saved before these fields existed (restored runs) train with AdamW.
    name = str(train_config.get('optimizer', 'adamw'))
    lr = float(train_config.learning_rate)
    wd = float(train_config.weight_decay)
    if name == 'adamw':
        update = optax.adamw(_schedule(train_config, lr), b1=0.9, b2=0.99, weight_decay=wd)
    elif name == 'muon':
        update = muon(
            _schedule(train_config, float(train_config.get('muon_learning_rate', 0.02))),
            weight_decay=wd,
            adam_learning_rate=_schedule(train_config, lr),
            adam_b1=0.9,
            adam_b2=0.99,
            adam_weight_decay=wd,
            muon_weight_dimension_numbers=muon_dimension_numbers,
        )
    else:
        raise ValueError(f'config.train.optimizer={name!r}: choose one of {OPTIMIZERS}')
    tx = optax.chain(optax.clip_by_global_norm(float(train_config.grad_clip)), update)
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
