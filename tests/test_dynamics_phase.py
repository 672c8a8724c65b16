"""Dynamics phase (PAPER 6.4-6.6): step plan, training tricks, ablation switches, loop run,
open-loop evaluation, and overfitting a small set of action-dependent sequences."""

import json
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dreamer4_jax import generation, shortcut
from dreamer4_jax import model_configs as mc
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.configs import base_config
from dreamer4_jax.dynamics import Dynamics, DynamicsConfig, align_actions, init_params
from dreamer4_jax.nn import TransformerConfig
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import data_sources, loop
from dreamer4_jax.train import dynamics_phase as dp


def tiny_config(**dyn):
    c = base_config()
    c.phase = 'dynamics'
    block = dict(width=32, depth=1, num_heads=2, time_every=0)  # 1 space layer: fast compile
    c.tokenizer = mc.tokenizer_config_dict(
        height=16,
        width=16,
        patch=8,
        num_latents=4,
        latent_dim=4,
        encoder=mc.transformer_config_dict(**block),
        decoder=mc.transformer_config_dict(**block),
    )
    c.data = ml_collections.ConfigDict({'window_length': 8, 'eval_batch_size': 2})
    fields = {'k_max': 8, 'num_registers': 1, **dyn}
    c.dynamics = mc.dynamics_config_dict(
        transformer=mc.transformer_config_dict(
            width=32, depth=2, num_heads=2, num_kv_heads=1, pattern='st', time_window=6
        ),
        **fields,
    )
    c.train.batch_size = 8
    return c


def test_plan_validation_messages():
    assert dp.make_plan(tiny_config()).short_length == 8  # alternating off: T1 = T2
    bad = [
        (dict(short_length=3, short_mode='reshape'), 'divide it'),
        (dict(short_length=9), 'must be in \\[1, data.window_length=8\\]'),
        (dict(short_mode='slice'), "must be 'crop' or 'reshape'"),
        (dict(short_length=4, long_every=0), 'no long batch would ever run'),
        (dict(teacher_rows=0.3), 'must be 1/s for an integer s'),
        (dict(teacher_rows=1 / 16), 'dividing train.batch_size=8'),
        (dict(independent_fraction=1.5), 'must be in \\[0, 1\\]'),
        (dict(ema_decay=1.0), 'must be in \\[0, 1\\)'),
        (dict(latents='disk'), "must be 'on_the_fly' or 'batch'"),
    ]
    for fields, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            dp.make_plan(tiny_config(**fields))
    # Plain diffusion forcing has no teacher rows whatever teacher_rows says.
    assert dp.make_plan(tiny_config(shortcut=False, teacher_rows=0.3)).teacher_stride == 0
    with pytest.raises(ConfigError, match='tokenizer_workdir is empty'):
        dp.make_phase(tiny_config())


def test_long_batch_schedule():
    plan = dp.make_plan(tiny_config(short_length=4, long_every=5, long_only_after=12))
    assert plan.rows(4) == 8 and plan.num_independent(4) == 2  # crop: same rows, 30 % of 8
    reshape = dp.make_plan(tiny_config(short_length=4, short_mode='reshape'))
    assert reshape.rows(4) == 16 and reshape.rows(8) == 8 and reshape.num_independent(4) == 5
    got = [bool(dp.is_long_step(plan, jnp.asarray(s))) for s in range(16)]
    want = [(s + 1) % 5 == 0 or s >= 12 for s in range(16)]
    assert got == want


def test_row_helpers():
    x = jnp.arange(2 * 8).reshape(2, 8)
    np.testing.assert_array_equal(
        dp.to_length(x, 4), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    )
    np.testing.assert_array_equal(dp.to_length(x, 3, 'crop'), [[0, 1, 2], [8, 9, 10]])
    rows = jnp.arange(8)
    teacher, rest = dp.split_teacher_rows(rows, 4)
    np.testing.assert_array_equal(teacher, [0, 4])
    np.testing.assert_array_equal(rest, [1, 2, 3, 5, 6, 7])
    chosen = dp.choose_rows(jax.random.key(0), 10, 3)
    assert int(chosen.sum()) == 3
    assert not bool(dp.choose_rows(jax.random.key(0), 10, 0).any())


def test_ema_decay_warms_up_to_the_configured_value():
    got = [float(dp.ema_decay_at(jnp.asarray(s), 0.999)) for s in (0, 10, 400, 100_000)]
    np.testing.assert_allclose(got[:3], [0.1, 11 / 20, 401 / 410], rtol=1e-6)
    assert got[3] == pytest.approx(0.999)


def test_ema_update_equation():
    ema = {'w': jnp.asarray([1.0, 2.0])}
    new = dp.ema_update(ema, {'w': jnp.asarray([3.0, 6.0])}, 0.9)
    np.testing.assert_allclose(new['w'], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 6])


