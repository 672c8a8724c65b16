"""Where phase 3's imagined gains come from (README, phases 2 and 3).

  python -m benchmarks.imagination_gap --imagination_workdir=runs/demo/imagination \
      [--evaluation=runs/demo/evaluation/success.json] [--batches=8] [--real_windows=128] \
      [--out=FILE.md]

Phase 3 (PAPER 10) trains the policy head on the frozen reward head's view of imagined
rollouts. When the finished policy earns much more imagined reward than its behavior-cloning
prior but not more real return, it has found what the reward head pays for and the game does
not. This rolls out the same training contexts (same windows, task prompts and noise) twice in
the frozen world model of a finished imagination run: once with the frozen BC prior (the
`prior_policy` the phase keeps, the WM+BC agent's policy) and once with the trained policy. It
reports:
- per prompted task: rollouts, imagined reward per rollout under each policy, and (with
  `--evaluation`, a closed-loop `success.json`) the real success rate of that achievement for
  the WM+BC and Dreamer 4 columns;
- per action: its share of the imagined actions under each policy, the mean imagined reward of
  the state it leads to, and the same for the dataset's own actions and the rewards the game
  paid for them (the prompted task's reward of the next frame, over the same windows);
- per action, the reward head on held-out real frames (`--real_windows` windows of the eval
  split, real actions, each prompted with its first event's task, as phase 2 evaluates): its
  mean prediction where the game paid the task and where it did not. A head that pays an action
  on real frames where the game did not is one imagination can exploit.
An action the trained policy takes more often, which the reward head pays more than the game
paid in the data, is one the imagination exploits.

Prints the tables (markdown), then one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os

import jax
import numpy as np

from dreamer4_jax import pretrained
from dreamer4_jax.dynamics import align_actions
from dreamer4_jax.envs import craftax
from dreamer4_jax.tokenizer import Tokenizer
from dreamer4_jax.train import agent_phase, data_sources, imagination_phase

POLICIES = ('prior', 'trained')
REAL = ('real_paid', 'real_unpaid')


def grouped_means(keys: np.ndarray, values: np.ndarray, num_keys: int) -> tuple[np.ndarray, ...]:
    """(counts [num_keys], means [num_keys]) of `values` grouped by integer `keys` (same shape);
    a key that never occurs has count 0 and mean NaN."""
    keys = np.asarray(keys).reshape(-1)
    values = np.asarray(values, np.float64).reshape(-1)
    if keys.shape != values.shape:
        raise ValueError(f'keys {keys.shape} and values {values.shape} differ in size')
    if keys.size and (keys.min() < 0 or keys.max() >= num_keys):
        raise ValueError(f'keys must lie in [0, {num_keys}), got [{keys.min()}, {keys.max()}]')
    counts = np.bincount(keys, minlength=num_keys)
    sums = np.bincount(keys, weights=values, minlength=num_keys)
    with np.errstate(invalid='ignore', divide='ignore'):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return counts, means


def single_action(actions: dict) -> jax.Array:
    """The one categorical component of an action dict (Craftax); other spaces are refused."""
    if len(actions) != 1:
        raise ValueError(f'per-action tables need one action component, got {sorted(actions)}')
    return next(iter(actions.values()))


def data_action_rewards(batch: dict, task_B: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(actions [B, T-1], rewards [B, T-1]) of the dataset windows: action t and the prompted
    task's reward of frame t + 1 (the game's payment for that action), labeled steps only."""
    acts, has = align_actions(batch['action'], batch['has_action'], batch['is_first'])
    # Block-aligned: entry t + 1 holds the action taken after frame t, which led to frame t + 1.
    act_BT = np.asarray(single_action(acts))[:, 1:]
    has_BT = np.asarray(has)[:, 1:]
    tr_BTK = np.asarray(batch['task_reward'], np.float64)[:, 1:]
    rew_BT = np.take_along_axis(tr_BTK, np.asarray(task_B)[:, None, None], axis=2)[..., 0]
    return act_BT[has_BT], rew_BT[has_BT]


