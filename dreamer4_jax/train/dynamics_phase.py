"""Phase 1b: train the interactive dynamics model with shortcut forcing (PAPER 6) on the loop.

Latents come from the frozen tokenizer INSIDE the jitted step (its params are a loop constant),
or, with config.data.latents='cache', from the latent cache of the tokenizer run: encoded once,
served by the pipeline as 'latents' [B, T, N, C] (dreamer4_jax/data/latent_cache.py; the step
then reads them as with config.dynamics.latents='batch', a batch that carries its own latents).

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
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamer4_jax import losses, pretrained, shortcut, world_model
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import Dynamics, align_actions, init_params
from dreamer4_jax.eval import open_loop
from dreamer4_jax.model_configs import shortcut_config_from
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import data_sources
from dreamer4_jax.train import state as state_lib
from dreamer4_jax.train.loop import Phase


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
    stride = teacher_stride(bool(dc.shortcut), float(dc.teacher_rows), b, 'dynamics')
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


def teacher_stride(uses_shortcut: bool, teacher_rows: float, batch: int, section: str) -> int:
    """shortcut.teacher_stride for `config.<section>.teacher_rows`, as a config error."""
    if not uses_shortcut:
        return 0
    try:
        return shortcut.teacher_stride(
            teacher_rows, batch, f'config.{section}.teacher_rows', 'train.batch_size'
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e


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


# Kept names (tests call them): the one implementation lives in shortcut.py.
split_teacher_rows = shortcut.split_teacher_rows
_put_teacher_rows = shortcut.put_teacher_rows


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

    Independent rows (PAPER 6.5) are trained as separate images: time attention only to the
    frame itself, and no action led to them. Bootstrap frames live only in every
    `teacher_stride`-th row (shortcut.teacher_rows_loss_terms).
    """
    b = z1_BTNC.shape[0]
    k_ind, k_noise, k_terms = jax.random.split(rng, 3)
    independent_B = choose_rows(k_ind, b, num_independent)
    has_BT = has_BT & ~independent_B[:, None]  # separate images: no action led to them
    noise = jax.random.normal(k_noise, z1_BTNC.shape, jnp.float32)

    def apply_rows(z, tau, d, rows):
        acts, has, independent = rows
        return model.apply(
            {'params': params}, z, tau, d, acts, has, independent_frames_B=independent
        )[0]

    terms = shortcut.teacher_rows_loss_terms(
        apply_rows,
        (actions, has_BT, independent_B),
        z1_BTNC,
        noise,
        k_terms,
        objective,
        plan.teacher_stride,
    )
    n_flow = jnp.maximum(terms['flow_mask'].sum(), 1.0)
    n_boot = jnp.maximum(terms['bootstrap_mask'].sum(), 1.0)
    logs = {
        'flow_mse': jnp.sum(terms['flow'] * terms['flow_mask']) / n_flow,
        'bootstrap_mse': jnp.sum(terms['bootstrap'] * terms['bootstrap_mask']) / n_boot,
        'bootstrap_frames': jnp.mean(terms['bootstrap_mask']),
    }
    return jnp.mean(terms['loss']), logs


def ema_update(ema, params, decay: float | jax.Array):
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """min(decay, (1 + step) / (10 + step)): the EMA follows the weights closely early on.

    PAPER 8 samples with EMA weights but gives no warm-up [U]. Without one, a short run's EMA is
    mostly its random init (0.999 over 400 steps keeps 67 % of it), and later phases load the
    EMA; with it, the effective decay reaches 0.999 after about 9,000 steps.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


@dataclasses.dataclass(frozen=True)
class DynamicsStep:
    """The static pieces of a dynamics train step (bound with functools.partial)."""

    model: Dynamics
    tokenizer: Tokenizer
    objective: shortcut.ShortcutConfig
    plan: Plan
    tx: optax.GradientTransformation
    latents: str  # 'on_the_fly' (encode images in the step) or 'batch' (pre-computed)
    rms_beta: float


def batch_latents(s: DynamicsStep, rows: dict, consts: dict) -> jax.Array:
    """Clean latents of a batch: pre-computed ones, or the frozen tokenizer's encoding."""
    if s.latents == 'batch':
        return jnp.asarray(rows['latents'], jnp.float32)
    return world_model.encode_frames(s.tokenizer, consts['tokenizer'], rows['image'])


