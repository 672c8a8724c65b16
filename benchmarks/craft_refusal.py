"""Does the world model refuse the crafts the game refuses? (README, "Tries in the data")

  python -m benchmarks.craft_refusal --dynamics_workdir=runs/cpu/dynamics [--envs=32] \
      [--steps=160] [--every=8] [--context=0] [--seed=0] [--out=FILE.json]
  python -m benchmarks.craft_refusal --agent_workdir=runs/cpu/agent [...]

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

Given an agent (phase 2) or imagination (phase 3) run instead, it probes that run's own dynamics
weights (those imagination rolls out with) and also reads the reward head after every press,
prompted with the press's achievement as the task: on the frame the model generates (what
imagination pays), on the game's next frame, and on the game's next frame with noop as the
block action. Split by what the game paid (1 for a first unlock, 0 for an accepted press whose
achievement was already unlocked, 0 for a refused one), this says whether imagination pays for
presses the game refuses, and whether the head reads the frame or the press: a refused press
leaves the game's frame as noop's, so a payment there is for the press alone.

Prints a markdown table, then one JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from craftax.craftax_classic.constants import Action

from dreamer4_jax import pretrained, world_model
from dreamer4_jax.data import policies
from dreamer4_jax.dynamics import Dynamics
from dreamer4_jax.envs.craftax import ACTION_ACHIEVEMENT, ACTION_NAMES, CraftaxEnv
from dreamer4_jax.generation import new_cache, rollout
from dreamer4_jax.imagination import dream, observe
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
    """Jitted (states [E], keys [E]) -> (next frames uint8 [E, A, H, W, 3], accepted bool [E, A],
    paid bool [E, A]): one game step per probed action from the same state and key; noop (the
    last) is never accepted. `paid`: the press unlocked its own achievement for the first time,
    the step a task reward pays for (moves and noop: never)."""
    probe = jnp.asarray(PROBE_ACTIONS, jnp.int32)
    achievement = jnp.asarray([ACTION_ACHIEVEMENT[a] for a in PROBE_ACTIONS], jnp.int32)

    def one(state, key):
        nxt, ts = jax.vmap(lambda a: env.step_single(state, a, key))(probe)
        noop_state = jax.tree.map(lambda x: x[-1], nxt)

        def changed_by(i):
            return state_changed(jax.tree.map(lambda x: x[i], nxt), noop_state)

        changed = jax.vmap(changed_by)(jnp.arange(len(PROBE_ACTIONS)))
        own = jnp.take_along_axis(ts.unlocked, jnp.maximum(achievement, 0)[:, None], axis=1)
        return ts.frame, changed, own[:, 0] & (achievement >= 0)

    return jax.jit(jax.vmap(one))


@dataclasses.dataclass(frozen=True)
class Probed:
    """What the probe reads of a run: the dynamics model and its weights, the tokenizer, and for
    an agent or imagination run the world model with its heads (`wm`, `params`; else None)."""

    model: Dynamics
    dyn_params: Any
    tok: Tokenizer
    tok_params: Any
    sampling: Any
    window: int
    wm: world_model.WorldModel | None = None
    params: Any = None


def load_probed(run: pretrained.Pretrained) -> Probed:
    """A dynamics run, or an agent / imagination run (whose own dynamics weights, those
    imagination rolls out with, are probed, and whose reward head is read too)."""
    workdir = run.workdir
    if run.phase == 'dynamics':
        tok_run = run.earlier()
        model = world_model.dynamics_of(run.config.dynamics, run.tokenizer_config())
        wm, params, dyn_params, dyn_cd = None, None, run.params(), run.config.dynamics
    elif run.phase in ('agent', 'imagination'):
        agent_run = run.earlier() if run.phase == 'imagination' else run
        dyn_run = agent_run.earlier()
        tok_run = dyn_run.earlier()
        wm, params = run.world_model(), run.params()
        model, dyn_params, dyn_cd = wm.dynamics, params['dynamics'], dyn_run.config.dynamics
    else:
        raise ValueError(
            f'{workdir} holds a {run.phase!r} run; the probe needs a dynamics, agent or '
            'imagination run'
        )
    comps = model.config.actions
    if len(comps) != 1 or comps[0][1] != 'categorical':
        raise ValueError(f'{workdir}: the probe needs one categorical action, got {comps}')
    return Probed(
        model=model,
        dyn_params=dyn_params,
        tok=world_model.tokenizer_of(tok_run.config.tokenizer),
        tok_params=tok_run.params(),
        sampling=world_model.sampling_config(dyn_cd),
        window=int(run.config.data.window_length),
        wm=wm,
        params=params,
    )


def make_model_probe(model: Dynamics, tok: Tokenizer, sampling):
    """(params, tok_params, frames [E, C, H, W, 3] in [0, 1], actions [E, C - 1] taken after the
    first C - 1 of them, rng) -> model frames [E, A + 1, H, W, 3]: the next frame under each
    probed action with one noise draw, then noop again with another draw (the noise floor)."""
    name = model.config.actions[0][0]

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


def make_reward_probe(wm: world_model.WorldModel, tok: Tokenizer):
    """(params, tok_params, frames [E, C, H, W, 3] in [0, 1], actions [E, C - 1], the game's next
    frames after each press [E, P, H, W, 3] in [0, 1], rng) -> the reward head's offset-0 reward
    [E, P, 3], prompted with the press's own achievement as the task (PAPER 9.1), read at:
      0: the frame the dynamics model generates after the press (what imagination pays, PAPER
         10.1),
      1: the game's next frame, with the press as its block action,
      2: the game's next frame, with noop as its block action.
    A refused press leaves the game's frame as noop's, so reading 1 there is the press alone;
    reading 2 after a paid press is the frame alone. The same noise for every press."""
    name = wm.dynamics.config.actions[0][0]
    achievement = [ACTION_ACHIEVEMENT[a] for a in PRESSES]

    @jax.jit
    def probe(params, tok_params, frames, ctx_actions, real_next, rng):
        e, c = frames.shape[:2]
        encode = functools.partial(tok.apply, {'params': tok_params}, method=Tokenizer.encode)
        z = encode(frames)
        z_real = encode(real_next.reshape(-1, 1, *real_next.shape[2:]))
        z_real = z_real.reshape(e, len(PRESSES), *z_real.shape[1:])  # [E, P, 1, N, C]
        acts = jnp.concatenate([jnp.zeros((e, 1), jnp.int32), ctx_actions.astype(jnp.int32)], 1)
        has = jnp.ones((e, c), bool).at[:, 0].set(False)
        has_1 = jnp.ones((e, 1), bool)
        k_ctx, k_dream, k_obs = jax.random.split(rng, 3)
        noop = {name: jnp.full((e, 1), NOOP, jnp.int32)}

        def one(i):
            task_1 = jnp.full((e, 1), jnp.asarray(achievement)[i], jnp.int32)
            press = {name: jnp.full((e, 1), jnp.asarray(PRESSES)[i], jnp.int32)}
            # The context is committed under each press's own task, as imagination commits it:
            # the agent tokens of the next frame read the context's agent tokens through the
            # cache, so one commit under another task would change the reading.
            cache = new_cache(wm.dynamics, e, c + 1)
            _, cache = observe(wm, params, z, {name: acts}, has,
                               jnp.broadcast_to(task_1, (e, c)), cache, k_ctx)  # fmt: skip
            z_gen = dream(wm, params, cache, press, has_1, k_dream)

            def reward_of(z_1, act):
                h, _ = observe(wm, params, z_1, act, has_1, task_1, cache, k_obs)
                return wm.reward(params, h)[:, 0]

            return jnp.stack(
                [reward_of(z_gen, press), reward_of(z_real[:, i], press),
                 reward_of(z_real[:, i], noop)], axis=-1,
            )  # fmt: skip

        return jnp.moveaxis(jax.lax.map(one, jnp.arange(len(PRESSES))), 0, 1)

    return probe


def play_and_probe(run: Probed, *, envs: int, steps: int, every: int, context: int, seed: int,
                   log=print) -> dict:  # fmt: skip
    """Per probe (env, time) and probed action: the game's and the model's changes against noop,
    whether the game accepted the press and paid for it (the module doc). Returns host arrays
    [P, A] (P probes of live envs), the noise floor [P], and with a reward head its readings
    [P, presses, 3] (`make_reward_probe`)."""
    env = CraftaxEnv()
    params, tok_params = run.dyn_params, run.tok_params
    model_probe = make_model_probe(run.model, run.tok, run.sampling)
    reward_probe = make_reward_probe(run.wm, run.tok) if run.wm is not None else None
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
    fields = ('real_inv', 'real_full', 'model_inv', 'model_full', 'accepted', 'paid', 'noise_floor')
    out = {k: [] for k in fields + (('reward',) if reward_probe else ())}
    for t in range(steps):
        if t >= context - 1 and (t - context + 1) % every == 0:
            live = alive[-1]
            keys = jax.random.split(jax.random.fold_in(root, 3 * t + 1), envs)
            real, accepted, paid = jax.device_get(game_probe(states, keys))
            ctx = np.stack(frames[t - context + 1 : t + 1], axis=1).astype(np.float32) / 255.0
            past = actions[t - context + 1 : t]  # the actions between the context frames
            ctx_act = np.stack(past, axis=1) if past else np.zeros((envs, 0), np.int32)
            noise = jax.random.fold_in(root, 3 * t + 2)
            gen = np.asarray(model_probe(params, tok_params, ctx, ctx_act, noise))
            real = real.astype(np.float32) / 255.0
            if reward_probe is not None:
                read = reward_probe(run.params, tok_params, ctx, ctx_act,
                                    real[:, : len(PRESSES)], noise)  # fmt: skip
                out['reward'].append(np.asarray(read)[live])
            r_inv, r_full = pixel_change(real, real[:, -1:])
            m_inv, m_full = pixel_change(gen[:, :-1], gen[:, -2:-1])
            floor, _ = pixel_change(gen[:, -1], gen[:, -2])
            for k, v in (('real_inv', r_inv), ('real_full', r_full), ('model_inv', m_inv),
                         ('model_full', m_full), ('accepted', accepted), ('paid', paid),
                         ('noise_floor', floor)):  # fmt: skip
                out[k].append(v[live])
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
    summary = {'actions': rows, 'pooled': pooled, 'moves': moved}
    if 'reward' in found:
        summary['reward'] = summarize_rewards(found['reward'], acc[:, :n], found['paid'][:, :n])
    return summary


# The reward head's three readings (make_reward_probe) and the press outcomes they are split by.
READINGS = ('dreamed', 'real_press', 'real_noop')
OUTCOMES = ('paid', 'unpaid', 'refused')


def reward_cells(read: np.ndarray, accepted: np.ndarray, paid: np.ndarray) -> dict:
    """Counts and mean readings per outcome: paid (accepted, first unlock: the game pays 1),
    unpaid (accepted, already unlocked: the game pays 0) and refused (the game pays 0)."""
    masks = {'paid': accepted & paid, 'unpaid': accepted & ~paid, 'refused': ~accepted}
    cells = {}
    for outcome in OUTCOMES:
        cells[f'n_{outcome}'] = int(masks[outcome].sum())
        for j, reading in enumerate(READINGS):
            cells[f'{reading}_{outcome}'] = masked_mean(read[..., j], masks[outcome])
    return cells


def summarize_rewards(read: np.ndarray, accepted: np.ndarray, paid: np.ndarray) -> dict:
    """Per place/make action and pooled over them: `reward_cells` of [P, presses, 3] readings."""
    rows = {
        ACTION_NAMES[a]: reward_cells(read[:, i], accepted[:, i], paid[:, i])
        for i, a in enumerate(PRESSES)
    }
    return {'actions': rows, 'pooled': reward_cells(read, accepted, paid)}


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
    if 'reward' in summary:
        lines += ['', reward_markdown(summary['reward'])]
    return '\n'.join(lines)


def reward_markdown(rewards: dict) -> str:
    def f(v):
        return 'n/a' if math.isnan(v) else f'{v:.3f}'

    lines = [
        "The reward head, prompted with the press's achievement (game pays 1 / 0 / 0):",
        '',
        '| action | paid / unpaid / refused presses | on the dreamed frame: paid / unpaid / '
        "refused | on the game's frame: paid / unpaid / refused | the game's frame read "
        'with noop: paid / refused |',
        '|---|---|---|---|---|',
    ]
    items = list(rewards['actions'].items()) + [('all place/make (pooled)', rewards['pooled'])]
    for name, r in items:
        cells = [' / '.join(str(r[f'n_{o}']) for o in OUTCOMES)]
        for reading in ('dreamed', 'real_press'):
            cells.append(' / '.join(f(r[f'{reading}_{o}']) for o in OUTCOMES))
        cells.append(f'{f(r["real_noop_paid"])} / {f(r["real_noop_refused"])}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument('--dynamics_workdir', help='a finished dynamics (phase 1b) run')
    which.add_argument(
        '--agent_workdir',
        help='a finished agent (phase 2) or imagination (phase 3) run: its own dynamics weights '
        'are probed and its reward head is read too',
    )
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
    workdir = args.dynamics_workdir or args.agent_workdir
    loaded = pretrained.load(workdir)
    wanted = ('dynamics',) if args.dynamics_workdir else ('agent', 'imagination')
    if loaded.phase not in wanted:
        p.error(f'{workdir} holds a {loaded.phase!r} run, not one of {wanted}')
    run = load_probed(loaded)
    context = args.context or max(1, run.window - 1)
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
