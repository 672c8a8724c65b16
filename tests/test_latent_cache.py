"""Latent cache (dreamer4_jax/data/latent_cache.py): what it stores, when it is stale, that an
interrupted encode leaves nothing behind, and that the phases train from it."""

import copy
import dataclasses
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer4_jax import checkpoint, pretrained, world_model
from dreamer4_jax import model_configs as mc
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.configs import base_config
from dreamer4_jax.data import latent_cache, pipeline
from dreamer4_jax.data.config import MissingDataError, default_data_config
from dreamer4_jax.data.synthetic import build_synthetic_dataset
from dreamer4_jax.eval import closed_loop
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import data_sources, dynamics_phase
from dreamer4_jax.train import state as state_lib

T = 6  # window length of the phases here
WINDOW = 3  # the encoder's time window
# Two time layers (space, time, space, time), window 3: frame t sees 2 x (3 - 1) = 4 frames
# back through the stacked time layers.
REACH = 4


def _tokenizer_run_config(data):
    c = base_config()
    c.phase = 'tokenizer'
    c.data = data
    c.tokenizer = mc.tokenizer_config_dict(
        patch=16,
        num_latents=4,
        latent_dim=3,
        encoder=mc.transformer_config_dict(
            width=16, depth=4, num_heads=2, time_every=2, time_window=WINDOW
        ),
        decoder=mc.transformer_config_dict(width=16, depth=1, num_heads=2, time_every=0),
    )
    return c


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A tiny dataset and a saved tokenizer checkpoint (random weights: no training needed)."""
    root = tmp_path_factory.mktemp('latents')
    data = default_data_config()
    data.dir, data.name, data.window_length = str(root / 'data'), 'tiny', T
    data.eval_fraction = 0.2
    data.latents = 'cache'
    build_synthetic_dataset(data, lengths=(12, 9, 14, 7, 11))
    config = _tokenizer_run_config(data)
    rs = np.random.RandomState(0)
    params = jax.tree.map(
        lambda s: (0.3 * rs.standard_normal(s.shape)).astype(s.dtype),
        pretrained.abstract(config).params(),
    )
    tok_dir = str(root / 'tokenizer')
    state = state_lib.TrainState(step=jnp.asarray(5), params=params, opt_state={}, aux={})
    ckpt = checkpoint.Checkpointer(tok_dir)
    ckpt.save(5, state, None, jax.random.key(0), config)
    ckpt.close()
    run = pretrained.load(tok_dir, expect='tokenizer')
    return data, run, latent_cache.encoder_of(run, run.params())


def _encoder_in(tmp_path, encoder):
    """The same tokenizer checkpoint, its cache in a folder of its own."""
    return dataclasses.replace(encoder, workdir=str(tmp_path))


def test_cached_latents_are_what_the_closed_loop_sees(setup, tmp_path):
    data, _, encoder = setup
    encoder = _encoder_in(tmp_path, encoder)
    # Chunks of 5 frames, 2 episodes per batch: chunk and batch boundaries inside episodes.
    source = latent_cache.build(encoder, data, 'train', chunk=5, episodes_per_batch=2)
    assert source.path == tmp_path / 'latents' / 'tiny' / 'train'
    z_all = source.open()
    meta = pipeline.load_meta(data)
    tok = Tokenizer(encoder.config)

    # The rule: the encoder over the episode from its first frame, frame by frame with its KV
    # cache, exactly as closed-loop play encodes what it observes.
    ds = pipeline.make_dataset(
        data, batch_size_per_process=1, window_length=14, num_epochs=1, latents=source
    )
    (whole,) = list(ds)  # the one 14-frame window: episode 2, from its first frame
    assert whole['is_first'][0, 0] and int(whole['episode_id'][0, 0]) == 2
    start = int(meta.splits['train'].offsets[2])
    np.testing.assert_array_equal(whole['latents'][0], z_all[start : start + 14])
    step = jax.jit(lambda p, x, c: closed_loop.encode_step(tok, p, x, c))
    cache = closed_loop.encoder_cache(tok, 1, WINDOW)
    frames = whole['image'].astype(np.float32) / 255.0
    got = []
    for t in range(14):
        z, cache = step(encoder.params, frames[:, t : t + 1], cache)
        got.append(np.asarray(z[0, 0]))
    np.testing.assert_allclose(whole['latents'][0], np.stack(got), atol=2e-5)

    # On-the-fly encoding of windows: equal wherever a frame's context lies inside its window.
    encode = jax.jit(lambda p, x: world_model.encode_frames(tok, p, x))
    ds = pipeline.make_dataset(
        data, batch_size_per_process=8, window_length=T, num_epochs=1, latents=source
    )
    starts, mid = 0, 0
    for batch in ds:
        fly = np.asarray(encode(encoder.params, batch['image']))
        for row in range(fly.shape[0]):
            if batch['is_first'][row, 0]:
                starts += 1
                np.testing.assert_allclose(batch['latents'][row], fly[row], atol=2e-5)
            else:
                mid += 1
                np.testing.assert_allclose(
                    batch['latents'][row, REACH:], fly[row, REACH:], atol=2e-5
                )
                # Earlier frames: the cache keeps their in-episode history, the window cuts it.
                assert np.abs(batch['latents'][row, :REACH] - fly[row, :REACH]).max() > 1e-4
    assert starts and mid


def test_a_cache_of_another_checkpoint_is_stale(setup, tmp_path):
    data, _, encoder = setup
    encoder = _encoder_in(tmp_path, encoder)
    latent_cache.build(encoder, data, 'train', progress=False)
    assert latent_cache.ensure(encoder, data, 'train', may_build=False).open().shape[1:] == (4, 3)
    later = dataclasses.replace(encoder, step=6)
    with pytest.raises(latent_cache.StaleLatentsError, match=r'tokenizer_step.*stored step 5'):
        latent_cache.ensure(later, data, 'train', may_build=False)
    moved = jax.tree.map(lambda x: x + 1e-3, encoder.params)
    retrained = dataclasses.replace(encoder, params=moved)
    with pytest.raises(latent_cache.StaleLatentsError, match='tokenizer_params_sha256'):
        latent_cache.ensure(retrained, data, 'train', may_build=False)
    # The pipeline checks the key when it opens the cache, not only `ensure`.
    meta = pipeline.load_meta(data)
    stale = latent_cache.LatentSource(
        latent_cache.cache_dir(encoder, data, 'train'),
        latent_cache.expected_key(later, meta, 'train'),
    )
    with pytest.raises(latent_cache.StaleLatentsError):
        pipeline.make_dataset(data, batch_size_per_process=2, latents=stale)
    # ensure() re-encodes a stale cache; then the old checkpoint's key is the stale one.
    source = latent_cache.ensure(later, data, 'train', progress=False)
    assert json.loads((source.path / 'key.json').read_text())['tokenizer_step'] == 6
    with pytest.raises(latent_cache.StaleLatentsError):
        latent_cache.ensure(encoder, data, 'train', may_build=False)


def test_an_interrupted_encode_leaves_nothing_half_written(setup, tmp_path, monkeypatch):
    data, _, encoder = setup
    encoder = _encoder_in(tmp_path, encoder)
    final = latent_cache.cache_dir(encoder, data, 'train')

    def interrupted(enc, meta, split, out, **kw):
        out[:3] = 1.0
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(latent_cache, 'encode_split', interrupted)
        with pytest.raises(KeyboardInterrupt):
            latent_cache.build(encoder, data, 'train', progress=False)
    assert not final.exists() and list(final.parent.iterdir()) == []
    with pytest.raises(MissingDataError, match='no latent cache'):
        latent_cache.ensure(encoder, data, 'train', may_build=False)

    # A killed encode (no chance to clean up) leaves a hidden folder that never counts as a
    # cache; the next encode removes it once its process is gone.
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True)  # fmt: skip
    killed = final.parent / '.train.incomplete-killed'
    killed.mkdir()
    (killed / 'owner.json').write_text(
        json.dumps({'host': __import__('socket').gethostname(), 'pid': int(dead.stdout)})
    )
    (killed / 'latents.npy').write_bytes(b'half')
    latent_cache.build(encoder, data, 'train', progress=False)
    assert sorted(p.name for p in final.parent.iterdir()) == ['train']

    # An interrupted re-encode of a stale cache keeps the complete old one.
    later = dataclasses.replace(encoder, step=6)
    with monkeypatch.context() as m:
        m.setattr(latent_cache, 'encode_split', interrupted)
        with pytest.raises(KeyboardInterrupt):
            latent_cache.ensure(later, data, 'train', progress=False)
    assert latent_cache.ensure(encoder, data, 'train', may_build=False).open().shape[0] > 0
    assert sorted(p.name for p in final.parent.iterdir()) == ['train']


@pytest.mark.slow  # end to end: checkpoint -> encode -> pipeline -> a compiled dynamics step
def test_dynamics_phase_trains_from_cached_latents(setup, tmp_path):
    data, run, _ = setup
    c = base_config()
    c.phase = 'dynamics'
    c.data = data
    c.train.batch_size = 4
    c.dynamics = mc.dynamics_config_dict(
        tokenizer_workdir=run.workdir,
        shortcut=False,  # plain diffusion forcing: the smallest step to compile
        k_max=8,
        num_registers=1,
        transformer=mc.transformer_config_dict(
            width=16, depth=1, num_heads=2, num_kv_heads=1, pattern='t', time_window=6
        ),
    )
    phase = dynamics_phase.make_phase(c)
    batch = next(phase.make_data(0, 1))  # encodes the cache next to the tokenizer run
    assert 'latents' in batch and 'image' not in batch
    assert (latent_cache.cache_dir(latent_cache.encoder_of(run, None), data, 'train')).is_dir()
    state = jax.jit(lambda k: nn.unbox(phase.init(k)))(jax.random.key(0))
    new, metrics = jax.jit(phase.train_step)(state, batch, jax.random.key(1), phase.constants())
    assert np.isfinite(float(metrics['loss/total']))
    assert int(new.step) == 1
    # Reused, not re-encoded, by the next phase that reads the same tokenizer checkpoint.
    key_file = latent_cache.cache_dir(latent_cache.encoder_of(run, None), data, 'train')
    key_file = key_file / 'key.json'
    mtime = key_file.stat().st_mtime_ns
    next(dynamics_phase.make_phase(c).make_data(0, 1))
    assert key_file.stat().st_mtime_ns == mtime


def test_cache_mode_needs_a_tokenizer_run_and_a_known_mode(setup):
    data, _, _ = setup
    c = base_config()
    c.phase = 'tokenizer'
    c.data = copy.deepcopy(data)
    with pytest.raises(ConfigError, match="phase 'tokenizer' loads none"):
        data_sources.train_windows(c, 0, 1)
    c.data.latents = 'disk'
    with pytest.raises(ConfigError, match="must be 'on_the_fly' or 'cache'"):
        data_sources.uses_latent_cache(c)
