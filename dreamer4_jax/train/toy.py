"""A toy phase that exercises the whole loop: sharded MLP regression on seeded synthetic data.

Dimension keys: B batch, I input features, D hidden width. Its parameters carry the same
logical axis names as the real models ('embed', 'mlp') so every mesh axis is used.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.loop import Phase


class ToyMLP(nn.Module):
    width: int
    out_dim: int

    @nn.compact
    def __call__(self, x_BI: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal()
        w1 = self.param(
            'w1', nn.with_logical_partitioning(init, ('io', 'embed')), (x_BI.shape[-1], self.width)
        )
        w2 = self.param(
            'w2', nn.with_logical_partitioning(init, ('embed', 'mlp')), (self.width, 2 * self.width)
        )
        w3 = self.param(
            'w3', nn.with_logical_partitioning(init, ('mlp', 'io')), (2 * self.width, self.out_dim)
        )
        h_BD = nn.with_logical_constraint(jnp.tanh(x_BI @ w1), ('batch', 'act_embed'))
        h_BM = nn.with_logical_constraint(jax.nn.gelu(h_BD @ w2), ('batch', 'act_mlp'))
        return h_BM @ w3


def _example(index: int, in_dim: int, out_dim: int) -> dict:
    """Deterministic example for a global index: y = sin(x @ A) with a fixed A."""
    x = np.random.default_rng(index).standard_normal(in_dim).astype(np.float32)
    a = np.random.default_rng(12345).standard_normal((in_dim, out_dim)).astype(np.float32)
    return {'x': x, 'y': np.sin(x @ a / np.sqrt(in_dim)).astype(np.float32)}


def make_toy_dataset(config, process_index: int, process_count: int):
    """A grain pipeline: seeded shuffle, this process's shard, batches of its share."""
    c = config.toy
    local_batch = int(config.train.batch_size) // process_count
    ds = grain.MapDataset.range(int(c.num_examples)).shuffle(seed=int(config.seed))
    ds = ds[process_index::process_count]
    ds = ds.map(lambda i: _example(int(i), int(c.in_dim), int(c.out_dim)))
    ds = ds.repeat().batch(local_batch, drop_remainder=True)
    return iter(ds)


def train_step(model: ToyMLP, tx, state, batch, rng):
    """One regression step; deterministic model (the key is still threaded for uniformity)."""
    del rng

    def loss_fn(params):
        pred = model.apply({'params': params}, batch['x'])
        return jnp.mean((pred - batch['y']) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state_lib.apply_gradients(state, grads, tx), {'loss': loss}


def make_phase(config: ml_collections.ConfigDict) -> Phase:
    c = config.toy
    model = ToyMLP(width=int(c.width), out_dim=int(c.out_dim))
    tx = state_lib.make_optimizer(config.train)

    def init(rng):
        params = model.init(rng, jnp.zeros((1, int(c.in_dim))))['params']
        return state_lib.create_train_state(params, tx)

    return Phase(
        name='toy',
        init=init,
        train_step=functools.partial(train_step, model, tx),
        make_data=lambda pi, pc: make_toy_dataset(config, pi, pc),
        main_metrics=('loss',),
    )
