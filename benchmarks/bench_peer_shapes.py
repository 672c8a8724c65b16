"""The project at the shapes of the JAX peer (edwhu/dreamer4-jax): training and generation speed.

Run: python -m benchmarks.run --only=peer_shapes [--quick]
(or python -m benchmarks.bench_peer_shapes [--quick] for the figures alone).

Shapes (the peer's defaults):
  tokenizer  32x32 frames, 4x4 patches (64 patches + 16 latents = 80 tokens per frame), encoder
             and decoder 8 layers of width 64, 4 heads, latents 16 x 32; B = 8 x T = 32.
  dynamics   8 layers of width 128, 4 heads (GQA with one KV head, as the project's default),
             16 tokens per frame: the 16 x 32 latents packed by 2 into 8 tokens (as the peer),
             1 action token, 1 shortcut token and 6 registers; B = 8 x T = 32.
Both steps are the project's real phase steps, jitted with the state donated as the loop does
(tokenizer: MSE + LPIPS, RMS normalization, AdamW; dynamics: shortcut forcing with the teacher
passes on a quarter of the rows, EMA) on pre-tokenized latents, and again encoding the frames
with the frozen peer-shape tokenizer inside the step as the peer does ('dynamics_on_the_fly',
whose FLOPs add the encoder's forward). Model FLOPs count what the
step's model computes (3x forward matmuls, attention included; LPIPS, elementwise work and remat
recompute not counted); `*_flops_per_sec` keys become `*_mfu_f32` in the harness (the f32
peak of the same run), and this module also reports the ratio to a peak measured right before.

Generation: batch 1 at the dynamics shape (window C = 64), one frame = K = 4 denoising passes
+ the commit pass, as ONE compiled call with the cache donated (`generation.frame_step`);
ms per frame at 1, 8, 32 and 63 cached frames, the per-call floor of a jitted no-op that takes
and returns the same argument pytree (what dispatch costs whatever the model does), and batch 16
frames/s.
"""

from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.bench_dynamics import step_flops as dynamics_step_flops
from benchmarks.bench_tokenizer import tokenizer_flops
from benchmarks.run import matmul_peak, time_fn
from dreamer4_jax import generation, world_model
from dreamer4_jax import model_configs as mc
from dreamer4_jax.actions import ActionComponent
from dreamer4_jax.configs import base_config
from dreamer4_jax.dynamics import Dynamics, init_params
from dreamer4_jax.jaxpr_flops import function_flops
from dreamer4_jax.nn import forward_flops
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import dynamics_phase, tokenizer_phase

BATCH, FRAMES = 8, 32
TOKENIZER = dict(width=64, depth=8, num_heads=4, time_every=4)
DYNAMICS = dict(width=128, depth=8, num_heads=4, num_kv_heads=1, time_every=4, time_window=64)
CONTEXTS = (1, 8, 32, 63)


def peer_config(
    batch: int = BATCH, frames: int = FRAMES, lpips: float = 0.2, **transformer
) -> ml_collections.ConfigDict:
    """Tokenizer + dynamics config at the peer's shapes; `transformer` overrides both stacks."""
    c = base_config()
    c.train.batch_size = batch
    c.train.steps = 1000
    c.data = ml_collections.ConfigDict({'window_length': frames})
    tok = mc.transformer_config_dict(**{**TOKENIZER, **transformer})
    c.tokenizer = mc.tokenizer_config_dict(
        height=32, width=32, patch=4, num_latents=16, latent_dim=32, encoder=tok, decoder=tok
    )
    c.tokenizer.decoder = mc.transformer_config_dict(**{**TOKENIZER, **transformer})
    c.tokenizer.loss_weights.lpips = lpips
    c.dynamics = mc.dynamics_config_dict(
        transformer=mc.transformer_config_dict(**{**DYNAMICS, **transformer}),
        pack=2,
        num_registers=6,
        latents='batch',
    )
    return c


def _frames(batch: int, frames: int, tok_cfg, with_latents: bool) -> dict:
    r = np.random.default_rng(0)
    out = {
        'image': r.integers(0, 256, (batch, frames, tok_cfg.height, tok_cfg.width, 3), np.uint8),
        'action': {'discrete': r.integers(0, 17, (batch, frames)).astype(np.int32)},
        'has_action': np.ones((batch, frames), bool),
        'is_first': np.zeros((batch, frames), bool),
    }
    if with_latents:
        out['latents'] = r.uniform(
            -1, 1, (batch, frames, tok_cfg.num_latents, tok_cfg.latent_dim)
        ).astype(np.float32)
        del out['image']
    return out


