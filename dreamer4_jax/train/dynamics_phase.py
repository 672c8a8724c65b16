"""Phase 1b: train the interactive dynamics model with shortcut forcing (PAPER 6) on the loop.

Latents come from the frozen tokenizer INSIDE the jitted step (its params are a loop constant):
the data stays the image windows every phase reads, nothing is pre-computed or stored twice, and
the encoder forward costs a fraction of the dynamics step (benchmarks/bench_dynamics.py).
A batch that already carries 'latents' [B, T, N, C] can skip it (config.dynamics.latents='batch').

Training tricks, each one config field of `config.dynamics`:
  independent_fraction  PAPER 6.5: that share of rows is trained as separate images (time
                        attention only to the frame itself, actions dropped) to learn start frames.
  short_length (T1)     PAPER 6.5: alternating batch lengths. The data always delivers windows of
                        T2 = data.window_length frames; both row lengths are static shapes and
                        the step picks one with lax.cond on the step counter, so the loop's
                        single compilation holds both and each step runs only its branch.
                        short_mode='crop' (default) trains a short step on the first T1 frames
                        of each window (a short step costs about T1/T2 of a long one, the point
                        of the trick); 'reshape' cuts each window into T2/T1 rows of T1 frames
                        (every loaded frame is used, a step costs the same either way). Long
                        steps: every `long_every`-th step, and every step from `long_only_after`.
  teacher_rows          PAPER 6.4 [U]: share of rows that hold bootstrap frames (d > d_min); only
                        those rows pay the two teacher passes, the others are pure flow rows.
                        Inside them `bootstrap_fraction` (None = Eq. 4 as printed) sets the share.
  ema_decay             PAPER 8 [R]: EMA of the weights, used for sampling and evaluation.
Ablations of PAPER 12.3 are fields of config.dynamics too (see model_configs.dynamics_config_dict).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamer4_jax import losses, shortcut
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import Dynamics, align_actions, init_params
from dreamer4_jax.eval import open_loop
from dreamer4_jax.generation import SamplingConfig
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_jax.train import data_sources
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.loop import Phase
from dreamer4_jax.model_configs import (
    dynamics_config_from,
    shortcut_config_from,
    tokenizer_config_from,
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static shape decisions of a step, validated once from the config."""

    batch: int  # global rows of a long batch
    long_length: int  # T2
    short_length: int  # T1 (== T2 when alternating lengths is off)
    short_mode: str  # 'crop' or 'reshape'
    long_every: int
    long_only_after: int
    teacher_stride: int  # every s-th row holds bootstrap frames; 0 = none
    independent_fraction: float
    ema_decay: float

    @property
    def alternating(self) -> bool:
        return self.short_length != self.long_length

    def rows(self, length: int) -> int:
        if self.short_mode == 'crop':
            return self.batch
        return self.batch * (self.long_length // length)

    def num_independent(self, length: int) -> int:
        return int(round(self.independent_fraction * self.rows(length)))


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    dc = config.dynamics
    b, t2 = int(config.train.batch_size), int(config.data.window_length)
    t1 = int(dc.short_length) or t2

    def bad(msg):
        raise ConfigError(f'config.dynamics.{msg}')

    if str(dc.short_mode) not in ('crop', 'reshape'):
        bad(f"short_mode={dc.short_mode!r} must be 'crop' or 'reshape'")
    if t1 < 1 or t1 > t2 or (str(dc.short_mode) == 'reshape' and t2 % t1):
        bad(
            f'short_length={t1} must be in [1, data.window_length={t2}] and, with '
            "short_mode='reshape', divide it (each window becomes window_length / short_length "
            'rows)'
        )
    if t1 != t2 and int(dc.long_every) < 1 and int(dc.long_only_after) < 0:
        bad(
            'short_length is set but no long batch would ever run: set long_every >= 1 or '
            'long_only_after >= 0'
        )
    stride = 0
    if bool(dc.shortcut) and float(dc.teacher_rows) > 0:
        stride = int(round(1.0 / float(dc.teacher_rows)))
        if abs(1.0 / stride - float(dc.teacher_rows)) > 1e-6 or b % stride:
            bad(
                f'teacher_rows={dc.teacher_rows} must be 1/s for an integer s dividing '
                f'train.batch_size={b} (e.g. 1, 0.5, 0.25)'
            )
    if not 0.0 <= float(dc.independent_fraction) <= 1.0:
        bad(f'independent_fraction={dc.independent_fraction} must be in [0, 1]')
    if not 0.0 <= float(dc.ema_decay) < 1.0:
        bad(f'ema_decay={dc.ema_decay} must be in [0, 1) (0 = off)')
    if str(dc.latents) not in ('on_the_fly', 'batch'):
        bad(f"latents={dc.latents!r} must be 'on_the_fly' or 'batch'")
    return Plan(
        b,
        t2,
        t1,
        str(dc.short_mode),
        int(dc.long_every),
        int(dc.long_only_after),
        stride,
        float(dc.independent_fraction),
        float(dc.ema_decay),
    )


def is_long_step(plan: Plan, step: jax.Array) -> jax.Array:
    """True on steps that train on long (T2) rows."""
    if not plan.alternating:
        return jnp.asarray(True)
    long = jnp.asarray(False)
    if plan.long_every >= 1:
        long |= (step + 1) % plan.long_every == 0
    if plan.long_only_after >= 0:
        long |= step >= plan.long_only_after
    return long


def to_length(tree, length: int, mode: str = 'reshape'):
    """[B, T2, ...] rows -> rows of `length` frames.

    'reshape': [B * T2 / length, length, ...], consecutive chunks of each row; 'crop': the first
    `length` frames of each row, [B, length, ...].
    """

    def one(x):
        if mode == 'crop':
            return x[:, :length]
        b, t = x.shape[:2]
        return x.reshape(b * (t // length), length, *x.shape[2:])

    return jax.tree.map(one, tree)


def choose_rows(rng: jax.Array, rows: int, count: int) -> jax.Array:
    """[rows] bool with exactly `count` True entries at random positions."""
    if count == 0:
        return jnp.zeros((rows,), bool)
    return jnp.zeros((rows,), bool).at[jax.random.permutation(rng, rows)[:count]].set(True)


def split_teacher_rows(tree, stride: int):
    """(teacher rows b % stride == 0, the other rows): strided so every device gets its share."""

    def take(x, first):
        y = x.reshape(x.shape[0] // stride, stride, *x.shape[1:])
        y = y[:, :1] if first else y[:, 1:]
        return y.reshape(-1, *x.shape[1:])

    return jax.tree.map(lambda x: take(x, True), tree), jax.tree.map(lambda x: take(x, False), tree)


def _put_teacher_rows(full, rows, stride: int):
    """Inverse of the first half of split_teacher_rows: write `rows` into rows b % stride == 0."""
    y = full.reshape(full.shape[0] // stride, stride, *full.shape[1:])
    return y.at[:, 0].set(rows).reshape(full.shape)


def shortcut_frame_loss(
    model: Dynamics,
    params,
    objective: shortcut.ShortcutConfig,
    plan: Plan,
    z1_BTNC,
    actions,
    has_BT,
    rng,
    num_independent: int,
):
    """Shortcut-forcing loss over all rows (PAPER 6.3); returns (mean per-frame loss, logs).

    One main pass over every row (the only one with gradients). Bootstrap frames live only in
    the teacher rows (every `teacher_stride`-th row); the other rows are flow rows (d = d_min),
    and the two stop-gradient teacher passes run on the teacher rows alone.
    """
    b, t = z1_BTNC.shape[:2]
    k_ind, k_noise, k_teacher, k_flow = jax.random.split(rng, 4)
    independent_B = choose_rows(k_ind, b, num_independent)
    has_BT = has_BT & ~independent_B[:, None]  # separate images: no action led to them
    noise = jax.random.normal(k_noise, z1_BTNC.shape, jnp.float32)
    stride = plan.teacher_stride
    flow_cfg = dataclasses.replace(objective, shortcut=False)
    cfg = objective if stride else flow_cfg
    tau, d = shortcut.sample_training_tau_d(k_teacher if stride else k_flow, (b, t), cfg)
    if stride > 1:
        tau_f, d_f = shortcut.sample_training_tau_d(k_flow, (b, t), flow_cfg)
        teacher_B = jnp.arange(b) % stride == 0
        tau = jnp.where(teacher_B[:, None], tau, tau_f)
        d = jnp.where(teacher_B[:, None], d, d_f)

    def predict(z, tau, d):
        return model.apply(
            {'params': params}, z, tau, d, actions, has_BT, independent_frames_B=independent_B
        )[0]

    teacher_predict = None
    if stride > 1:
        sub_acts, sub_has, sub_ind = split_teacher_rows((actions, has_BT, independent_B), stride)[0]

        def teacher_predict(z, tau, d):
            zs, taus, ds = split_teacher_rows((z, tau, d), stride)[0]
            out = model.apply(
                {'params': params}, zs, taus, ds, sub_acts, sub_has, independent_frames_B=sub_ind
            )[0]
            # Rows without bootstrap frames: a neutral finite output (zero velocity).
            neutral = z if objective.prediction == 'x' else jnp.zeros_like(z)
            return _put_teacher_rows(neutral, out, stride)

    terms = shortcut.shortcut_loss_terms(
        predict, z1_BTNC, noise, tau, d, cfg, teacher_predict=teacher_predict
    )
    n_flow = jnp.maximum(terms['flow_mask'].sum(), 1.0)
    n_boot = jnp.maximum(terms['bootstrap_mask'].sum(), 1.0)
    logs = {
        'flow_mse': jnp.sum(terms['flow'] * terms['flow_mask']) / n_flow,
        'bootstrap_mse': jnp.sum(terms['bootstrap'] * terms['bootstrap_mask']) / n_boot,
        'bootstrap_frames': jnp.mean(terms['bootstrap_mask']),
    }
    return jnp.mean(terms['loss']), logs


def ema_update(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def load_tokenizer(config: ml_collections.ConfigDict) -> tuple[dict, TokenizerConfig]:
    """Frozen tokenizer params and config from config.dynamics.tokenizer_workdir."""
    from dreamer4_jax.checkpoint import load_trained, require_phase

    where = str(config.dynamics.tokenizer_workdir)
    if not where:
        raise ConfigError(
            'config.dynamics.tokenizer_workdir is empty: point it at the workdir '
            'of a finished tokenizer run (phase 1a) whose latents the dynamics '
            'model learns.'
        )
    require_phase(where, 'tokenizer', 'config.dynamics.tokenizer_workdir')
    params, tok_config = load_trained(where)
    return params, tokenizer_config_from(tok_config.tokenizer)


def make_phase(
    config: ml_collections.ConfigDict, tokenizer: tuple[dict, TokenizerConfig] | None = None
) -> Phase:
    """The dynamics phase; `tokenizer` = (params, TokenizerConfig) skips loading (tests)."""
    dc = config.dynamics
    tok_params, tok_cfg = tokenizer if tokenizer is not None else load_tokenizer(config)
    model = Dynamics(dynamics_config_from(dc, tok_cfg))
    objective = shortcut_config_from(dc)
    plan = make_plan(config)
    tx = state_lib.make_optimizer(config.train)
    tok_model = Tokenizer(tok_cfg)
    sampling = SamplingConfig(
        num_steps=int(dc.sampling_steps),
        context_signal=float(dc.context_signal),
        prediction=str(dc.prediction),
        # Plain diffusion forcing never trained the d embedding beyond d_min.
        network_d=None if bool(dc.shortcut) else 1.0 / int(dc.k_max),
    )

    def init(rng):
        params = init_params(model, rng)
        aux = {'rms': losses.init_rms_state(['dynamics'])}
        if plan.ema_decay > 0:
            aux['ema'] = params
        return state_lib.create_train_state(params, tx, aux)

    def latents(batch, consts):
        if str(dc.latents) == 'batch':
            return jnp.asarray(batch['latents'], jnp.float32)
        images = jnp.asarray(batch['image'], jnp.float32) / 255.0
        z = tok_model.apply({'params': consts['tokenizer']}, images, method=Tokenizer.encode)
        return jax.lax.stop_gradient(z)

    def train_step(state, batch, rng, consts):
        acts, has = align_actions(batch['action'], batch['has_action'], batch.get('is_first'))
        key = 'latents' if str(dc.latents) == 'batch' else 'image'
        if key not in batch:
            raise ValueError(
                f'config.dynamics.latents={dc.latents!r} needs batches with {key!r}; got keys '
                f"{sorted(batch)}. Use latents='on_the_fly' with image data."
            )
        frames = {key: batch[key]}

        def run(length):
            # Rows of this length first, then the tokenizer: a cropped step encodes less.
            rows, a, h = to_length((frames, acts, has), length, plan.short_mode)
            z1 = latents(rows, consts)

            def loss_fn(params):
                mean, logs = shortcut_frame_loss(
                    model, params, objective, plan, z1, a, h, rng, plan.num_independent(length)
                )
                total, rms, metrics = losses.update_and_normalize(
                    state.aux['rms'], {'dynamics': mean}, None, beta=float(dc.rms_beta)
                )
                return total, (rms, {**metrics, **logs})

            (_, (rms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return grads, rms, metrics

        long = is_long_step(plan, state.step)
        if plan.alternating:
            grads, rms, metrics = jax.lax.cond(
                long, lambda: run(plan.long_length), lambda: run(plan.short_length)
            )
        else:
            grads, rms, metrics = run(plan.long_length)
        metrics['grad_norm'] = optax.tree.norm(grads)
        metrics['long_batch'] = long.astype(jnp.float32)
        new = state_lib.apply_gradients(state, grads, tx, aux={**state.aux, 'rms': rms})
        if plan.ema_decay > 0:
            new = new.replace(
                aux={**new.aux, 'ema': ema_update(state.aux['ema'], new.params, plan.ema_decay)}
            )
        return new, metrics

    evaluator = open_loop.OpenLoopEvaluator(model, tok_model, sampling)

    def evaluate(state, step, workdir):
        batch = data_sources.eval_batch(config)
        params = state.aux['ema'] if plan.ema_decay > 0 else state.params
        return evaluator(
            params,
            tok_params,
            batch,
            context=int(dc.eval_context),
            horizon=int(dc.eval_horizon) or None,
            rng=jax.random.key(0),
            video_path=os.path.join(workdir, 'eval', f'open_loop_{step:06d}.gif'),
            num_videos=int(dc.eval_videos),
        )

    return Phase(
        name='dynamics',
        init=init,
        train_step=train_step,
        make_data=lambda pi, pc: data_sources.train_windows(config, pi, pc),
        evaluate=evaluate,
        main_metrics=('loss/total', 'flow_mse', 'bootstrap_mse'),
        checked_metrics=('loss/total', 'loss/dynamics'),
        constants=lambda: {'tokenizer': tok_params},
    )