def collect(run: pretrained.Pretrained, batches: int, seed: int) -> dict:
    """Imagined (and real) tasks, rewards and actions over `batches` training batches."""
    phase = imagination_phase.make_phase(run.config)
    step, consts = phase.train_step.args[0], phase.constants()
    trained = run.params()
    prior = {**trained, 'agent': {**trained['agent'], 'policy': trained['prior_policy']}}
    params = {'prior': prior, 'trained': trained}
    roll = jax.jit(functools.partial(imagination_phase.rollout, step))
    out = {p: {'task': [], 'return': [], 'action': [], 'next_reward': []} for p in POLICIES}
    data = {'action': [], 'reward': []}
    for i, batch in enumerate(itertools.islice(iter(phase.make_data(0, 1)), batches)):
        rng = jax.random.key(seed + i)
        for name in POLICIES:
            traj = roll(params[name], batch, rng, consts)
            reward = np.asarray(traj.reward, np.float64)  # [B, H+1]; entry 0: context frame
            action = np.asarray(single_action(traj.action))[:, :-1]  # led to states 1..H
            out[name]['task'].append(np.asarray(traj.task))
            out[name]['return'].append(reward[:, 1:].sum(axis=1))
            out[name]['action'].append(action)
            out[name]['next_reward'].append(reward[:, 1:])
        # The rollouts' own task prompts (both policies share them).
        a, r = data_action_rewards(batch, traj.task)
        data['action'].append(a)
        data['reward'].append(r)
        print(f'[imagination_gap] batch {i + 1}/{batches}', flush=True)
    cat = {p: {k: np.concatenate(v) for k, v in d.items()} for p, d in out.items()}
    return {**cat, 'data': {k: np.concatenate(v) for k, v in data.items()}, 'horizon': step.horizon}


def task_action_shares(found_policy: dict, num_tasks: int, num_actions: int) -> np.ndarray:
    """[num_tasks, num_actions]: each prompted task's share of each imagined action (rows of
    tasks that were never prompted are zero)."""
    act_BH = np.asarray(found_policy['action'])
    task_BH = np.broadcast_to(np.asarray(found_policy['task'])[:, None], act_BH.shape)
    counts = np.bincount(
        (task_BH * num_actions + act_BH).reshape(-1), minlength=num_tasks * num_actions
    ).reshape(num_tasks, num_actions)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def real_frames(run: pretrained.Pretrained, windows: int, seed: int) -> dict:
    """The reward head on held-out dataset frames (real frames, real actions, each window
    prompted with its first event's task as in phase 2's evaluation): per labeled frame, the
    action that led to it, the head's predicted reward and whether the game paid the task."""
    agent_run = run.earlier()
    tok_run = agent_run.earlier().earlier()
    wm = run.world_model()
    tok = Tokenizer(tok_run.tokenizer_config())
    batch = data_sources.eval_batch(agent_run.config, batch_size=windows)
    heads = jax.jit(functools.partial(agent_phase.held_out_heads, wm, tok))
    _, logits, task_B, _ = heads(run.params(), tok_run.params(), batch, jax.random.key(seed))
    pred_BT = np.asarray(wm.heads.config.reward_dist.mean(logits[:, :, 0]), np.float64)
    acts, has = align_actions(batch['action'], batch['has_action'], batch['is_first'])
    tr_BTK = np.asarray(batch['task_reward'])
    paid_BT = np.take_along_axis(tr_BTK, np.asarray(task_B)[:, None, None], axis=2)[..., 0] > 0
    has = np.asarray(has)
    return {
        'action': np.asarray(single_action(acts))[has],
        'reward': pred_BT[has],
        'paid': paid_BT[has],
    }


def summarize(found: dict, num_tasks: int, num_actions: int) -> dict:
    """Per-task and per-action tables (plain lists, JSON-ready) from `collect`'s arrays."""
    if not np.array_equal(found['prior']['task'], found['trained']['task']):
        raise AssertionError('the two rollouts must share their task prompts')
    tasks = {}
    for name in POLICIES:
        n, mean = grouped_means(found[name]['task'], found[name]['return'], num_tasks)
        tasks[name] = mean
    actions = {}
    for name in POLICIES:
        a = found[name]['action']
        n, mean = grouped_means(a, found[name]['next_reward'], num_actions)
        actions[name] = {'share': n / max(a.size, 1), 'reward': mean}
    if 'real' in found:
        real = found['real']
        for key, rows in (('real_paid', real['paid']), ('real_unpaid', ~real['paid'])):
            n, mean = grouped_means(real['action'][rows], real['reward'][rows], num_actions)
            actions[key] = {'share': n, 'reward': mean}
    n_data, mean_data = grouped_means(found['data']['action'], found['data']['reward'], num_actions)
    actions['data'] = {'share': n_data / max(n_data.sum(), 1), 'reward': mean_data}
    task_counts = np.bincount(found['prior']['task'], minlength=num_tasks)
    # Per prompted task: the action whose share the trained policy raised most over the prior.
    share_KA = {p: task_action_shares(found[p], num_tasks, num_actions) for p in POLICIES}
    gained_K = np.argmax(share_KA['trained'] - share_KA['prior'], axis=1)
    rows = np.arange(num_tasks)

    def clean(x):
        return [
            None if (isinstance(v, float) and math.isnan(v)) else v for v in np.asarray(x).tolist()
        ]

    return {
        'horizon': int(found['horizon']),
        'rollouts': int(found['prior']['task'].size),
        'reward_per_step': {p: float(found[p]['next_reward'].mean()) for p in POLICIES},
        'data_reward_per_step': float(found['data']['reward'].mean()),
        'task_rollouts': task_counts.tolist(),
        'task_return': {p: clean(tasks[p]) for p in POLICIES},
        'task_gained_action': [
            int(a) if n else None for a, n in zip(gained_K, task_counts, strict=True)
        ],
        'task_gained_share': {p: share_KA[p][rows, gained_K].tolist() for p in POLICIES},
        'action_share': {p: clean(actions[p]['share']) for p in (*POLICIES, 'data')},
        'action_reward': {p: clean(actions[p]['reward']) for p in actions},
        # Held-out real frames: how many each action led to, paid / unpaid by the game.
        'real_frames': {p: actions[p]['share'].tolist() for p in REAL if p in actions},
    }