def test_ablation_switches_map_to_one_field_each():
    tok = mc.tokenizer_config_from(tiny_config().tokenizer)
    base = tiny_config()
    obj = mc.shortcut_config_from(base.dynamics)
    assert (obj.prediction, obj.loss_space, obj.ramp, obj.shortcut) == ('x', 'x', True, True)
    assert mc.shortcut_config_from(tiny_config(prediction='v').dynamics).prediction == 'v'
    assert mc.shortcut_config_from(tiny_config(loss_space='v').dynamics).loss_space == 'v'
    assert not mc.shortcut_config_from(tiny_config(ramp=False).dynamics).ramp
    assert not mc.shortcut_config_from(tiny_config(shortcut=False).dynamics).shortcut
    c = tiny_config()
    c.dynamics.transformer.dense = True
    assert set(mc.dynamics_config_from(c.dynamics, tok).transformer.layer_kinds) == {
        'space',
        'dense',
    }
    c = tiny_config()
    c.dynamics.transformer.num_kv_heads = None  # no GQA: one KV head per query head
    assert mc.dynamics_config_from(c.dynamics, tok).transformer.kv_heads == 2
    assert mc.dynamics_config_from(tiny_config(num_registers=0).dynamics, tok).num_registers == 0
    assert mc.dynamics_config_from(tiny_config(action_space='minecraft').dynamics, tok).actions == (
        ('keys', 'binary', 23),
        ('mouse', 'categorical', 121),
    )
    with pytest.raises(ConfigError, match='unknown action_space'):
        mc.dynamics_config_from(tiny_config(action_space='joystick').dynamics, tok)


def _example(i, length=8, size=16):
    r = np.random.default_rng(int(i))
    return {
        'image': r.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
        'action': {'discrete': r.integers(0, 17, (length,)).astype(np.int32)},
        'has_action': r.random(length) < 0.8,
        'reward': np.zeros(length, np.float32),
        'is_first': np.arange(length) == 0,
        'is_last': np.zeros(length, bool),
        'is_terminal': np.zeros(length, bool),
    }