def train_step(s: DynamicsStep, state, batch, rng, consts):
    """One shortcut-forcing step (PAPER 6) with alternating batch lengths (PAPER 6.5)."""
    plan = s.plan
    acts, has = align_actions(batch['action'], batch['has_action'], batch.get('is_first'))
    key = 'latents' if s.latents == 'batch' else 'image'
    if key not in batch:
        raise ValueError(
            f'config.dynamics.latents={s.latents!r} needs batches with {key!r}; got keys '
            f"{sorted(batch)}. Use latents='on_the_fly' with image data."
        )
    frames = {key: batch[key]}

    def run(length):
        # Rows of this length first, then the tokenizer: a cropped step encodes less.
        rows, a, h = to_length((frames, acts, has), length, plan.short_mode)
        z1 = batch_latents(s, rows, consts)

        def loss_fn(params):
            mean, logs = shortcut_frame_loss(
                s.model, params, s.objective, plan, z1, a, h, rng, plan.num_independent(length)
            )
            total, rms, metrics = losses.update_and_normalize(
                state.aux['rms'], {'dynamics': mean}, None, beta=s.rms_beta
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
    new = state_lib.apply_gradients(state, grads, s.tx, aux={**state.aux, 'rms': rms})
    if plan.ema_decay > 0:
        new = new.replace(
            aux={
                **new.aux,
                'ema': ema_update(
                    state.aux['ema'], new.params, ema_decay_at(state.step, plan.ema_decay)
                ),
            }
        )
    return new, metrics


def make_phase(
    config: ml_collections.ConfigDict,
    tokenizer: tuple[Any, Any] | None = None,
    *,
    load=pretrained.load,
) -> Phase:
    """The dynamics phase on the tokenizer run of `config.dynamics.tokenizer_workdir`.

    `load(workdir, expect=...)` finds earlier runs (`pretrained.load`; ahead-of-time compilation
    passes abstract ones). `tokenizer` = (params, TokenizerConfig) skips loading (tests).
    """
    dc = config.dynamics
    tok_run = None
    if tokenizer is not None:
        tok_params, tok_cfg = tokenizer
    else:
        tok_run = pretrained.load_earlier(config, load=load)
        tok_cfg, tok_params = tok_run.tokenizer_config(), None
    model = world_model.dynamics_of(dc, tok_cfg)
    plan = make_plan(config)
    tok_model = Tokenizer(tok_cfg)
    step = DynamicsStep(
        model=model,
        tokenizer=tok_model,
        objective=shortcut_config_from(dc),
        plan=plan,
        tx=state_lib.make_optimizer(config.train),
        latents='batch' if data_sources.uses_latent_cache(config) else str(dc.latents),
        rms_beta=float(dc.rms_beta),
    )

    def init(rng):
        params = init_params(model, rng)
        aux = {'rms': losses.init_rms_state(['dynamics'])}
        if plan.ema_decay > 0:
            aux['ema'] = params
        return state_lib.create_train_state(params, step.tx, aux)

    @functools.cache
    def frozen_tokenizer():
        return tok_params if tok_params is not None else tok_run.params()

    evaluator = open_loop.OpenLoopEvaluator(model, tok_model, world_model.sampling_config(dc))

    def evaluate(state, step_, workdir):
        batch = data_sources.eval_batch(config)
        params = state.aux['ema'] if plan.ema_decay > 0 else state.params
        return evaluator(
            params,
            frozen_tokenizer(),
            batch,
            context=int(dc.eval_context),
            horizon=int(dc.eval_horizon) or None,
            rng=jax.random.key(0),
            video_path=os.path.join(workdir, 'eval', f'open_loop_{step_:06d}.gif'),
            num_videos=int(dc.eval_videos),
            # Runs saved before the field existed evaluate one sample only.
            mean_samples=int(dc.get('eval_samples', 0)),
        )

    return Phase(
        name='dynamics',
        init=init,
        train_step=functools.partial(train_step, step),
        make_data=lambda pi, pc: data_sources.train_windows(
            config, pi, pc, encoder=data_sources.tokenizer_encoder(tok_run, frozen_tokenizer)
        ),
        evaluate=evaluate,
        main_metrics=('loss/total', 'flow_mse', 'bootstrap_mse'),
        checked_metrics=('loss/total', 'loss/dynamics'),
        constants=lambda: {'tokenizer': frozen_tokenizer()},
    )
