"""How much of the next frame one latent and the action predict: the bar for a dynamics model.

  python -m benchmarks.latent_predictability --tokenizer_workdir=runs/demo/tokenizer \
      [--experiment=experiments/craftax_tiny.py] [--steps=3000] [--hidden=1024] \
      [--objective=flow [--no_ramp] [--flow_variant=plain]] [--no_residual]

A finished tokenizer's latents of the experiment's dataset (the latent cache, encoded once per
split if missing: dreamer4_jax/data/latent_cache.py) give pairs (z_t, a_t) -> z_{t+1} inside
episodes, a_t being the action taken after frame t (DESIGN 3). Two regressors are fitted on the
train split, the same 2-layer MLP predicting z_{t+1} - z_t: one from z_t and a_t, one from z_t
alone. On every pair of the eval split it reports the decoded prediction's PSNR of the mean MSE
against the real next frame, next to the open-loop evaluation's baselines at horizon 1
(dreamer4_jax/eval/open_loop.py): copy-last (the real frame t), copy-latent (z_t decoded) and the
tokenizer's reconstruction of frame t+1 (the ceiling).

`--objective=flow` trains the same MLPs with the dynamics phase's objective instead (x-prediction
from a noisy z_{t+1} at a random signal level, ramp weight; PAPER 6) and reads their one-step
prediction from pure noise; `--no_residual` makes the MLP predict z_{t+1} itself, as the dynamics
model's head does. `--flow_variant` changes how the MLP reads the noisy latent or forms its output
(FLOW_VARIANTS), to find which part of the objective loses the actions.

Why: the dynamics model has to beat copy-last (issue: the demo's world model), and a generative
sampler cannot beat a regressor of the conditional mean in expected PSNR. What a deterministic
predictor from one latent reaches says whether the tokenizer's latents and the actions carry the
next frame at all; the gap between the two regressors is what the actions are worth (a dynamics
model whose `counterfactual_mse` stays near zero leaves it unused); the flow rows say what the
objective costs at the data's size, apart from the transformer.

Prints progress while fitting and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamer4_jax import config_checks, pretrained
from dreamer4_jax.data import latent_cache
from dreamer4_jax.data.build import load_meta
from dreamer4_jax.eval.open_loop import psnr_of_mean_mse
from dreamer4_jax.tokenizer import Tokenizer


def action_features(
    actions: Mapping[str, np.ndarray], has_action: np.ndarray, components: Sequence
) -> np.ndarray:
    """float32 [R, A]: categorical components one-hot, binary and continuous ones as they are;
    rows without an action (has_action False) are all zeros."""
    parts = []
    for c in components:
        a = np.asarray(actions[c.name])
        if c.kind == 'categorical':
            f = np.eye(int(c.size), dtype=np.float32)[np.clip(a.astype(np.int64), 0, c.size - 1)]
        else:
            f = np.nan_to_num(a.astype(np.float32)).reshape(len(a), -1)
        parts.append(np.where(np.asarray(has_action, bool)[:, None], f, 0.0))
    return np.concatenate(parts, axis=1).astype(np.float32)


def next_frame_pairs(episode_id: np.ndarray, has_action: np.ndarray) -> np.ndarray:
    """Record indices t whose next record is frame t + 1 of the same episode, with an action."""
    ep = np.asarray(episode_id)
    same = ep[:-1] == ep[1:]
    return np.nonzero(same & np.asarray(has_action, bool)[:-1])[0]


OBJECTIVES = ('regression', 'flow')
TAU_CHANNELS = 16  # the signal level is fed as this many copies (one input among ~1,000)
# How the flow MLP reads x_tau = tau z_{t+1} + (1 - tau) noise and forms its prediction.
FLOW_VARIANTS = {
    'plain': 'reads x_tau as it is, outputs the prediction (the dynamics model)',
    'tau_zero': 'trains at tau = 0 only: a regressor with a pure-noise input',
    'input_scaled': 'reads tau * x_tau (nothing at pure noise, all of x_tau when clean)',
    'gated_skip': 'outputs tau * x_tau + (1 - tau) * MLP',
    'preconditioned': 'outputs c_skip(tau) x_tau + c_out(tau) MLP, the linear denoiser for data '
    'of variance s2 (EDM-style, for the tau interpolation)',
}
SKIP_VARIANTS = ('gated_skip', 'preconditioned')


def flow_input(variant: str, x_tau, tau):
    """What the flow MLP reads of x_tau [M, D] at signal levels tau [M]."""
    return tau[:, None] * x_tau if variant == 'input_scaled' else x_tau


def flow_output(variant: str, mlp_out, x_tau, tau, data_var: float):
    """The prediction of z_{t+1} [M, D] from the MLP's output and x_tau.

    preconditioned: with x_tau = tau z + (1 - tau) n, z of variance s2, the least-squares linear
    estimate of z is c_skip x_tau with c_skip = tau s2 / (tau^2 s2 + (1 - tau)^2); c_out, the
    standard deviation of what that estimate leaves, scales the MLP's correction. At tau = 0 the
    prediction is sqrt(s2) MLP, at tau = 1 it is x_tau.
    """
    t = tau[:, None]
    if variant == 'gated_skip':
        return t * x_tau + (1.0 - t) * mlp_out
    if variant == 'preconditioned':
        den = t * t * data_var + (1.0 - t) ** 2
        return (t * data_var / den) * x_tau + ((1.0 - t) * jnp.sqrt(data_var / den)) * mlp_out
    return mlp_out


def fit_next_latent(
    z_RNC: np.ndarray,
    feats_RA: np.ndarray | None,
    pairs: np.ndarray,
    *,
    steps: int,
    hidden: int,
    batch: int,
    learning_rate: float,
    seed: int,
    objective: str = 'regression',
    residual: bool = True,
    ramp: bool = True,
    flow_variant: str = 'plain',
    log: Callable[[str], None] = print,
) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """Fits a 2-layer MLP that predicts z_{t+1} from z_t (and a_t) on `pairs`; Adam, cosine decay.

    objective 'regression': MSE of MLP([z_t, a_t]) against z_{t+1}. 'flow': the dynamics phase's
    objective reduced to one frame (PAPER 6): the MLP also reads x_tau = tau z_{t+1} + (1 - tau)
    noise and tau ~ U(0, 1), predicts z_{t+1} (x-prediction) with the ramp weight 0.9 tau + 0.1
    (`ramp`), and predicts at tau = 0 from pure noise (one sampling step: its mean prediction).
    residual: the MLP's output is added to z_t (it starts as copy-latent), else it is the
    prediction itself, as the dynamics model's head is. flow_variant: FLOW_VARIANTS (flow only;
    the skip variants form their own output and exclude `residual`). feats_RA None: no action
    input. Returns predict(z [M, N, C], feats [M, A] or None) -> [M, N, C].
    """
    if objective not in OBJECTIVES:
        raise ValueError(f'objective {objective!r} must be one of {OBJECTIVES}')
    if flow_variant not in FLOW_VARIANTS:
        raise ValueError(f'flow_variant {flow_variant!r} must be one of {tuple(FLOW_VARIANTS)}')
    if flow_variant != 'plain' and objective != 'flow':
        raise ValueError(f'flow_variant {flow_variant!r} needs objective="flow"')
    if flow_variant in SKIP_VARIANTS and residual:
        raise ValueError(f'flow_variant {flow_variant!r} forms its own output: set residual=False')
    flow = objective == 'flow'
    shape = z_RNC.shape[1:]
    d = int(np.prod(shape))
    data_var = float(np.var(z_RNC))

    def inputs(z, f, x_tau, tau):
        parts = [jnp.reshape(z, (z.shape[0], d))]
        if flow:
            parts += [
                flow_input(flow_variant, x_tau, tau),
                jnp.broadcast_to(tau[:, None], (z.shape[0], TAU_CHANNELS)),
            ]
        return jnp.concatenate(parts if f is None else [*parts, f], axis=1)

    din = d + (d + TAU_CHANNELS if flow else 0) + (0 if feats_RA is None else feats_RA.shape[1])
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        'w1': jax.random.normal(k1, (din, hidden)) / np.sqrt(din),
        'b1': jnp.zeros(hidden),
        'w2': jax.random.normal(k2, (hidden, hidden)) / np.sqrt(hidden),
        'b2': jnp.zeros(hidden),
        'w3': jnp.zeros((hidden, d)),  # starts as copy-latent (residual) or zeros
        'b3': jnp.zeros(d),
    }

    def forward(p, z, f, x_tau, tau):
        x = inputs(z, f, x_tau, tau)
        h = jax.nn.gelu(x @ p['w1'] + p['b1'])
        h = jax.nn.gelu(h @ p['w2'] + p['b2'])
        out = flow_output(flow_variant, h @ p['w3'] + p['b3'], x_tau, tau, data_var)
        out = out + (x[:, :d] if residual else 0.0)
        return out.reshape(z.shape[0], *shape)

    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    opt_state = tx.init(params)

    @jax.jit
    def step(p, s, z, f, y, key):
        m = z.shape[0]
        y_flat = jnp.reshape(y, (m, d))
        k_tau, k_noise = jax.random.split(key)
        uniform = flow and flow_variant != 'tau_zero'
        tau = jax.random.uniform(k_tau, (m,)) if uniform else jnp.zeros((m,))
        x_tau = tau[:, None] * y_flat + (1.0 - tau[:, None]) * jax.random.normal(k_noise, (m, d))
        weight = 0.9 * tau + 0.1 if (flow and ramp) else jnp.ones((m,))

        def loss_fn(p):
            err = jnp.mean(((forward(p, z, f, x_tau, tau) - y) ** 2).reshape(m, d), axis=1)
            return jnp.mean(weight * err)

        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    start = time.time()
    for i in range(1, steps + 1):
        t = pairs[rng.integers(0, len(pairs), batch)]
        f = None if feats_RA is None else feats_RA[t]
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, z_RNC[t], f, z_RNC[t + 1], sub)
        if i % 500 == 0 or i == steps:
            took = time.time() - start
            log(f'  step {i}/{steps}  train loss {float(loss):.4f}  ({took:.0f} s)')

    @jax.jit
    def predict(p, z, f, key):
        m = z.shape[0]
        return forward(p, z, f, jax.random.normal(key, (m, d)), jnp.zeros((m,)))

    return lambda z, f: np.asarray(predict(params, jnp.asarray(z), f, jax.random.key(seed + 2)))


def _split_arrays(meta, split: str):
    """Images uint8 [R, H, W, 3], {component: [R, ...]}, has_action [R], episode_id [R]."""
    import tensorflow_datasets as tfds  # deferred: seconds to import

    source = tfds.builder_from_directory(str(meta.tfds_dir)).as_data_source(split=split)
    records = source.__getitems__(list(range(len(source))))
    actions = {
        c.name: np.asarray([r['action'][c.name] for r in records])
        for c in meta.action_space.components
    }
    return (
        np.stack([r['image'] for r in records]),
        actions,
        np.asarray([r['has_action'] for r in records], bool),
        np.asarray([r['episode_id'] for r in records], np.int64),
    )


def run(
    tokenizer_workdir: str,
    data_config,
    *,
    steps: int = 3000,
    hidden: int = 1024,
    batch: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
    objective: str = 'regression',
    residual: bool = True,
    ramp: bool = True,
    flow_variant: str = 'plain',
    log: Callable[[str], None] = print,
) -> dict:
    """The table of the module doc as a dict of PSNRs (dB) and latent MSEs on the eval split."""
    run_ = pretrained.load(tokenizer_workdir, expect='tokenizer')
    params = run_.params()
    encoder = latent_cache.encoder_of(run_, params)
    meta = load_meta(data_config)
    components = meta.action_space.components
    split = {}
    for name in ('train', 'eval'):
        z = latent_cache.ensure(encoder, data_config, name).open()
        images, actions, has, episodes = _split_arrays(meta, name)
        split[name] = dict(
            z=np.asarray(z, np.float32),
            images=images,
            feats=action_features(actions, has, components),
            pairs=next_frame_pairs(episodes, has),
        )
    train, held = split['train'], split['eval']
    log(f'{len(train["pairs"])} train pairs, {len(held["pairs"])} held-out pairs')

    model = Tokenizer(run_.tokenizer_config())
    decode = jax.jit(
        lambda z: jnp.clip(
            model.apply({'params': params}, z[:, None], method=Tokenizer.decode), 0, 1
        )
    )
    t = held['pairs']
    truth = held['images'][t + 1].astype(np.float32)[:, None] / 255.0

    def psnr_of_latents(z_MNC: np.ndarray) -> float:
        frames = np.concatenate(
            [np.asarray(decode(z_MNC[i : i + 256])) for i in range(0, len(z_MNC), 256)]
        )
        return float(psnr_of_mean_mse(frames, truth)[0])

    def latent_mse(z_MNC: np.ndarray) -> float:
        return float(np.mean((z_MNC - held['z'][t + 1]) ** 2))

    result = {
        'psnr_copy_last': float(
            psnr_of_mean_mse(held['images'][t].astype(np.float32)[:, None] / 255.0, truth)[0]
        ),
        'psnr_copy_latent': psnr_of_latents(held['z'][t]),
        'psnr_recon': psnr_of_latents(held['z'][t + 1]),
        'latent_mse_copy': latent_mse(held['z'][t]),
    }
    for name, use_actions in (('no_actions', False), ('actions', True)):
        log(f'fitting the regressor with {name.replace("_", " ")}')
        predict = fit_next_latent(
            train['z'],
            train['feats'] if use_actions else None,
            train['pairs'],
            steps=steps,
            hidden=hidden,
            batch=batch,
            learning_rate=learning_rate,
            seed=seed,
            objective=objective,
            residual=residual,
            ramp=ramp,
            flow_variant=flow_variant,
            log=log,
        )
        pred = predict(held['z'][t], held['feats'][t] if use_actions else None)
        result[f'psnr_mlp_{name}'] = psnr_of_latents(pred)
        result[f'latent_mse_mlp_{name}'] = latent_mse(pred)
    result.update(
        pairs=[len(train['pairs']), len(t)],
        steps=steps,
        hidden=hidden,
        objective=objective,
        residual=residual,
        ramp=ramp,
        flow_variant=flow_variant,
    )
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tokenizer_workdir', required=True)
    parser.add_argument('--experiment', default='experiments/craftax_tiny.py')
    parser.add_argument('--data_dir', default=None, help='overrides config.data.dir')
    parser.add_argument('--steps', type=int, default=3000)
    parser.add_argument('--hidden', type=int, default=1024)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--learning_rate', type=float, default=1e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--objective',
        choices=OBJECTIVES,
        default='regression',
        help="'flow': the dynamics phase's x-prediction objective at random tau, read at tau = 0",
    )
    parser.add_argument(
        '--no_residual', action='store_true', help='predict z_{t+1} itself, not z_{t+1} - z_t'
    )
    parser.add_argument('--no_ramp', action='store_true', help='flow: no ramp weight')
    parser.add_argument(
        '--flow_variant',
        choices=tuple(FLOW_VARIANTS),
        default='plain',
        help='flow: ' + '; '.join(f'{k}: {v}' for k, v in FLOW_VARIANTS.items()),
    )
    args = parser.parse_args(argv)
    config = config_checks.load_config(f'{args.experiment}:dynamics')
    if args.data_dir:
        config.data.dir = args.data_dir
    result = run(
        args.tokenizer_workdir,
        config.data,
        steps=args.steps,
        hidden=args.hidden,
        batch=args.batch,
        learning_rate=args.learning_rate,
        seed=args.seed,
        objective=args.objective,
        residual=not args.no_residual,
        ramp=not args.no_ramp,
        flow_variant=args.flow_variant,
    )
    for key in ('copy_last', 'copy_latent', 'mlp_no_actions', 'mlp_actions', 'recon'):
        print(f'{key:>16}: {result["psnr_" + key]:6.2f} dB')
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
