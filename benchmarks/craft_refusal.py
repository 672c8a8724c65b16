"""Does the world model refuse the crafts the game refuses? (README, "Tries in the data")

  python -m benchmarks.craft_refusal --dynamics_workdir=runs/cpu/dynamics [--envs=32] \
      [--steps=160] [--every=8] [--context=0] [--seed=0] [--out=FILE.json]

PAPER 10.3: the KL to the behavior-cloning prior guards phase 3 against world-model errors such as
"crafting" a pickaxe from invalid materials in imagination. This measures that error directly,
in the dynamics model alone. It plays the data's seeker in real Craftax-Classic worlds; every
`every` steps, from the same state and env key, it steps the game once with each of the ten
place/make actions and with noop, and asks the dynamics model for the next frame after the same
real context frames under each of those actions (the same noise for all of them). A press is
`accepted` when it changed the inventory or the map (against noop), else `refused`. Per action
and outcome it reports the mean absolute pixel change of the next frame against noop's, in the
inventory rows (where a crafted tool or a spent wood shows) and over the whole frame, for the game
and for the model. A model that knows the preconditions changes the inventory for accepted
presses and leaves it as noop's for refused ones; `refusal_ratio` (the model's inventory change
on refused presses over that on accepted ones) is 0 for such a model and about 1 for one that
makes every press succeed. `noise_floor` is the change between two noop frames sampled with
different noise: what sampling alone moves. `moves` is the whole-frame change of the four moves
against noop, for the game and the model: a model that reads its actions moves the view there.

Prints a markdown table, then one JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from craftax.craftax_classic.constants import Action

from dreamer4_jax import pretrained, world_model
from dreamer4_jax.data import policies
from dreamer4_jax.envs.craftax import ACTION_NAMES, CraftaxEnv
from dreamer4_jax.generation import rollout
from dreamer4_jax.tokenizer import Tokenizer

# Craftax-Classic draws 7 rows of 7-pixel map cells above 2 rows of inventory and status icons:
# pixel rows 49-62 of the 63 x 63 frame (tests/test_craft_refusal.py checks it on rendered states).
INVENTORY_TOP = 49
INVENTORY_BOTTOM = 63
NOOP = Action.NOOP.value
# The probed actions: the ten place/make actions, the four moves (a check that the model reads
# actions at all: a move changes the whole view), then noop (what every press is compared with).
MOVES = tuple(a.value for a in (Action.LEFT, Action.RIGHT, Action.UP, Action.DOWN))
PRESSES = policies.TRY_ACTIONS
PROBE_ACTIONS = (*PRESSES, *MOVES, NOOP)
SEEKER = policies.POLICY_NAMES.index('seeker')


def pixel_change(a, b) -> tuple[np.ndarray, np.ndarray]:
    """(inventory-rows change, whole-frame change): mean |a - b| over [..., H, W, C] frames in
    [0, 1], the first over pixel rows INVENTORY_TOP:INVENTORY_BOTTOM only."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return d[..., INVENTORY_TOP:INVENTORY_BOTTOM, :, :].mean(axis=(-3, -2, -1)), d.mean(
        axis=(-3, -2, -1)
    )


def state_changed(state_a, state_b) -> jax.Array:
    """bool: the two (single-env) states differ in the inventory or the map."""
    pairs = zip(jax.tree.leaves(state_a.inventory), jax.tree.leaves(state_b.inventory), strict=True)
    inv = [jnp.any(x != y) for x, y in pairs]
    return jnp.any(jnp.stack(inv)) | jnp.any(state_a.map != state_b.map)


def make_game_probe(env: CraftaxEnv):
    """Jitted (states [E], keys [E]) -> (next frames uint8 [E, A, H, W, 3], accepted bool [E, A]):
    one game step per probed action from the same state and key; noop (the last) is never
    accepted."""
    probe = jnp.asarray(PROBE_ACTIONS, jnp.int32)

    def one(state, key):
        nxt, ts = jax.vmap(lambda a: env.step_single(state, a, key))(probe)
        noop_state = jax.tree.map(lambda x: x[-1], nxt)

        def changed_by(i):
            return state_changed(jax.tree.map(lambda x: x[i], nxt), noop_state)

        changed = jax.vmap(changed_by)(jnp.arange(len(PROBE_ACTIONS)))
        return ts.frame, changed

    return jax.jit(jax.vmap(one))


