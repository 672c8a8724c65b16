"""Success rates with Wilson confidence intervals, written as JSON + a Markdown table.

PAPER 12.1 (Table 7): one row per item (here: Craftax achievement), one column per agent, the
percentage of episodes in which the item was obtained. Rates come only from real environment
episodes (eval/closed_loop.py); this module only counts and formats.

Dimension keys: E episodes, K achievements.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (95 % for z = 1.96); (0, 1) when trials = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 % or 100 %,
    which matters for rare achievements over few episodes.
    """
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(
            f'wilson_interval needs 0 <= successes <= trials, got {successes}, {trials}'
        )
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    center = (p + z2 / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, center - half), min(1.0, center + half)


def mean_interval(values, z: float = 1.96) -> tuple[float, float, float]:
    """(mean, low, high): the normal-approximation 95 % interval of a mean over episodes,
    mean +- z * s / sqrt(n) with the sample standard deviation s (n - 1); one value: no width."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        return 0.0, 0.0, 0.0
    mean = float(v.mean())
    half = z * float(v.std(ddof=1)) / np.sqrt(v.size) if v.size > 1 else 0.0
    return mean, mean - half, mean + half


def rates_from_unlocks(
    unlocked_EK: np.ndarray, names: Sequence[str], z: float = 1.96
) -> dict[str, dict]:
    """Per achievement: successes, episodes, rate and Wilson interval (fractions in [0, 1])."""
    unlocked_EK = np.asarray(unlocked_EK, bool)
    if unlocked_EK.ndim != 2 or unlocked_EK.shape[1] != len(names):
        raise ValueError(f'unlocked must be [episodes, {len(names)}], got {unlocked_EK.shape}')
    e = unlocked_EK.shape[0]
    out = {}
    for k, name in enumerate(names):
        s = int(unlocked_EK[:, k].sum())
        lo, hi = wilson_interval(s, e, z)
        out[name] = {
            'successes': s,
            'episodes': e,
            'rate': s / e if e else 0.0,
            'ci_low': lo,
            'ci_high': hi,
        }
    return out


def _cell(entry: Mapping) -> str:
    return f'{100 * entry["rate"]:.1f} [{100 * entry["ci_low"]:.0f}, {100 * entry["ci_high"]:.0f}]'


def markdown_table(
    table: Mapping[str, Mapping[str, Mapping]], names: Sequence[str], title: str = ''
) -> str:
    """Table-7-shaped Markdown: rows = achievements, columns = agents, 'rate% [95 % CI]'."""
    agents = list(table)
    lines = [f'### {title}', ''] if title else []
    lines.append('| Achievement | ' + ' | '.join(agents) + ' |')
    lines.append('|---|' + '---|' * len(agents))
    for name in names:
        cells = [_cell(table[a][name]) if name in table[a] else '-' for a in agents]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _atomic_write(path: str, text: str) -> None:
    """Write via a temporary file and rename: a reader never sees a half-written table."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _interval_text(stats: Mapping, mean_key: str, prefix: str) -> str:
    """'mean [low, high]' from stats[mean_key] and stats[prefix + '_ci_low' / '_ci_high']."""
    low, high = stats[f'{prefix}_ci_low'], stats[f'{prefix}_ci_high']
    return f'{stats[mean_key]:.2f} [{low:.2f}, {high:.2f}]'


def return_cell(stats: Mapping) -> str:
    """'mean [low, high]' of an agent's episode returns (just the mean for older results)."""
    if 'return_ci_low' not in stats:
        return f'{stats["mean_return"]:.2f}'
    return _interval_text(stats, 'mean_return', 'return')


def ladder_cell(stats: Mapping) -> str:
    """'mean [low, high]' of the ladder's tasks unlocked per episode; '-' for older results."""
    if 'ladder_unlocks' not in stats:
        return '-'
    return _interval_text(stats, 'ladder_unlocks', 'ladder_unlocks')


def death_cell(stats: Mapping) -> str:
    """'share died (per cause)' of an agent's episodes in percent; '-' for older results."""
    if 'died' not in stats:
        return '-'
    causes = [(k.split('/', 1)[1], v) for k, v in stats.items() if k.startswith('died/')]
    parts = ', '.join(f'{name.replace("_", " ")} {100 * v:.0f}' for name, v in causes)
    return f'{100 * stats["died"]:.0f} %' + (f' ({parts})' if parts else '')


def tries_table(tries: Mapping[str, Mapping[str, Mapping]]) -> str:
    """Markdown: per place/make action (rows) and agent (columns), 'tries per episode before
    its first success (refused %)'; entries from closed_loop.tries_stats."""
    agents = list(tries)
    actions = list(dict.fromkeys(a for agent in agents for a in tries[agent]))
    lines = [
        'Place and make actions: presses per episode while their achievement was still locked '
        '(the share the game refused: no materials, no table nearby).',
        '',
        '| Action | ' + ' | '.join(agents) + ' |',
        '|---|' + '---|' * len(agents),
    ]
    for action in actions:
        cells = []
        for agent in agents:
            e = tries[agent].get(action)
            cells.append(
                '-' if e is None else f'{e["tries_per_episode"]:.2f} ({100 * e["refused"]:.0f} %)'
            )
        lines.append(f'| {action} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_tables(
    folder: str, results: Mapping[str, Mapping], stem: str = 'success'
) -> tuple[str, str]:
    """Writes `<stem>.json` (everything) and `<stem>.md` (one table per evaluation mode).

    `results`: {mode: {'rows': [achievement, ...], 'rates': {agent: {row: entry}}, 'info':
    {...}, 'episode_stats': {agent: {...}}}} with entries from `rates_from_unlocks`. Both files
    are written atomically. Returns their paths.
    """
    md = [
        '# Closed-loop success rates (real Craftax-Classic episodes)',
        '',
        'Percent of episodes in which each achievement was unlocked, 95 % Wilson interval in '
        'brackets.',
        '',
    ]
    for mode, entry in results.items():
        info = ', '.join(f'{k}={v}' for k, v in entry.get('info', {}).items())
        what = {
            'ladder': 'prompt walks the task ladder, every unlock counts',
            'single': 'one prompted task per episode; success on that task',
        }.get(mode, '')
        md.append(markdown_table(entry['rates'], entry['rows'], title=f'{mode}: {what} ({info})'))
        stats = entry.get('episode_stats') or {}
        if stats:
            md.append(
                '| Agent | mean episode length | mean env return [95 % interval] '
                '| ladder tasks unlocked per episode [95 % interval] '
                '| episodes ended by death (by cause, %) |'
            )
            md.append('|---|---|---|---|---|')
            for agent, st in stats.items():
                md.append(
                    f'| {agent} | {st["mean_length"]:.1f} | {return_cell(st)} '
                    f'| {ladder_cell(st)} | {death_cell(st)} |'
                )
            md.append('')
        if entry.get('tries'):
            md.append(tries_table(entry['tries']))
    json_path = os.path.join(folder, f'{stem}.json')
    md_path = os.path.join(folder, f'{stem}.md')
    _atomic_write(json_path, json.dumps(results, indent=1))
    _atomic_write(md_path, '\n'.join(md))
    return json_path, md_path
