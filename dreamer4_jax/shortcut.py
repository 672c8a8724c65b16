"""Shortcut forcing: (tau, d) sampling, flow + bootstrap loss terms, ramp weight, K-step sampler.

PAPER 6 (training objective, Eq. 4, 7, 8) and PAPER 7 (frame generation). The network is always
an argument, a callable `predict(z_tilde, tau, d) -> out` with z [B, T, S, C] and tau, d [B, T]
(any leading dims work: tau/d have the leading dims of z, the rest are reduced), so the algebra
is testable with closed-form stand-ins and the dynamics model plugs in its own transformer.

Conventions (DESIGN 3): signal level tau in [0, 1], 0 = noise, 1 = clean;
z_tau = (1 - tau) * z0 + tau * z1; step size d = 1/k, k a power of two up to k_max; d_min = 1/k_max.

Dimension keys: B batch, T time, S tokens per frame, C latent channels.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Predict = Callable[[Array, Array, Array], Any]


NOISE_LEVELS = ('diffusion_forcing', 'last_frame')


def _log2_exact(k: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 or k & (k - 1):
        raise ValueError(f'{what} must be a power of two >= 1 (1, 2, 4, ...), got {k!r}.')
    return int(k).bit_length() - 1


@dataclasses.dataclass(frozen=True)
class ShortcutConfig:
    """Switches of the objective, including the ablations of PAPER 12.3 (Table 2).

    k_max: finest step count (d_min = 1/k_max); PAPER 6.4 [U], default 64.
    prediction: 'x' (network outputs clean latents, PAPER 6.2) or 'v' (outputs velocity).
    loss_space: 'x' (PAPER 6.3, Eq. 7) or 'v' (squared error of velocities, no (1-tau)^2 factor).
    ramp: multiply every frame's loss by w(tau) = 0.9 tau + 0.1 (PAPER 6.3, Eq. 8).
    shortcut: False = plain diffusion forcing: every frame d = d_min, no bootstrap passes.
    bootstrap_fraction: None = Eq. 4 as printed (k uniform over all powers of two); a number p
      makes a frame (or a row, with per_row) a bootstrap frame with probability p, k uniform over
      {1, ..., k_max/2}, and a flow frame (d = d_min) otherwise. PAPER 6.4 [U]: about 1/4.
    eps: floor for 1 - tau in divisions (tau never reaches 1 in training; this is a guard).
    noise_levels: 'diffusion_forcing' (PAPER 6.1: every frame its own signal level) or
      'last_frame', a probe outside the paper: every frame but the last of each window at signal
      1 - d_min and the last from pure noise (tau = 0), d = d_min everywhere, so the model trains
      as a next-frame regressor from nearly clean context (needs shortcut=False; sample it with
      one step, which then shows d_min).
    """

    k_max: int = 64
    prediction: str = 'x'
    loss_space: str = 'x'
    ramp: bool = True
    shortcut: bool = True
    bootstrap_fraction: float | None = None
    per_row: bool = False
    eps: float = 1e-5
    noise_levels: str = 'diffusion_forcing'

    def __post_init__(self) -> None:
        _log2_exact(self.k_max, 'ShortcutConfig.k_max')
        for field in ('prediction', 'loss_space'):
            if getattr(self, field) not in ('x', 'v'):
                raise ValueError(
                    f"ShortcutConfig.{field} must be 'x' or 'v', got {getattr(self, field)!r}."
                )
        if self.bootstrap_fraction is not None and not 0.0 <= self.bootstrap_fraction <= 1.0:
            raise ValueError(
                f'bootstrap_fraction must be in [0, 1] or None, got {self.bootstrap_fraction}.'
            )
        if self.noise_levels not in NOISE_LEVELS:
            raise ValueError(
                f'noise_levels must be one of {NOISE_LEVELS}, got {self.noise_levels!r}.'
            )
        if self.noise_levels == 'last_frame' and self.shortcut:
            raise ValueError(
                "noise_levels='last_frame' trains every frame at d_min: set shortcut=False "
                '(bootstrap targets need larger steps).'
            )


def sample_tau_d(
    rng: Array,
    shape: Sequence[int],
    k_max: int,
    *,
    bootstrap_fraction: float | None = None,
    per_row: bool = False,
) -> tuple[Array, Array]:
    """Per-frame (tau, d) of PAPER 6.1 Eq. 4 (typo-corrected, PAPER 2), float32 arrays of `shape`.

    d = 1/k with k uniform over {1, 2, 4, ..., k_max}; tau uniform over {0, d, ..., 1 - d}.
    Independent per frame (diffusion forcing). `bootstrap_fraction`/`per_row`: see ShortcutConfig.
    """
    levels = _log2_exact(k_max, 'k_max')
    shape = tuple(shape)
    key_e, key_i, key_b = jax.random.split(rng, 3)
    if bootstrap_fraction is None:
        log2_k = jax.random.randint(key_e, shape, 0, levels + 1)
    elif levels == 0:  # k_max = 1: d = d_min = 1 everywhere, no bootstrap frame possible.
        log2_k = jnp.zeros(shape, jnp.int32)
    else:
        boot_shape = shape[:1] + (1,) * (len(shape) - 1) if per_row and shape else shape
        is_boot = jax.random.bernoulli(key_b, bootstrap_fraction, boot_shape)
        # Bootstrap frames need d > d_min, i.e. k in {1, ..., k_max/2}.
        log2_k = jnp.where(is_boot, jax.random.randint(key_e, shape, 0, levels), levels)
    k = jnp.left_shift(1, log2_k).astype(jnp.int32)
    idx = jax.random.randint(key_i, shape, 0, k)
    # Powers of two: i/k and 1/k are exact in float32.
    kf = k.astype(jnp.float32)
    return idx.astype(jnp.float32) / kf, 1.0 / kf


def sample_training_tau_d(
    rng: Array, shape: Sequence[int], cfg: ShortcutConfig
) -> tuple[Array, Array]:
    """`sample_tau_d` with the config's switches (diffusion forcing = every frame d_min), or
    the 'last_frame' levels: [B, T] with the last frame at tau = 0, the others at 1 - d_min."""
    if cfg.noise_levels == 'last_frame':
        d_min = 1.0 / cfg.k_max
        last = jnp.arange(shape[-1]) == shape[-1] - 1
        tau = jnp.broadcast_to(jnp.where(last, 0.0, 1.0 - d_min), tuple(shape))
        return tau.astype(jnp.float32), jnp.full(tuple(shape), d_min, jnp.float32)
    frac = cfg.bootstrap_fraction if cfg.shortcut else 0.0
    return sample_tau_d(rng, shape, cfg.k_max, bootstrap_fraction=frac, per_row=cfg.per_row)


def ramp_weight(tau: Array) -> Array:
    """PAPER 6.3 Eq. 8: w(tau) = 0.9 tau + 0.1 (0.1 at pure noise, 1 at clean)."""
    return 0.9 * tau + 0.1


def tau_index(tau: Array, k_max: int) -> Array:
    """Row of the tau embedding table: round(tau * k_max) in {0, ..., k_max} (PAPER 6.4)."""
    _log2_exact(k_max, 'k_max')
    return jnp.clip(jnp.round(tau * k_max), 0, k_max).astype(jnp.int32)


def d_index(d: Array, k_max: int) -> Array:
    """Row of the d embedding table: log2(1/d) in {0, ..., log2 k_max} (PAPER 6.4)."""
    levels = _log2_exact(k_max, 'k_max')
    return jnp.clip(jnp.round(-jnp.log2(d)), 0, levels).astype(jnp.int32)


def num_tau_indices(k_max: int) -> int:
    """Rows of the tau table (tau = 1, clean context, included)."""
    _log2_exact(k_max, 'k_max')
    return k_max + 1


def num_d_indices(k_max: int) -> int:
    """Rows of the d table: d in {1, 1/2, ..., 1/k_max}."""
    return _log2_exact(k_max, 'k_max') + 1


def _bcast(a_BT: Array, z: Array) -> Array:
    return a_BT.reshape(a_BT.shape + (1,) * (z.ndim - a_BT.ndim))


def x_to_v(x_hat: Array, z: Array, tau: Array, eps: float = 1e-5) -> Array:
    """Velocity implied by an x-prediction (PAPER 6.3): (x_hat - z) / max(1 - tau, eps)."""
    return (x_hat - z) / jnp.maximum(1.0 - _bcast(tau, z), eps)


def v_to_x(v_hat: Array, z: Array, tau: Array) -> Array:
    """Clean latents implied by a velocity: z + (1 - tau) v (exact inverse of x_to_v)."""
    return z + (1.0 - _bcast(tau, z)) * v_hat


def shortcut_loss_terms(
    predict: Predict,
    z1: Array,
    noise: Array,
    tau: Array,
    d: Array,
    cfg: ShortcutConfig,
    *,
    has_aux: bool = False,
    teacher_predict: Predict | None = None,
) -> dict[str, Array] | tuple[dict[str, Array], Any]:
    """Per-frame shortcut-forcing terms (PAPER 6.3, Eq. 7), each of shape tau.shape ([B, T]).

    z1: clean latents [B, T, S, C]; noise: z0 ~ N(0, I) of the same shape; tau, d: [B, T] from
    `sample_tau_d`. Returns {'flow', 'bootstrap', 'flow_mask', 'bootstrap_mask', 'weight',
    'loss'} with loss = weight * (flow_mask * flow + bootstrap_mask * bootstrap); the caller takes
    the mean and RMS-normalizes. Flow frames are d = d_min, bootstrap frames d > d_min. With
    `has_aux`, `predict` returns (out, aux) and the main pass's aux is returned as well.
    `teacher_predict` (default `predict`) runs the two stop-gradient teacher passes; it may skip
    rows without bootstrap frames (their teacher outputs are masked out) as long as it returns
    finite values there, e.g. the dynamics phase runs the teacher only on its bootstrap rows.
    """
    if z1.shape != noise.shape or tau.shape != d.shape or z1.shape[: tau.ndim] != tau.shape:
        raise ValueError(
            f'shortcut_loss_terms: z1 {z1.shape} and noise {noise.shape} must match, and tau '
            f'{tau.shape} / d {d.shape} must equal the leading dims of z1.'
        )
    call = predict if has_aux else (lambda *a: (predict(*a), None))
    teacher = predict if teacher_predict is None else teacher_predict
    call_teacher = teacher if has_aux else (lambda *a: (teacher(*a), None))
    axes = tuple(range(tau.ndim, z1.ndim))
    z1, noise = z1.astype(jnp.float32), noise.astype(jnp.float32)
    tau, d = tau.astype(jnp.float32), d.astype(jnp.float32)
    z_t = (1.0 - _bcast(tau, z1)) * noise + _bcast(tau, z1) * z1  # PAPER 6.2 Eq. 6

    def as_x_and_v(out, z, level):
        if cfg.prediction == 'x':
            return out, x_to_v(out, z, level, cfg.eps)
        return v_to_x(out, z, level), out

    out, aux = call(z_t, tau, d)
    x_hat, v_hat = as_x_and_v(out, z_t, tau)
    if cfg.loss_space == 'x':
        flow = jnp.mean((x_hat - z1) ** 2, axis=axes)
    else:
        flow = jnp.mean((v_hat - (z1 - noise)) ** 2, axis=axes)

    if cfg.shortcut:
        boot_mask = (d > 1.5 / cfg.k_max).astype(jnp.float32)
        boot = boot_mask > 0
        # Teacher passes see the whole sequence; only bootstrap frames take a half step. Other
        # frames keep exactly the main pass's inputs (valid embedding rows, same context).
        d_half = jnp.where(boot, d / 2, d)
        out1, _ = call_teacher(z_t, tau, d_half)
        b1 = as_x_and_v(jax.lax.stop_gradient(out1), z_t, tau)[1]
        z_mid = jnp.where(_bcast(boot, z_t), z_t + b1 * _bcast(d_half, z_t), z_t)
        tau_mid = jnp.where(boot, tau + d_half, tau)
        out2, _ = call_teacher(z_mid, tau_mid, d_half)
        b2 = as_x_and_v(jax.lax.stop_gradient(out2), z_mid, tau_mid)[1]
        v_target = (b1 + b2) / 2.0
        if cfg.loss_space == 'x':
            # ||x_hat - (z_t + (1 - tau) v_tgt)||^2 == (1 - tau)^2 ||v_hat - v_tgt||^2 without
            # dividing by 1 - tau (PAPER 6.3 footnote 1; numerically safer near tau = 1).
            x_target = v_to_x(v_target, z_t, tau)
            bootstrap = jnp.mean((x_hat - x_target) ** 2, axis=axes)
        else:
            bootstrap = jnp.mean((v_hat - v_target) ** 2, axis=axes)
    else:
        boot_mask = jnp.zeros_like(tau)
        bootstrap = jnp.zeros_like(tau)

    flow_mask = 1.0 - boot_mask
    # PAPER 6.3 [U]: the ramp weight multiplies both terms (the natural reading of Eq. 8).
    weight = ramp_weight(tau) if cfg.ramp else jnp.ones_like(tau)
    terms = {
        'flow': flow,
        'bootstrap': bootstrap,
        'flow_mask': flow_mask,
        'bootstrap_mask': boot_mask,
        'weight': weight,
        'loss': weight * (flow_mask * flow + boot_mask * bootstrap),
    }
    return (terms, aux) if has_aux else terms


def teacher_stride(
    teacher_rows: float, batch_size: int, field: str, batch_name: str = 'the batch size'
) -> int:
    """Every s-th row holds bootstrap frames (PAPER 6.4 [U]); 0 = no teacher rows.

    `teacher_rows` must be 1/s for an integer s dividing the batch, so every device gets its
    share of teacher rows; `field` names the config field in the error.
    """
    if teacher_rows <= 0:
        return 0
    stride = int(round(1.0 / teacher_rows))
    if abs(1.0 / stride - teacher_rows) > 1e-6 or batch_size % stride:
        raise ValueError(
            f'{field}={teacher_rows} must be 1/s for an integer s dividing '
            f'{batch_name}={batch_size} (e.g. 1, 0.5, 0.25)'
        )
    return stride


def split_teacher_rows(tree: Any, stride: int) -> tuple[Any, Any]:
    """(teacher rows b % stride == 0, the other rows): strided so every device gets its share."""

    def take(x, first):
        y = x.reshape(x.shape[0] // stride, stride, *x.shape[1:])
        y = y[:, :1] if first else y[:, 1:]
        return y.reshape(-1, *x.shape[1:])

    return jax.tree.map(lambda x: take(x, True), tree), jax.tree.map(lambda x: take(x, False), tree)


def put_teacher_rows(full: Array, rows: Array, stride: int) -> Array:
    """Inverse of the first half of split_teacher_rows: write `rows` into rows b % stride == 0."""
    y = full.reshape(full.shape[0] // stride, stride, *full.shape[1:])
    return y.at[:, 0].set(rows).reshape(full.shape)


def teacher_rows_loss_terms(
    apply_rows: Callable[..., Any],
    row_inputs: Any,
    z1: Array,
    noise: Array,
    rng: Array,
    cfg: ShortcutConfig,
    stride: int,
    *,
    has_aux: bool = False,
):
    """`shortcut_loss_terms` where only every `stride`-th row holds bootstrap frames.

    PAPER 6.4 [U]: the bootstrap target costs two extra teacher passes; paying them on a share of
    the rows only keeps the step cheap. One main pass covers every row (the only pass with
    gradients); the other rows are flow rows (d = d_min) and the two stop-gradient teacher passes
    run on the teacher rows alone. stride 0: no bootstrap frames at all (plain flow matching);
    stride 1: every row may hold bootstrap frames.

    apply_rows(z, tau, d, inputs) -> out (or (out, aux) with `has_aux`): the network on the rows
    whose per-row inputs (actions, flags, ...; leading dimension B) are `inputs`.
    """
    b, t = z1.shape[:2]
    k_teacher, k_flow = jax.random.split(rng)
    flow_cfg = dataclasses.replace(cfg, shortcut=False)
    main_cfg = cfg if stride else flow_cfg
    tau, d = sample_training_tau_d(k_teacher if stride else k_flow, (b, t), main_cfg)
    if stride > 1:
        tau_f, d_f = sample_training_tau_d(k_flow, (b, t), flow_cfg)
        teacher_B = jnp.arange(b) % stride == 0
        tau = jnp.where(teacher_B[:, None], tau, tau_f)
        d = jnp.where(teacher_B[:, None], d, d_f)

    def predict(z, tau, d):
        return apply_rows(z, tau, d, row_inputs)

    teacher_predict = None
    if stride > 1:
        sub_inputs = split_teacher_rows(row_inputs, stride)[0]

        def teacher_predict(z, tau, d):
            zs, taus, ds = split_teacher_rows((z, tau, d), stride)[0]
            out = apply_rows(zs, taus, ds, sub_inputs)
            out = out[0] if has_aux else out
            # Rows without bootstrap frames: a neutral finite output (zero velocity).
            neutral = z if cfg.prediction == 'x' else jnp.zeros_like(z)
            full = put_teacher_rows(neutral, out, stride)
            return (full, None) if has_aux else full

    return shortcut_loss_terms(
        predict, z1, noise, tau, d, main_cfg, has_aux=has_aux, teacher_predict=teacher_predict
    )


def euler_step(z: Array, x_hat: Array, tau: Array, d: float | Array, eps: float = 1e-5) -> Array:
    """One x-prediction Euler update (PAPER 7): z + d * (x_hat - z) / (1 - tau).

    Written as the interpolation (1 - r) z + r x_hat with r = d / (1 - tau), so the last step
    (tau = 1 - d, r = 1) returns x_hat exactly.
    """
    r = jnp.asarray(d, jnp.float32) / jnp.maximum(1.0 - jnp.asarray(tau, jnp.float32), eps)
    r = _bcast(jnp.broadcast_to(r, jnp.shape(tau)), z)
    return (1.0 - r) * z + r * x_hat


def sample_frame(
    predict: Predict,
    rng: Array,
    shape: Sequence[int],
    k: int,
    *,
    prediction: str = 'x',
    network_d: float | None = None,
    cond_ndim: int | None = None,
    eps: float = 1e-5,
) -> Array:
    """Generate latents of `shape` with k Euler steps from noise at tau = 0 (PAPER 7).

    `predict(z, tau, d)` gets tau and d as float32 arrays of shape[:cond_ndim] (default: all but
    the last two dims, e.g. [B, T] for [B, T, S, C]). `network_d` overrides the d the network sees
    (plain diffusion forcing was trained only at d_min but still samples with step 1/k).
    """
    if prediction not in ('x', 'v'):
        raise ValueError(f"prediction must be 'x' or 'v', got {prediction!r}.")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f'k (sampling steps) must be an int >= 1, got {k!r}.')
    shape = tuple(shape)
    cond_shape = shape[: len(shape) - 2 if cond_ndim is None else cond_ndim]
    step = 1.0 / k
    d_arr = jnp.full(cond_shape, step if network_d is None else network_d, jnp.float32)

    def body(i, z):
        tau = jnp.full(cond_shape, i * step, jnp.float32)
        out = predict(z, tau, d_arr)
        x_hat = out if prediction == 'x' else v_to_x(out, z, tau)
        return euler_step(z, x_hat.astype(jnp.float32), tau, step, eps)

    z = jax.random.normal(rng, shape, jnp.float32)
    return jax.lax.fori_loop(0, k, body, z)


def corrupt_context(
    rng: Array, z: Array, tau_ctx: float = 0.9, *, k_max: int | None = None
) -> tuple[Array, float]:
    """Re-noise a committed frame to signal level tau_ctx before it enters the context.

    PAPER 2 / 7: the paper says past frames are "slightly" corrupted "to signal level 0.1", which
    under its own convention (0 = noise) would be 90 % noise. Readers and the author's interview
    ("almost clean inputs for all the past frames") agree on 10 % noise, so the default signal
    level is 0.9. With `k_max`, tau_ctx is snapped to the k_max grid so the noise applied equals
    what the tau embedding row (`tau_index`) says. Returns (z_ctx, tau_used).
    """
    if not 0.0 <= tau_ctx <= 1.0:
        raise ValueError(f'tau_ctx is a signal level in [0, 1], got {tau_ctx}.')
    if k_max is not None:
        tau_ctx = round(tau_ctx * k_max) / k_max
        _log2_exact(k_max, 'k_max')
    noise = jax.random.normal(rng, z.shape, jnp.float32)
    return (1.0 - tau_ctx) * noise + tau_ctx * z.astype(jnp.float32), float(tau_ctx)