def make_model_probe(run: pretrained.Pretrained):
    """(params, tok_params, frames [E, C, H, W, 3] in [0, 1], actions [E, C - 1] taken after the
    first C - 1 of them, rng) -> model frames [E, A + 1, H, W, 3]: the next frame under each
    probed action with one noise draw, then noop again with another draw (the noise floor)."""
    dyn_cd = run.config.dynamics
    tok_run = run.earlier()
    tok = world_model.tokenizer_of(tok_run.config.tokenizer)
    model = world_model.dynamics_of(dyn_cd, run.tokenizer_config())
    sampling = world_model.sampling_config(dyn_cd)
    comps = model.config.actions
    if len(comps) != 1 or comps[0][1] != 'categorical':
        raise ValueError(f'{run.workdir}: the probe needs one categorical action, got {comps}')
    name = comps[0][0]

    @jax.jit
    def probe(params, tok_params, frames, ctx_actions, rng):
        e, c = frames.shape[:2]
        z = tok.apply({'params': tok_params}, frames, method=Tokenizer.encode)
        # Block-aligned actions of the C context frames and the generated one (block j carries
        # the action that led to frame j; block 0 has none).
        has = jnp.ones((e, c + 1), bool).at[:, 0].set(False)

        def next_frame(action, key):
            acts = jnp.concatenate(
                [jnp.zeros((e, 1), jnp.int32), ctx_actions.astype(jnp.int32),
                 jnp.full((e, 1), action, jnp.int32)], axis=1,
            )  # fmt: skip
            gen = rollout(model, params, z, {name: acts}, has, key, 1, sampling)
            pix = tok.apply(
                {'params': tok_params}, jnp.concatenate([z, gen], axis=1), method=Tokenizer.decode
            )
            return jnp.clip(pix[:, -1], 0.0, 1.0)

        key, floor_key = jax.random.split(rng)
        probed = jax.lax.map(lambda a: next_frame(a, key), jnp.asarray(PROBE_ACTIONS, jnp.int32))
        floor = next_frame(jnp.int32(NOOP), floor_key)
        return jnp.concatenate([jnp.moveaxis(probed, 0, 1), floor[:, None]], axis=1)

    return probe


def play_and_probe(run: pretrained.Pretrained, *, envs: int, steps: int, every: int,
                   context: int, seed: int, log=print) -> dict:  # fmt: skip
    """Per probe (env, time) and probed action: the game's and the model's changes against noop,
    and whether the game accepted the press (the module doc). Returns host arrays [P, A] (P probes
    of live envs), plus the noise floor [P]."""
    env = CraftaxEnv()
    params, tok_params = run.params(), run.earlier().params()
    model_probe = make_model_probe(run)
    game_probe = make_game_probe(env)

    @jax.jit
    def seeker_step(states, pstates, key):
        k_act, k_env = jax.random.split(key)
        acts, pstates = jax.vmap(
            lambda s, p, k: policies.act(
                jnp.int32(SEEKER), s, p, k, max_repeat=1, epsilon=0.05, used=(SEEKER,)
            )  # fmt: skip
        )(states, pstates, jax.random.split(k_act, envs))
        states, ts = env.step(states, acts, k_env)
        return states, pstates, acts, ts

    root = jax.random.key(seed)
    states, ts = env.reset(jax.random.fold_in(root, 0), envs)
    pstates = jax.vmap(lambda _: policies.init_policy_state())(jnp.arange(envs))
    frames, actions, alive = [np.asarray(ts.frame)], [], [~np.asarray(ts.is_last)]
    out = {k: [] for k in ('real_inv', 'real_full', 'model_inv', 'model_full', 'accepted')}
    out['noise_floor'] = []
    for t in range(steps):
        if t >= context - 1 and (t - context + 1) % every == 0:
            live = alive[-1]
            keys = jax.random.split(jax.random.fold_in(root, 3 * t + 1), envs)
            real, accepted = jax.device_get(game_probe(states, keys))
            ctx = np.stack(frames[t - context + 1 : t + 1], axis=1).astype(np.float32) / 255.0
            past = actions[t - context + 1 : t]  # the actions between the context frames
            ctx_act = np.stack(past, axis=1) if past else np.zeros((envs, 0), np.int32)
            gen = np.asarray(model_probe(params, tok_params, ctx, ctx_act,
                                         jax.random.fold_in(root, 3 * t + 2)))  # fmt: skip
            real = real.astype(np.float32) / 255.0
            r_inv, r_full = pixel_change(real, real[:, -1:])
            m_inv, m_full = pixel_change(gen[:, :-1], gen[:, -2:-1])
            floor, _ = pixel_change(gen[:, -1], gen[:, -2])
            for k, v in (('real_inv', r_inv), ('real_full', r_full), ('model_inv', m_inv),
                         ('model_full', m_full), ('accepted', accepted)):  # fmt: skip
                out[k].append(v[live])
            out['noise_floor'].append(floor[live])
            log(f'[craft_refusal] step {t}: {int(live.sum())} live envs probed, '
                f'{int(accepted[live][:, : len(PRESSES)].sum())} presses accepted')  # fmt: skip
        states, pstates, acts, ts = seeker_step(
            states, pstates, jax.random.fold_in(root, 3 * t + 3)
        )
        frames.append(np.asarray(ts.frame))
        actions.append(np.asarray(acts))
        alive.append(alive[-1] & ~np.asarray(ts.is_last))
    if not out['accepted']:
        raise ValueError(
            f'no probe: steps={steps} must exceed context - 1 = {context - 1} '
            f'(a probe every {every} steps)'
        )
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize(found: dict) -> dict:
    """Per probed place/make action and outcome: counts and mean changes; the refusal ratios."""
    rows, acc = {}, found['accepted']
    for i, a in enumerate(PRESSES):
        row = {}
        for outcome, mask in (('accepted', acc[:, i]), ('refused', ~acc[:, i])):
            row[f'n_{outcome}'] = int(mask.sum())
            for k in ('real_inv', 'real_full', 'model_inv', 'model_full'):
                row[f'{k}_{outcome}'] = float(found[k][mask, i].mean()) if mask.any() else math.nan
        row['refusal_ratio'] = ratio(row['model_inv_refused'], row['model_inv_accepted'])
        rows[ACTION_NAMES[a]] = row
    n = len(PRESSES)
    presses = acc[:, :n]
    pooled = {
        'n_accepted': int(presses.sum()),
        'n_refused': int((~presses).sum()),
        'model_inv_accepted': masked_mean(found['model_inv'][:, :n], presses),
        'model_inv_refused': masked_mean(found['model_inv'][:, :n], ~presses),
        'real_inv_accepted': masked_mean(found['real_inv'][:, :n], presses),
        'real_inv_refused': masked_mean(found['real_inv'][:, :n], ~presses),
        'noise_floor': float(np.mean(found['noise_floor'])),
    }
    pooled['refusal_ratio'] = ratio(pooled['model_inv_refused'], pooled['model_inv_accepted'])
    moves = slice(n, n + len(MOVES))
    moved = {
        'real_full': float(found['real_full'][:, moves].mean()),
        'model_full': float(found['model_full'][:, moves].mean()),
    }
    return {'actions': rows, 'pooled': pooled, 'moves': moved}


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else math.nan


