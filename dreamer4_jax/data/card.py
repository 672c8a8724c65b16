"""Dataset card: policy mix, counts, per-task coverage and label fraction, as JSON + Markdown.

Coverage of a task = fraction of episodes in which its event occurs at least once (for Craftax:
the achievement is unlocked during the episode). Events per episode = how often it occurs on
average: the coverage again when events are first unlocks (Craftax's default), more when every
occurrence is an event (VPT; Craftax with collect.task_events='every').
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def episode_summary(episode: Mapping[str, Any]) -> dict[str, Any]:
    """Small per-episode record kept while collecting (the frames are not needed for the card)."""
    events = np.asarray(episode['task_event'])
    return {
        'episode_id': int(episode['episode_id']),
        'policy': str(episode.get('policy', 'unknown')),
        'length': int(len(episode['reward'])),
        'return': float(np.sum(episode['reward'])),
        'terminal': bool(np.asarray(episode['is_terminal'])[-1]),
        'labeled_steps': int(np.sum(episode['has_action'])),
        'tasks': np.flatnonzero(events.any(axis=0)).tolist(),
        'event_steps': [(int(t), int(k)) for t, k in zip(*np.nonzero(events), strict=True)],
    }


def _group_stats(summaries: Sequence[Mapping[str, Any]], task_names: Sequence[str]) -> dict:
    n = len(summaries)
    lengths = np.array([s['length'] for s in summaries], np.int64)
    hits, counts = np.zeros(len(task_names)), np.zeros(len(task_names))
    for s in summaries:
        hits[s['tasks']] += 1
        for _, k in s['event_steps']:
            counts[k] += 1
    return {
        'episodes': n,
        'frames': int(lengths.sum()),
        'mean_length': float(lengths.mean()) if n else 0.0,
        'terminal_fraction': float(np.mean([s['terminal'] for s in summaries])) if n else 0.0,
        'mean_return': float(np.mean([s['return'] for s in summaries])) if n else 0.0,
        'coverage': {name: float(h / max(n, 1)) for name, h in zip(task_names, hits, strict=True)},
        'events_per_episode': {
            name: float(c / max(n, 1)) for name, c in zip(task_names, counts, strict=True)
        },
    }


def make_card(
    *,
    name: str,
    source: str,
    summaries: Sequence[Mapping[str, Any]],
    split_of: Mapping[int, str],
    task_names: Sequence[str],
    image_shape: Sequence[int],
    action_space_json: list,
    settings: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds the card dict from per-episode summaries."""
    policies = sorted({s['policy'] for s in summaries})
    frames = sum(s['length'] for s in summaries)
    card = {
        'name': name,
        'source': source,
        'image_shape': list(image_shape),
        'action_space': action_space_json,
        'tasks': list(task_names),
        'alignment': (
            'action[t] is taken after observing image[t]; reward[t] and task_reward[t] come from '
            'the transition into image[t] (the action at t-1); the last frame has no action.'
        ),
        'settings': dict(settings),
        'episodes': len(summaries),
        'frames': frames,
        'action_label_fraction': sum(s['labeled_steps'] for s in summaries) / max(frames, 1),
        'splits': {
            split: _group_stats(
                [s for s in summaries if split_of[s['episode_id']] == split], task_names
            )
            for split in sorted(set(split_of.values()))
        },  # fmt: skip
        'policies': {
            p: _group_stats([s for s in summaries if s['policy'] == p], task_names)
            for p in policies
        },
        'overall': _group_stats(summaries, task_names),
    }
    card.update(extra or {})
    return card


def card_markdown(card: Mapping[str, Any]) -> str:
    """Human-readable Markdown rendering of a card."""
    groups = {'all': card['overall'], **card['policies']}
    lines = [
        f'# Dataset card: {card["name"]}',
        '',
        f'- source: {card["source"]}',
        f'- episodes: {card["episodes"]}, frames: {card["frames"]}',
        f'- image shape: {tuple(card["image_shape"])} uint8',
        f'- action space: {card["action_space"]}',
        f'- action-label fraction (stored): {card["action_label_fraction"]:.4f} '
        '(the last frame of each episode has no action)',
        f'- alignment: {card["alignment"]}',
        f'- settings: `{json.dumps(card["settings"], sort_keys=True)}`',
        '',
        '## Splits',
        '',
        '| split | episodes | frames |',
        '|---|---|---|',
        *(f'| {k} | {v["episodes"]} | {v["frames"]} |' for k, v in card['splits'].items()),
        '',
        '## Policies',
        '',
        '| policy | episodes | frames | mean length | terminal | mean return |',
        '|---|---|---|---|---|---|',
        *(
            f'| {k} | {v["episodes"]} | {v["frames"]} | {v["mean_length"]:.1f} | '
            f'{v["terminal_fraction"]:.2f} | {v["mean_return"]:.2f} |'
            for k, v in groups.items()
        ),
        '',
        '## Task coverage (fraction of episodes with the event; events per episode if more)',
        '',
        '| task | ' + ' | '.join(groups) + ' |',
        '|---|' + '---|' * len(groups),
        *(
            f'| {t} | ' + ' | '.join(_coverage_cell(g, t) for g in groups.values()) + ' |'
            for t in card['tasks']
        ),
        '',
    ]
    return '\n'.join(lines)


def _coverage_cell(group: Mapping[str, Any], task: str) -> str:
    """'0.50', or '0.50 (3.2)' where the task's event repeats within episodes."""
    cov = group['coverage'][task]
    per = group.get('events_per_episode', {}).get(task, cov)  # cards built before the field
    return f'{cov:.2f}' if per <= cov + 1e-9 else f'{cov:.2f} ({per:.1f})'


def write_card(directory: Path, card: Mapping[str, Any]) -> None:
    """Writes dataset_card.json and dataset_card.md into `directory`."""
    directory = Path(directory)
    (directory / 'dataset_card.json').write_text(json.dumps(card, indent=2, sort_keys=True))
    (directory / 'dataset_card.md').write_text(card_markdown(card))