def _fmt(v, spec='.3f'):
    return '-' if v is None else format(v, spec)


def markdown(summary: dict, evaluation: dict | None, columns: tuple[str, str]) -> str:
    """The two tables as markdown (tasks that were prompted; actions that occur anywhere)."""
    names_t, names_a = craftax.ACHIEVEMENT_NAMES, craftax.ACTION_NAMES
    rates = (evaluation or {}).get('rates', {})
    h = summary['horizon']
    lines = [
        f'{summary["rollouts"]} rollouts of {h} imagined steps; imagined reward per step: prior '
        f'{summary["reward_per_step"]["prior"]:.4f}, trained '
        f'{summary["reward_per_step"]["trained"]:.4f}; the game paid '
        f'{summary["data_reward_per_step"]:.4f} per step in the same windows of the dataset.',
        '',
        f'| prompted task | rollouts | imagined return, prior | trained | real rate {columns[0]} '
        f'| {columns[1]} | action the trained policy took more (share prior -> trained) |',
        '|---|---|---|---|---|---|---|',
    ]
    gained, gained_share = summary['task_gained_action'], summary['task_gained_share']
    for k, n in enumerate(summary['task_rollouts']):
        if n == 0:
            continue
        real = [rates.get(c, {}).get(names_t[k], {}).get('rate') for c in columns]
        lines.append(
            f'| {names_t[k]} | {n} | {_fmt(summary["task_return"]["prior"][k])} | '
            f'{_fmt(summary["task_return"]["trained"][k])} | {_fmt(real[0], ".2f")} | '
            f'{_fmt(real[1], ".2f")} | {names_a[gained[k]]} '
            f'({gained_share["prior"][k]:.2f} -> {gained_share["trained"][k]:.2f}) |'
        )
    share, reward = summary['action_share'], summary['action_reward']
    real = [p for p in REAL if p in reward]
    lines += [
        '',
        '| action | share: data | prior | trained | next reward: data (game) | prior (head) '
        '| trained (head) |'
        + (
            ' head on held-out real frames: game paid (frames) | game did not pay (frames) |'
            if real
            else ''
        ),
        '|---|---|---|---|---|---|---|' + '---|' * len(real),
    ]
    for a in range(len(share['data'])):
        if not any(share[p][a] for p in ('data', *POLICIES)):
            continue
        cells = [names_a[a]] + [_fmt(share[p][a], '.3f') for p in ('data', *POLICIES)]
        cells += [_fmt(reward[p][a], '.4f') for p in ('data', *POLICIES)]
        cells += [f'{_fmt(reward[p][a], ".4f")} ({summary["real_frames"][p][a]})' for p in real]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--imagination_workdir', required=True)
    parser.add_argument('--evaluation', default='', help='a closed-loop success.json')
    parser.add_argument('--columns', default='WM+BC,Dreamer 4', help='its two columns to show')
    parser.add_argument('--batches', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--real_windows', type=int, default=128, help='held-out windows to score (0: none)'
    )
    parser.add_argument('--out', default='', help='also write the tables to this markdown file')
    args = parser.parse_args(argv)
    if args.batches < 1 or args.real_windows < 0:
        parser.error('--batches must be >= 1 and --real_windows >= 0')
    columns = tuple(args.columns.split(','))
    if len(columns) != 2:
        parser.error('--columns takes two column names separated by a comma')
    evaluation = None
    if args.evaluation:
        with open(args.evaluation) as f:
            evaluation = json.load(f)['ladder']
        missing = [c for c in columns if c not in evaluation['rates']]
        if missing:
            parser.error(
                f'{args.evaluation} has no column {missing}; it has {list(evaluation["rates"])}'
            )
    run = pretrained.load(args.imagination_workdir, expect='imagination')
    found = collect(run, args.batches, args.seed)
    if args.real_windows:
        found['real'] = real_frames(run, args.real_windows, args.seed)
    summary = summarize(found, craftax.NUM_ACHIEVEMENTS, craftax.NUM_ACTIONS)
    text = markdown(summary, evaluation, columns)
    print(text, flush=True)
    if args.out:
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, args.out)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == '__main__':
    main()