def test_phase_trains_and_evaluates(tmp_path, monkeypatch):
    """Loop run with every trick on: alternating lengths compile once, GIF + metrics written."""
    config = tiny_config(
        short_length=4,
        long_every=2,
        teacher_rows=0.5,
        independent_fraction=0.25,
        eval_context=3,
        ema_decay=0.9,
    )
    config.train.steps = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 100
    config.mesh.num_devices = 2  # data parallel over 2 fake devices (strided teacher rows)

    def windows(cfg, pi, pc, **kw):  # kw: mode, encoder (the latent cache; unused here)
        ds = grain.MapDataset.range(10_000).map(_example)
        return iter(ds[pi::pc].batch(cfg.train.batch_size // pc, drop_remainder=True))

    def eval_batch(cfg):
        return jax.tree.map(lambda *x: np.stack(x), *[_example(10_000 + i) for i in range(2)])

    monkeypatch.setattr(data_sources, 'train_windows', windows)
    monkeypatch.setattr(data_sources, 'eval_batch', eval_batch)
    tok_cfg = mc.tokenizer_config_from(config.tokenizer)
    tok_params = jax.jit(
        lambda r: nn.unbox(Tokenizer(tok_cfg).init(r, jnp.zeros((1, 1, 16, 16, 3)))['params'])
    )(jax.random.key(0))
    phase = dp.make_phase(config, (tok_params, tok_cfg))
    workdir = str(tmp_path / 'dyn')
    result = loop.run(phase, config, workdir)  # raises if the step were traced twice
    assert result.step == 2
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    longs = [r['long_batch'] for r in rows if 'long_batch' in r]
    assert longs == [0.0, 1.0]  # step 0 is short (cropped to 4 frames), step 1 long
    assert all(np.isfinite(r['loss/total']) for r in rows if 'loss/total' in r)
    evals = [r for r in rows if 'eval/psnr' in r]
    assert evals and {
        'eval/psnr_h01',
        'eval/ssim_h05',
        'eval/counterfactual_mse',
        'eval/noise_mse',
        'eval/psnr_copy_last',
        'eval/psnr_copy_latent_h01',
        'eval/latent_mse_h01',
        'eval/latent_mse_copy_h05',
        'eval/psnr_recon_h02',
        'eval/psnr_sample_mean_h03',  # the default eval_samples = 8
    } <= set(evals[-1])
    assert os.path.exists(os.path.join(workdir, 'eval', 'open_loop_000002.gif'))
    ema, params = result.state.aux['ema'], result.state.params
    gap = jax.tree.map(lambda e, p: float(jnp.max(jnp.abs(e - p))), ema, params)
    assert max(jax.tree.leaves(gap)) > 0  # EMA lags the trained weights


def wave_world(seed, b, t, n=8):
    """Latent 'video': a periodic pattern that shifts over the tokens by an action-set amount.

    Frame t + 1 = frame t shifted by omega[action_t] (never 0), so copying the last frame is
    wrong everywhere and the future cannot be predicted without the actions.
    """
    r = np.random.default_rng(seed)
    omega = np.array([-0.7, 0.5, 1.2])
    a = r.integers(0, 3, (b, t))
    theta = np.zeros((b, t))
    theta[:, 0] = r.uniform(0, 2 * np.pi, b)
    for i in range(1, t):
        theta[:, i] = theta[:, i - 1] + omega[a[:, i - 1]]
    ang = theta[..., None] + np.linspace(0, 2 * np.pi, n, endpoint=False)
    z = 0.9 * np.stack([np.sin(ang), np.cos(ang), np.sin(2 * ang), np.cos(2 * ang)], -1)
    return jnp.asarray(z, jnp.float32), {'a': jnp.asarray(a, jnp.int32)}, jnp.ones((b, t), bool)


def test_overfits_action_dependent_sequences():
    """Shortcut forcing (a quarter of the rows bootstrap) learns 8 sequences; 4-step cached
    generation with the EMA weights from 3 real frames + real actions beats copying the last
    context frame by a wide margin (measured: 8-11 dB over three seeds; raw weights 4-8 dB)."""
    b, t, ctx = 8, 6, 3
    tc = TransformerConfig(
        width=64, depth=2, num_heads=4, num_kv_heads=2, time_every=2, time_window=8
    )
    model = Dynamics(
        DynamicsConfig(
            num_latents=8,
            latent_dim=4,
            actions=(('a', 'categorical', 3),),
            num_registers=2,
            k_max=16,
            transformer=tc,
        )
    )
    params = nn.unbox(init_params(model, jax.random.key(0)))
    objective = shortcut.ShortcutConfig(k_max=16)
    plan = dp.Plan(
        batch=b,
        long_length=t,
        short_length=t,
        short_mode='crop',
        long_every=0,
        long_only_after=-1,
        teacher_stride=4,
        independent_fraction=0.0,
        ema_decay=0.98,
    )
    z1, acts, has = wave_world(0, b, t)
    acts, has = align_actions(acts, has)
    tx = optax.adam(3e-3)

    def loss(p, key):
        return dp.shortcut_frame_loss(model, p, objective, plan, z1, acts, has, key, 0)[0]

    @jax.jit
    def train(params, rng):
        def step(carry, key):
            p, opt, ema = carry
            updates, opt = tx.update(jax.grad(loss)(p, key), opt, p)
            p = optax.apply_updates(p, updates)
            return (p, opt, dp.ema_update(ema, p, plan.ema_decay)), None

        keys = jax.random.split(rng, 800)
        return jax.lax.scan(step, (params, tx.init(params), params), keys)[0][2]

    ema = train(params, jax.random.key(2))
    gen = jax.jit(
        lambda p: generation.rollout(model, p, z1[:, :ctx], acts, has, jax.random.key(2), t - ctx)
    )(ema)
    real = z1[:, ctx:]
    mse = float(jnp.mean((gen - real) ** 2))
    copy_last = float(jnp.mean((z1[:, ctx - 1 : ctx] - real) ** 2))
    # PSNR gain over the copy baseline (same peak value for both, so the ratio of MSEs).
    gain_db = 10 * np.log10(copy_last / mse)
    assert gain_db > 6.0, (mse, copy_last)


@pytest.mark.parametrize('prediction', ['x', 'v'])
def test_teacher_passes_on_teacher_rows_only_change_nothing(prediction):
    """Running the teacher passes only on rows b % s == 0 gives the full-batch terms exactly."""
    k_max, stride = 8, 2
    rng = np.random.default_rng(0)
    z1 = jnp.asarray(rng.uniform(-1, 1, (4, 3, 2, 2)), jnp.float32)
    z0 = jnp.asarray(rng.normal(size=(4, 3, 2, 2)), jnp.float32)
    tau, d = shortcut.sample_tau_d(jax.random.key(0), (4, 3), k_max, bootstrap_fraction=0.8)
    rows = (jnp.arange(4) % stride == 0)[:, None]
    d = jnp.where(rows, d, 1.0 / k_max)  # flow rows: d_min only
    tau = jnp.where(rows, tau, jnp.round(tau * k_max) / k_max)

    def net(z, t, dd):  # a closed-form stand-in that depends on every input
        return jnp.tanh(0.7 * z + t[..., None, None] - 2.0 * dd[..., None, None])

    def teacher(z, t, dd):
        out = net(*dp.split_teacher_rows((z, t, dd), stride)[0])
        neutral = z if prediction == 'x' else jnp.zeros_like(z)
        return dp._put_teacher_rows(neutral, out, stride)

    cfg = shortcut.ShortcutConfig(k_max=k_max, prediction=prediction)
    full = shortcut.shortcut_loss_terms(net, z1, z0, tau, d, cfg)
    sub = shortcut.shortcut_loss_terms(net, z1, z0, tau, d, cfg, teacher_predict=teacher)
    assert float(full['bootstrap_mask'].sum()) > 0
    # 'bootstrap' of flow rows is meaningless (masked out of 'loss'); everything used is equal.
    full['bootstrap'] = full['bootstrap'] * full['bootstrap_mask']
    sub['bootstrap'] = sub['bootstrap'] * sub['bootstrap_mask']
    for key in full:
        np.testing.assert_allclose(sub[key], full[key], rtol=1e-6, atol=1e-7)