def phase_runner(phase, data: dict, consts: dict):
    """run() -> loss of one donated, jitted step of `phase` (state carried between calls)."""
    holder = {'state': jax.jit(lambda r: nn.unbox(phase.init(r)))(jax.random.key(1))}
    step = jax.jit(phase.train_step, donate_argnums=(0,))
    data = jax.device_put(data)

    def run():
        holder['state'], metrics = step(holder['state'], data, jax.random.key(2), consts)
        return metrics['loss/total']

    jax.block_until_ready(run())  # compile
    run.hlo_text = lambda: (
        step.lower(holder['state'], data, jax.random.key(2), consts).compile().as_text()
    )
    return run


def tokenizer_step(config: ml_collections.ConfigDict):
    """(run, model FLOPs per step) of the real phase-1a step."""
    phase = tokenizer_phase.make_phase(config)
    cfg = mc.tokenizer_config_from(config.tokenizer)
    b, t = int(config.train.batch_size), int(config.data.window_length)
    run = phase_runner(phase, _frames(b, t, cfg, False), phase.constants())
    return run, tokenizer_flops(cfg, b, t), cfg.num_patches + cfg.num_latents


def dynamics_step(config: ml_collections.ConfigDict):
    """(run, model FLOPs per step, tokens per frame) of the real phase-1b step.

    With config.dynamics.latents == 'on_the_fly' the step encodes the frames with a frozen
    tokenizer first (as the peer's step does); the encoder's forward FLOPs are then counted too.
    """
    tok_cfg = mc.tokenizer_config_from(config.tokenizer)
    on_the_fly = str(config.dynamics.latents) == 'on_the_fly'
    tok_params = None
    if on_the_fly:
        tok = Tokenizer(tok_cfg)
        tok_params = jax.jit(lambda r: nn.unbox(world_model.init_tokenizer_params(tok, r)))(
            jax.random.key(0)
        )
    phase = dynamics_phase.make_phase(config, (tok_params, tok_cfg))
    b, t = int(config.train.batch_size), int(config.data.window_length)
    run = phase_runner(phase, _frames(b, t, tok_cfg, not on_the_fly), {'tokenizer': tok_params})
    model_cfg = mc.dynamics_config_from(config.dynamics, tok_cfg)
    flops = dynamics_step_flops(model_cfg, dynamics_phase.make_plan(config), b, t)
    if on_the_fly:
        s_enc = tok_cfg.num_patches + tok_cfg.num_latents
        flops += forward_flops(tok_cfg.encoder, s_enc, b, t)['total']
        io = tok_cfg.num_patches * tok_cfg.patch_pixels + tok_cfg.num_latents * tok_cfg.latent_dim
        flops += 2 * b * t * io * tok_cfg.encoder.width
    return run, flops, model_cfg.layout().num_tokens


def train_figures(name: str, make, config, rounds: int) -> dict:
    """Best step time over `rounds`, each paired with an adjacent f32 peak (shared machine)."""
    run, flops, tokens_per_frame = make(config)
    b, t = int(config.train.batch_size), int(config.data.window_length)
    times, ratios = [], []
    for _ in range(rounds):
        peak = matmul_peak(jnp.float32)
        times.append(time_fn(run, repeats=3, min_time=0.5))
        ratios.append(flops / times[-1] / peak)
    seconds = min(times)
    return {
        f'{name}_step_seconds': seconds,
        f'{name}_tokens_per_sec': b * t * tokens_per_frame / seconds,
        f'{name}_model_flops_per_step': flops,
        f'{name}_flops_per_sec': flops / seconds,
        f'{name}_mfu_vs_adjacent_peak': float(np.max(ratios)),
    }


def gen_setup(config):
    """(Dynamics model, freshly initialized parameters) of `config`'s dynamics shapes."""
    tok_cfg = mc.tokenizer_config_from(config.tokenizer)
    model = Dynamics(mc.dynamics_config_from(config.dynamics, tok_cfg))
    params = jax.jit(lambda r: nn.unbox(init_params(model, r)))(jax.random.key(0))
    return model, params


