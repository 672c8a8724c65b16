"""Does the reward head see the damage? (README, "The health term in phase 3")

  python -m benchmarks.reward_head_health --agent_workdir=runs/cpu/agent [--windows=320] \
      [--chunk=64] [--seed=0] [--out=FILE.json]

`config.agent.health_reward` adds Craftax's health term (0.1 per health point gained or lost) to
every task's reward target in phase 2, so that phase 3's imagined returns count the damage taken.
That can only work if the reward head, reading real frames, predicts the term. This reads the
head's offset-0 reward on held-out windows (every frame committed at the context signal level, as
imagination commits them; each window prompted with its first event's task, as phase 2's
evaluation does) and averages it over four kinds of labeled frame: a hit (health term < 0), a
point healed back (> 0), a neutral frame (no health change, no unlock of the prompted task) and a
frame that unlocks the prompted task. Next to each mean it puts the mean target the head was
trained on (the unlock plus the run's weight times the health term). A head that sees the damage
predicts below its neutral frames on the hits.

Prints a markdown table, then one JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import numpy as np

from dreamer4_jax import pretrained
from dreamer4_jax.agent import frame_rewards, health_rewards
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import agent_phase, data_sources

FRAME_KINDS = ('hit', 'healed', 'neutral', 'unlock')


def frame_kind_means(
    predicted: np.ndarray, health: np.ndarray, unlock: np.ndarray, weight: float
) -> dict:
    """Per frame kind (FRAME_KINDS): frames, the mean predicted reward and the mean trained
    target (unlock + weight * health). Inputs are flat over the labeled frames; `unlock` is
    the prompted task's reward (0 or 1). Unlocks go to 'unlock' whatever their health term."""
    predicted, health, unlock = (np.asarray(x, np.float64) for x in (predicted, health, unlock))
    unlocked = unlock > 0
    masks = {
        'hit': ~unlocked & (health < -1e-3),
        'healed': ~unlocked & (health > 1e-3),
        'neutral': ~unlocked & (np.abs(health) <= 1e-3),
        'unlock': unlocked,
    }
    target = unlock + weight * health
    out = {}
    for kind in FRAME_KINDS:
        m = masks[kind]
        n = int(m.sum())
        out[kind] = {
            'frames': n,
            'predicted': float(predicted[m].mean()) if n else None,
            'target': float(target[m].mean()) if n else None,
        }
    return out


def probe(run: pretrained.Pretrained, windows: int, chunk: int, seed: int) -> dict:
    tok_run = run.earlier().earlier()
    wm = run.world_model()
    tok = Tokenizer(tok_run.tokenizer_config())
    heads = jax.jit(functools.partial(agent_phase.held_out_heads, wm, tok))
    batch = data_sources.eval_batch(run.config, batch_size=windows)
    params, tok_params = run.params(), tok_run.params()
    predicted, health, unlock = [], [], []
    for start in range(0, windows - chunk + 1, chunk):  # equal chunks: one compilation
        part = jax.tree.map(lambda x, s=start: x[s : s + chunk], batch)
        rng = jax.random.fold_in(jax.random.key(seed), start)
        _, logits, task_B, _ = heads(params, tok_params, part, rng)
        pred_BT = np.asarray(wm.heads.config.reward_dist.mean(logits[:, :, 0]))
        unlock_BT = np.asarray(frame_rewards(part, task_B))
        labeled = ~np.asarray(part['is_first'])  # no transition leads into an episode's first frame
        predicted.append(pred_BT[labeled])
        health.append(np.asarray(health_rewards(part))[labeled])
        unlock.append(unlock_BT[labeled])
    weight = agent_phase.health_reward_weight(run.config)
    return {
        'agent_workdir': run.workdir,
        'health_reward': weight,
        'windows': windows - windows % chunk,
        **frame_kind_means(*(np.concatenate(x) for x in (predicted, health, unlock)), weight),
    }


def markdown(found: dict) -> str:
    lines = [
        f'Reward head on held-out frames: {found["agent_workdir"]} '
        f'(health_reward = {found["health_reward"]}, {found["windows"]} windows)',
        '',
        '| frame | frames | predicted reward | trained target |',
        '|---|---|---|---|',
    ]
    for kind in FRAME_KINDS:
        row = found[kind]
        cells = ['-' if row[k] is None else f'{row[k]:.3f}' for k in ('predicted', 'target')]
        lines.append(f'| {kind} | {row["frames"]} | {" | ".join(cells)} |')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--agent_workdir', required=True, help='a finished phase 2 run')
    parser.add_argument('--windows', type=int, default=320, help='held-out windows')
    parser.add_argument('--chunk', type=int, default=64, help='windows per compiled call')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='', help='also write the JSON here')
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.windows < args.chunk:
        parser.error(f'need 1 <= --chunk <= --windows (got {args.chunk} and {args.windows})')
    run = pretrained.load(args.agent_workdir, expect='agent')
    found = probe(run, args.windows, args.chunk, args.seed)
    print(markdown(found), flush=True)
    if args.out:
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(found, f)
        os.replace(tmp, args.out)
    print(json.dumps(found), flush=True)
    return found


if __name__ == '__main__':
    main()
