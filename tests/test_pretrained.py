"""Loading an earlier phase (dreamer4_jax.pretrained): config, EMA weights, shardings, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dreamer4_jax import checkpoint, parallel, pretrained
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.configs import base_config
from dreamer4_jax.model_configs import (
    agent_config_dict,
    dynamics_config_dict,
    tokenizer_config_dict,
    transformer_config_dict,
)
from dreamer4_jax.train import loop, toy
from dreamer4_jax.train import state as state_lib
from experiments.toy import get_config


def _block(**kw):
    return transformer_config_dict(width=16, depth=2, num_heads=2, time_every=2, **kw)


def _tokenizer_config():
    c = base_config()
    c.phase = 'tokenizer'
    c.tokenizer = tokenizer_config_dict(
        height=16,
        width=16,
        patch=8,
        num_latents=4,
        latent_dim=3,
        encoder=_block(),
        decoder=_block(),
    )
    return c


def _dynamics_config(tokenizer_workdir: str):
    c = base_config()
    c.phase = 'dynamics'
    c.dynamics = dynamics_config_dict(
        action_space='craftax',
        num_registers=1,
        k_max=8,
        ema_decay=0.9,
        tokenizer_workdir=tokenizer_workdir,
        transformer=_block(time_window=8),
    )
    return c


def _save(workdir: str, config, params, aux) -> None:
    """A checkpoint as the loop writes it (no training needed to test loading)."""
    state = state_lib.TrainState(
        step=jnp.asarray(3, jnp.int32), params=params, opt_state={'mu': params}, aux=aux
    )
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(3, state, None, jax.random.key(0), config)
    ckpt.close()


def _filled(tree, value_fn):
    return jax.tree.map(lambda s: value_fn(s.shape).astype(s.dtype), tree)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    tok_dir, dyn_dir = str(root / 'tokenizer'), str(root / 'dynamics')
    tok_cfg = _tokenizer_config()
    tok_shapes = pretrained.abstract(tok_cfg).params()
    rs = np.random.RandomState(0)
    tok_params = _filled(tok_shapes, lambda s: rs.standard_normal(s))
    _save(tok_dir, tok_cfg, tok_params, {})
    dyn_cfg = _dynamics_config(tok_dir)
    dyn_shapes = pretrained.abstract(dyn_cfg, {tok_dir: tok_cfg}.__getitem__).params()
    raw = _filled(dyn_shapes, lambda s: rs.standard_normal(s))
    ema = jax.tree.map(lambda x: x + 100.0, raw)  # unmistakably different from the raw weights
    _save(dyn_dir, dyn_cfg, raw, {'ema': ema, 'rms': {'x': jnp.ones(())}})
    return tok_dir, dyn_dir, tok_params, raw, ema


def test_a_later_phase_loads_the_ema_weights(runs):
    tok_dir, dyn_dir, tok_params, raw, ema = runs
    run = pretrained.load(dyn_dir, expect='dynamics')
    assert run.step == 3 and pretrained.uses_ema(run.config)
    got = run.params()
    jax.tree.map(np.testing.assert_array_equal, got, ema)
    assert not np.array_equal(jax.tree.leaves(got)[0], jax.tree.leaves(raw)[0])
    # The tokenizer keeps no EMA: its trained parameters, found through the dynamics run.
    tok_run = run.earlier()
    assert tok_run.workdir == tok_dir and not pretrained.uses_ema(tok_run.config)
    jax.tree.map(np.testing.assert_array_equal, tok_run.params(), tok_params)
    assert run.tokenizer_config().num_latents == 4


def test_weights_are_restored_onto_the_requested_shardings(runs):
    _, dyn_dir, _, _, ema = runs
    run = pretrained.load(dyn_dir)
    mesh = parallel.make_mesh((2, 2, 2))
    rules = tuple(tuple(r) for r in base_config().sharding_rules)
    shardings = run.shardings(mesh, rules)
    got = run.params(shardings)
    sharded = [x for x in jax.tree.leaves(got) if not x.sharding.is_fully_replicated]
    assert sharded, 'no parameter was sharded over the mesh'
    for x, s in zip(jax.tree.leaves(got), jax.tree.leaves(shardings), strict=True):
        assert x.sharding == s
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), got, ema)
    # A later phase passes the shardings of its fresh state, which has new leaves too.
    superset = {**shardings, 'agent_tokens': jax.tree.leaves(shardings)[0]}
    again = run.params(superset)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), again, ema)


def test_abstract_runs_give_shapes_without_a_checkpoint(runs):
    tok_dir, dyn_dir, _, raw, _ = runs
    tok_cfg = pretrained.load(tok_dir).config
    run = pretrained.abstract(pretrained.load(dyn_dir).config, {tok_dir: tok_cfg}.__getitem__)
    shapes = run.params()
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda x: x.shape, raw)
    assert run.earlier().is_abstract


def test_wrong_or_missing_runs_are_one_clear_error(runs, tmp_path):
    tok_dir, dyn_dir, _, _, _ = runs
    with pytest.raises(
        checkpoint.CheckpointError, match="holds a 'tokenizer' run .*not a 'dynamics'"
    ):
        pretrained.load(tok_dir, expect='dynamics')
    missing = tmp_path / 'typo'
    with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
        pretrained.load(str(missing))
    assert not missing.exists()
    config = _dynamics_config('')
    with pytest.raises(ConfigError, match='tokenizer_workdir is empty'):
        pretrained.load_earlier(config)
    with pytest.raises(ConfigError, match="needs an 'agent' or 'imagination' run"):
        pretrained.load(dyn_dir).world_model()


def test_replace_leaves_keeps_new_leaves_and_rejects_mismatches():
    fresh = {'a': jnp.zeros((2,)), 'new': jnp.ones((3,))}
    out = pretrained.replace_leaves(fresh, {'a': jnp.full((2,), 5.0)}, 'here')
    np.testing.assert_array_equal(out['a'], [5.0, 5.0])
    np.testing.assert_array_equal(out['new'], [1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match='here: parameter a has shape'):
        pretrained.replace_leaves(fresh, {'a': jnp.zeros((4,))}, 'here')
    with pytest.raises(ConfigError, match='have no place'):
        pretrained.replace_leaves(fresh, {'b': jnp.zeros((1,))}, 'here')


def test_warm_start_runs_once_and_never_on_resume(tmp_path):
    """The loop swaps loaded weights into a fresh state before step 0, and not on resume."""
    config = get_config()
    config.train.steps = 4
    config.train.checkpoint_every = 2
    config.mesh.num_devices = 1
    config.mesh.shape = (1, 1, 1)
    calls = []
    base = toy.make_phase(config)

    def warm_start(state):
        calls.append(int(state.step))
        return state.replace(params=jax.tree.map(lambda x: x * 0.0, state.params))

    phase = loop.Phase(**{**base.__dict__, 'warm_start': warm_start})
    workdir = str(tmp_path / 'toy')
    result = loop.run(phase, config, workdir)
    assert calls == [0]
    # All-zero weights of a tanh MLP get zero gradients: still zero after training means the
    # run started from the warm-started state, not from its random init.
    for value in jax.tree.leaves(nn.unbox(result.state.params)):
        np.testing.assert_array_equal(np.asarray(value), 0.0)
    config.train.steps = 6
    loop.run(phase, config, workdir)
    assert calls == [0]  # resumed from the checkpoint: no second warm start
    assert isinstance(pretrained.load(workdir).config, ml_collections.ConfigDict)


def test_agent_runs_keep_an_ema_that_later_phases_load():
    c = base_config()
    c.phase = 'agent'
    c.agent = agent_config_dict()
    assert pretrained.uses_ema(c)  # phase 3, closed-loop play and evaluation read aux/ema
    c.agent.ema_decay = 0.0
    assert not pretrained.uses_ema(c)
    c.phase = 'imagination'
    assert not pretrained.uses_ema(c)  # no imagination sub-config with an EMA