@functools.cache
def _compiled(model, steps: int):
    sampling = generation.SamplingConfig(num_steps=steps)
    fill = jax.jit(functools.partial(generation.prefill, model, sampling=sampling))
    return fill, generation.jit_frame_step(model, sampling)


def zero_actions(components, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Valid all-zero actions of leading `shape` for a model's action components."""
    comps = [ActionComponent(*c) for c in components]
    return {c.name: np.zeros((*shape, *c.event_shape), c.dtype) for c in comps}


def _prefilled(model, params, batch: int, context: int, steps: int):
    """(cache after `context` random frames, the next frame's action, its has_action)."""
    fill, _ = _compiled(model, steps)
    c = model.config
    z = jax.random.uniform(
        jax.random.key(1), (batch, context, c.num_latents, c.latent_dim), minval=-1, maxval=1
    )
    acts = zero_actions(c.actions, (batch, context))
    cache = fill(params, z, acts, jnp.ones((batch, context), bool), jax.random.key(2))
    return cache, zero_actions(c.actions, (batch, 1)), jnp.ones((batch, 1), bool)


def frame_ms(model, params, batch: int, context: int, steps: int = 4) -> tuple[float, float]:
    """(ms per frame of the one-call frame step, ms of a no-op call on the same pytree)."""
    _, frame = _compiled(model, steps)
    cache, act, has = _prefilled(model, params, batch, context, steps)
    holder = {'cache': cache, 'rng': jax.random.key(3)}

    def gen():
        z, holder['cache'], holder['rng'] = frame(params, holder['cache'], act, has, holder['rng'])
        return z

    # The no-op: same arguments, cache donated and returned, nothing computed.
    noop = jax.jit(lambda p, cache, a, h, r: (cache, r), donate_argnums=(1,))
    nholder = {'cache': jax.tree.map(jnp.copy, cache)}

    def nop():
        nholder['cache'], _ = noop(params, nholder['cache'], act, has, holder['rng'])
        return nholder['cache'].next_frame

    # Frames must not run past the window's context: each timing call commits frames, but the
    # ring buffer keeps C - 1 frames, so the attended context stays at the window from then on.
    ms = 1e3 * time_fn(gen, repeats=5, min_time=0.2)
    return ms, 1e3 * time_fn(nop, repeats=5, min_time=0.2)


def fresh_frame_ms(model, params, context: int, steps: int = 4, frames: int = 20) -> float:
    """Median ms of the first `frames` frames after a prefill of `context` frames (batch 1).

    `frame_ms` times many frames in a row, so after a few calls the cache is full whatever the
    prefill was; this one re-prefills and times each early frame alone (context .. context+20).
    """
    _, frame = _compiled(model, steps)
    cache, act, has = _prefilled(model, params, 1, context, steps)
    rng = jax.random.key(3)
    jax.block_until_ready(frame(params, jax.tree.map(jnp.copy, cache), act, has, rng))  # compile
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        _, cache, rng = jax.block_until_ready(frame(params, cache, act, has, rng))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def generate_frame_ms(model, params, context: int, steps: int = 4) -> float:
    """ms per frame of the previous path: jit(generate_frame), no donation, key split outside."""
    sampling = generation.SamplingConfig(num_steps=steps)
    gen = jax.jit(functools.partial(generation.generate_frame, model, sampling=sampling))
    cache, act, has = _prefilled(model, params, 1, context, steps)
    holder = {'cache': cache, 'rng': jax.random.key(3)}

    def run():
        holder['rng'], sub = jax.random.split(holder['rng'])
        z, holder['cache'] = gen(params, holder['cache'], act, has, sub)
        return z

    return 1e3 * time_fn(run, repeats=5, min_time=0.2)


def generation_profile_target(model, params, context: int):
    """(fn, compiled HLO text) of a batch-1 frame after `context` frames (for profile_ops)."""
    _, frame = _compiled(model, 4)
    cache, act, has = _prefilled(model, params, 1, context, 4)
    holder = {'cache': cache}
    rng = jax.random.key(3)
    text = frame.lower(params, holder['cache'], act, has, rng).compile().as_text()

    def fn():
        z, holder['cache'], _ = frame(params, holder['cache'], act, has, rng)
        return z

    return fn, text


def frame_gflop(model, params, context: int = 63, steps: int = 4) -> float:
    """Matmul GFLOP of one batch-1 frame (K denoising passes + the commit) after `context`."""
    sampling = generation.SamplingConfig(num_steps=steps)
    cache, act, has = _prefilled(model, params, 1, context, steps)
    count = function_flops(
        functools.partial(generation.frame_step, model, sampling=sampling),
        params, cache, act, has, jax.random.key(3),
    )  # fmt: skip
    if count.loops:
        raise RuntimeError('frame_gflop: a while loop of unknown trip count was counted once')
    return count.flops / 1e9


def rows_matmul_gflops(rows: int, width: int, hidden: int, chain: int = 200) -> float:
    """GFLOP/s of the frame's largest matmuls at the frame's row count, measured here and now.

    A chain of `chain` SwiGLU-shaped products, [rows, width] x [width, 2 hidden] then
    [rows, hidden] x [hidden, width], each feeding the next (so nothing overlaps), in one call:
    what XLA:CPU's matmuls reach on a batch-1 frame's shapes with no dispatch between them.
    """
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (rows, width), jnp.float32)
    w_up = jax.random.normal(k2, (width, 2 * hidden), jnp.float32) / np.sqrt(width)
    w_down = jax.random.normal(k3, (hidden, width), jnp.float32) / np.sqrt(hidden)

    @jax.jit
    def run(x, w_up, w_down):
        def body(_, x):
            h = x @ w_up
            return (jnp.tanh(h[:, :hidden]) * h[:, hidden:]) @ w_down

        return jax.lax.fori_loop(0, chain, body, x)

    flops = chain * (2 * rows * width * 2 * hidden + 2 * rows * hidden * width)
    return flops / time_fn(run, x, w_up, w_down) / 1e9


