"""benchmarks/latent_predictability.py: the regressor bar for the dynamics model (README 1b)."""

import numpy as np
import pytest
from synthetic_tokenizer import one_layer_tokenizer_settings, synthetic_tokenizer_config

from benchmarks import latent_predictability as lp
from benchmarks.bench_latents import save_random_run
from dreamer4_jax.actions import ActionComponent


def test_action_features_one_hot_and_zero_where_unlabeled():
    comps = (
        ActionComponent('key', 'categorical', 3),
        ActionComponent('stick', 'continuous', 2),
    )
    actions = {
        'key': np.array([2, 0, -1]),
        'stick': np.array([[0.5, -1.0], [1.0, 2.0], [np.nan] * 2]),
    }
    feats = lp.action_features(actions, np.array([True, True, False]), comps)
    np.testing.assert_array_equal(
        feats, [[0, 0, 1, 0.5, -1.0], [1, 0, 0, 1.0, 2.0], [0, 0, 0, 0, 0]]
    )


def test_next_frame_pairs_stay_inside_episodes_and_need_an_action():
    episode = np.array([0, 0, 0, 1, 1, 2])
    has = np.array([True, False, False, True, False, True])  # last frames carry no action
    np.testing.assert_array_equal(lp.next_frame_pairs(episode, has), [0, 3])


def roll_task_errors(seed: int, **fit_options) -> tuple[dict[str, float], float]:
    """z_{t+1} is z_t rolled over its latents by the action (-1, 0, +1). Held-out latent MSE of
    the MLP fitted with and without the action, and of copying z_t."""
    rng = np.random.default_rng(seed)
    r = 2048
    z = rng.uniform(-1, 1, (r, 4, 2)).astype(np.float32)
    a = rng.integers(0, 3, r)
    # Records laid out as (z, its successor) neighbours: pair t reads record t and t + 1.
    records = np.empty((2 * r, 4, 2), np.float32)
    records[0::2] = z
    records[1::2] = np.stack([np.roll(z[i], a[i] - 1, axis=0) for i in range(r)])
    feats = np.zeros((2 * r, 3), np.float32)
    feats[0::2] = np.eye(3, dtype=np.float32)[a]
    pairs = 2 * np.arange(r)
    train, held = pairs[:-256], pairs[-256:]
    errors = {}
    for name, f in (('with', feats), ('without', None)):
        predict = lp.fit_next_latent(
            records, f, train, hidden=64, batch=128, learning_rate=3e-3, seed=0,
            log=lambda _: None, **fit_options,
        )  # fmt: skip
        pred = predict(records[held], None if f is None else f[held])
        errors[name] = float(np.mean((pred - records[held + 1]) ** 2))
    return errors, float(np.mean((records[held] - records[held + 1]) ** 2))


def test_regressor_uses_the_action_when_it_decides_the_next_latent():
    """Only the regressor that reads the action can predict the roll; without it the best is an
    average of the three rolls, still better than copying."""
    errors, copy = roll_task_errors(0, steps=600)
    assert errors['with'] < 0.25 * errors['without'], errors
    assert errors['without'] < copy, (errors, copy)


def test_run_reports_every_baseline_on_the_eval_split(tmp_path):
    settings = one_layer_tokenizer_settings(f'{tmp_path}/data', 'lp')
    config = synthetic_tokenizer_config(settings, episodes=10)
    save_random_run(config, str(tmp_path / 'tok'))
    result = lp.run(
        str(tmp_path / 'tok'), config.data, steps=20, hidden=16, batch=8, log=lambda _: None
    )
    # Synthetic episodes: every frame but the last of an episode has an action.
    train_steps, eval_steps = result['pairs']
    assert train_steps + eval_steps == 10 * 7 and eval_steps > 0
    for key in ('copy_last', 'copy_latent', 'recon', 'mlp_no_actions', 'mlp_actions'):
        assert np.isfinite(result[f'psnr_{key}']), result
    # The regressors start as copy-latent (zero last layer), so a few steps stay near it.
    assert abs(result['latent_mse_mlp_no_actions'] - result['latent_mse_copy']) < 0.05
    assert np.isfinite(result['latent_mse_mlp_actions'])


def test_flow_objective_predicts_from_noise_and_rejects_unknown_objectives():
    """The dynamics objective on the same roll task: read at tau = 0 from pure noise, the
    action-reading MLP still predicts the rolled latent far better than the one without."""
    errors, _ = roll_task_errors(1, steps=800, objective='flow', residual=False)
    assert errors['with'] < 0.5 * errors['without'], errors
    records = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match='objective'):
        lp.fit_next_latent(
            records,
            None,
            np.array([0, 2]),
            steps=1,
            hidden=4,
            batch=2,
            learning_rate=1e-3,
            seed=0,
            objective='diffusion',
        )


def test_flow_variants_read_and_form_the_prediction_as_documented():
    x = np.array([[2.0, -1.0], [0.5, 4.0]], np.float32)
    mlp = np.array([[10.0, 20.0], [30.0, 40.0]], np.float32)
    tau = np.array([0.0, 1.0], np.float32)
    # input_scaled reads nothing at pure noise and all of x_tau when clean; plain reads x_tau.
    np.testing.assert_allclose(lp.flow_input('input_scaled', x, tau), [[0, 0], [0.5, 4.0]])
    np.testing.assert_allclose(lp.flow_input('plain', x, tau), x)
    # The skips: at tau = 0 only the MLP (preconditioned: times the data's standard deviation),
    # at tau = 1 only x_tau.
    np.testing.assert_allclose(
        lp.flow_output('gated_skip', mlp, x, tau, 0.25), [[10.0, 20.0], [0.5, 4.0]]
    )
    np.testing.assert_allclose(
        lp.flow_output('preconditioned', mlp, x, tau, 0.25), [[5.0, 10.0], [0.5, 4.0]]
    )
    # Halfway, preconditioned with unit data variance: c_skip = 0.5 / 0.5 = 1, c_out = sqrt(0.5).
    half = np.array([0.5], np.float32)
    got = lp.flow_output('preconditioned', mlp[:1], x[:1], half, 1.0)
    np.testing.assert_allclose(got, x[:1] + np.sqrt(0.5) * mlp[:1], rtol=1e-6)
    np.testing.assert_allclose(lp.flow_output('plain', mlp, x, tau, 1.0), mlp)


@pytest.mark.parametrize(
    ('options', 'match'),
    [
        (dict(objective='flow', flow_variant='sideways'), 'flow_variant'),
        (dict(objective='regression', flow_variant='input_scaled'), 'needs objective'),
        (dict(objective='flow', flow_variant='gated_skip', residual=True), 'residual=False'),
    ],
)
def test_bad_flow_variants_are_refused(options, match):
    records = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match=match):
        lp.fit_next_latent(
            records, None, np.array([0, 2]), steps=1, hidden=4, batch=2, learning_rate=1e-3,
            seed=0, **options,
        )  # fmt: skip


def test_input_scaled_flow_still_learns_the_roll_from_the_action():
    errors, _ = roll_task_errors(
        1, steps=800, objective='flow', residual=False, flow_variant='input_scaled'
    )
    assert errors['with'] < 0.5 * errors['without'], errors
