"""The demo report: one Markdown page (and the same as HTML) with what a person wants to see.

Loss curves (plotted from each stage's metrics.jsonl), the latest reconstruction grid, real vs
dreamed videos, and the closed-loop success table, all linked relative to the report so the
workdir can be copied or served as is.
"""

from __future__ import annotations

import glob
import html
import json
import os
import re
from collections.abc import Sequence


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_curves(rows: list[dict], keys: Sequence[str], title: str, path: str) -> str | None:
    """Line plot of the given metrics over steps (log y where all values are positive)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    series = {}
    for key in keys:
        pts = [(r['step'], r[key]) for r in rows if key in r]
        if pts:
            series[key] = sorted(pts)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for key, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, marker='.', markersize=3)
    if all(v > 0 for pts in series.values() for _, v in pts):
        ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _latest(pattern: str) -> str | None:
    found = sorted(glob.glob(pattern))
    return found[-1] if found else None


def latest_of_each_kind(pattern: str) -> list[str]:
    """The newest file of each kind among `pattern`'s matches, by name.

    Evaluation images are named `<kind>_<step>.png` (`reconstructions_000800.png`,
    `patch_error_000800.png`); the step is zero-padded, so the last name of a kind is its newest.
    """
    newest = {}
    for path in sorted(glob.glob(pattern)):
        newest[os.path.basename(path).rsplit('_', 1)[0]] = path
    return [newest[kind] for kind in sorted(newest)]


_HORIZON_KEY = re.compile(r'^eval/(.+)_h(\d+)$')


def evaluation_tables(evaluation: dict) -> list[str]:
    """Markdown lines for one evaluation row: per-horizon metrics as one table, the rest as another.

    Open-loop metrics come per horizon step (`eval/psnr_h01`, `eval/psnr_copy_last_h01`, ...);
    the dynamics targets compare them at each horizon, so they are read side by side: one row per
    metric (sorted by name, so `psnr` sits next to its baselines), one column per horizon. Every
    other `eval/` key goes into a metric | value table.
    """
    per_horizon: dict[str, dict[int, float]] = {}
    scalars = []
    for key, value in evaluation.items():
        match = _HORIZON_KEY.match(key)
        if match:
            per_horizon.setdefault(match.group(1), {})[int(match.group(2))] = value
        elif key.startswith('eval/'):
            scalars.append((key[5:], value))
    lines = []
    if per_horizon:
        horizons = sorted({h for row in per_horizon.values() for h in row})
        lines += ['| per horizon | ' + ' | '.join(f'h{h}' for h in horizons) + ' |']
        lines += ['|---' * (len(horizons) + 1) + '|']
        for name, row in sorted(per_horizon.items()):
            cells = [f'{row[h]:.4g}' if h in row else '' for h in horizons]
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    if scalars:
        lines += ['| metric | value |', '|---|---|']
        lines += [f'| {k} | {v:.4g} |' for k, v in sorted(scalars)]
        lines.append('')
    return lines


def _loss_keys(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r if k.startswith('loss/')})
    return [k for k in keys if not k.startswith('loss_')] or sorted(
        {k for r in rows for k in r if 'loss' in k}
    )


def write_report(workdir: str, stages: Sequence[str], *, title: str = 'dreamer4_jax demo') -> str:
    """Writes workdir/report.md and workdir/report.html; returns the Markdown path."""
    rel = lambda p: os.path.relpath(p, workdir)  # noqa: E731
    md = [f'# {title}', '']
    for stage in stages:
        stage_dir = os.path.join(workdir, stage)
        rows = read_metrics(os.path.join(stage_dir, 'metrics.jsonl'))
        if not rows and not os.path.isdir(stage_dir):
            continue
        md += [f'## {stage}', '']
        train_rows = [r for r in rows if not any(k.startswith('eval/') for k in r)]
        plot = plot_curves(
            train_rows,
            _loss_keys(train_rows),
            f'{stage}: training losses',
            os.path.join(workdir, 'report_files', f'{stage}_losses.png'),
        )
        if plot:
            md += [f'![{stage} losses]({rel(plot)})', '']
        evals = [r for r in rows if any(k.startswith('eval/') for k in r)]
        if evals:
            last = evals[-1]
            md += [f'Evaluation at step {last["step"]}:', ''] + evaluation_tables(last)
        for image in latest_of_each_kind(os.path.join(stage_dir, 'eval', '*.png')):
            md += [f'Latest evaluation image (`{rel(image)}`):', '']
            md += [f'![{stage}]({rel(image)})', '']
        videos = sorted(glob.glob(os.path.join(stage_dir, 'eval', '**', '*.gif'), recursive=True))
        if videos:
            md += [
                'Videos (left: real; then generated: one sample, and the average of several '
                'samples where the run evaluates it):',
                '',
            ]
            md += [f'![video]({rel(v)})' for v in videos[-4:]]
            md.append('')
        table = _latest(os.path.join(stage_dir, '**', '*success*.md'))
        if table:
            with open(table) as f:
                md += [f.read().strip(), '']
    text = '\n'.join(md) + '\n'
    md_path = os.path.join(workdir, 'report.md')
    with open(md_path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(md_path + '.tmp', md_path)
    _write_html(text, os.path.join(workdir, 'report.html'), title)
    return md_path


def _write_html(markdown: str, path: str, title: str) -> None:
    """A minimal Markdown-to-HTML rendering (headings, images, tables, paragraphs)."""
    out = [
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>'
        'body{font-family:sans-serif;max-width:980px;margin:auto}table{border-collapse:'
        'collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}'
        '</style></head><body>'
    ]
    in_table = False
    for line in markdown.splitlines():
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            if all(set(c) <= set('-: ') for c in cells):
                continue
            if not in_table:
                out.append('<table>')
                in_table = True
            out.append('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in cells) + '</tr>')
            continue
        if in_table:
            out.append('</table>')
            in_table = False
        if line.startswith('#'):
            level = len(line) - len(line.lstrip('#'))
            out.append(f'<h{level}>{html.escape(line[level:].strip())}</h{level}>')
        elif line.startswith('!['):
            alt, src = line[2:].split('](', 1)
            out.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        elif line.strip():
            out.append(f'<p>{html.escape(line)}</p>')
    if in_table:
        out.append('</table>')
    out.append('</body></html>')
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(out))
    os.replace(path + '.tmp', path)