def matmul_floor_figures(model, params) -> dict:
    """The batch-1 frame's FLOPs over the same-run speed of matmuls of its row count: the time a
    frame cannot go below on this CPU even with every non-matmul op and dispatch free."""
    c = model.config
    rows = c.layout().num_tokens
    gflop = frame_gflop(model, params)
    speed = rows_matmul_gflops(rows, c.transformer.width, c.transformer.mlp_dim)
    return {
        'gen_b1_frame_gflop': gflop,
        'gen_b1_rows': rows,
        'gen_b1_rows_matmul_gflops': speed,
        'gen_b1_matmul_floor_ms': 1e3 * gflop / speed,
    }


def generation_figures(config, quick: bool) -> dict:
    out = {}
    model, params = gen_setup(config)
    for context in CONTEXTS if not quick else (1, 63):
        out[f'gen_b1_ctx{context}_ms_per_frame'] = fresh_frame_ms(model, params, context)
    ms, noop = frame_ms(model, params, 1, 63)
    out['gen_b1_generate_frame_ms_per_frame'] = generate_frame_ms(model, params, 63)
    out['gen_b1_steady_ms_per_frame'] = ms
    out['gen_b1_noop_call_ms'] = noop
    ms16, _ = frame_ms(model, params, 16, 63)
    out['gen_b16_steady_ms_per_frame'] = ms16
    out['gen_b16_frames_per_sec'] = 16 * 1e3 / ms16
    out.update(matmul_floor_figures(model, params))
    return out


def run(quick: bool = False, **transformer) -> dict:
    b, t = (4, 8) if quick else (BATCH, FRAMES)  # 4 rows: teacher_rows 0.25 = one row
    rounds = 1 if quick else 2
    out = {'batch': b, 'frames': t}
    config = peer_config(b, t, **transformer)
    out.update(train_figures('tokenizer', tokenizer_step, config, rounds))
    no_lpips = peer_config(b, t, lpips=0.0, **transformer)
    out.update(train_figures('tokenizer_no_lpips', tokenizer_step, no_lpips, rounds))
    out['tokenizer_lpips_share'] = 1 - (
        out['tokenizer_no_lpips_step_seconds'] / out['tokenizer_step_seconds']
    )
    out.update(train_figures('dynamics', dynamics_step, config, rounds))
    fly = peer_config(b, t, **transformer)
    fly.dynamics.latents = 'on_the_fly'
    out.update(train_figures('dynamics_on_the_fly', dynamics_step, fly, rounds))
    out.update(generation_figures(config, quick))
    return out


if __name__ == '__main__':
    import json
    import sys

    print(json.dumps(run(quick='--quick' in sys.argv), indent=1))