def ratio(num: float, den: float) -> float:
    return num / den if den > 0 and not math.isnan(num) else math.nan


def markdown(summary: dict) -> str:
    def f(v, spec='.4f'):
        return 'n/a' if isinstance(v, float) and math.isnan(v) else format(v, spec)

    lines = [
        '| action | accepted / refused presses | game: inventory change, accepted / refused '
        '| model: inventory change, accepted / refused | refusal ratio |',
        '|---|---|---|---|---|',
    ]
    items = list(summary['actions'].items()) + [('all place/make (pooled)', summary['pooled'])]
    for name, r in items:
        lines.append(
            f'| {name} | {r["n_accepted"]} / {r["n_refused"]} '
            f'| {f(r["real_inv_accepted"])} / {f(r["real_inv_refused"])} '
            f'| {f(r["model_inv_accepted"])} / {f(r["model_inv_refused"])} '
            f'| {f(r["refusal_ratio"], ".2f")} |'
        )
    lines.append('')
    lines.append(f'Noise floor (two noop samples): {f(summary["pooled"]["noise_floor"])}.')
    m = summary['moves']
    lines.append(
        f'Moves (whole-frame change against noop): game {f(m["real_full"])}, model '
        f'{f(m["model_full"])}.'
    )
    return '\n'.join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--dynamics_workdir', required=True, help='a finished dynamics (phase 1b) run')
    p.add_argument('--envs', type=int, default=32, help='Craftax worlds played at once')
    p.add_argument('--steps', type=int, default=160, help='seeker steps per world')
    p.add_argument('--every', type=int, default=8, help='probe every this many steps')
    p.add_argument(
        '--context', type=int, default=0, help="real frames per probe (0: the run's window - 1)"
    )
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='', help='also write the JSON here')
    args = p.parse_args(argv)
    if min(args.envs, args.steps, args.every) < 1 or args.context < 0:
        p.error('--envs, --steps and --every must be >= 1, --context >= 0')
    run = pretrained.load(args.dynamics_workdir)
    if run.phase != 'dynamics':
        p.error(f'{args.dynamics_workdir} holds a {run.phase!r} run, not a dynamics run')
    context = args.context or max(1, int(run.config.data.window_length) - 1)
    found = play_and_probe(run, envs=args.envs, steps=args.steps, every=args.every,
                           context=context, seed=args.seed)  # fmt: skip
    summary = {'context': context, **summarize(found)}
    print(markdown(summary))
    line = json.dumps(summary, allow_nan=True)
    print(line)
    if args.out:
        tmp = f'{args.out}.tmp'
        with open(tmp, 'w') as fh:
            fh.write(line + '\n')
        os.replace(tmp, args.out)
    return summary


if __name__ == '__main__':
    main()
