"""Table 7 on Craftax: success rates of random, BC, WM+BC and Dreamer 4 (PAPER 12.1).

The demo's pipeline (dreamer4_jax/demo.py: tokenizer -> dynamics -> agent and bc -> imagination,
the same stage configs and links) trained in DIR/<stage>, then every agent plays many real
Craftax-Classic episodes with the prompt walking the task ladder (eval/closed_loop.py); rates
per achievement with 95 % Wilson intervals and the mean return. Writes DIR/table7.md and
DIR/table7.png; the raw results are DIR/table7/success.json.
"""

from __future__ import annotations

import os

from dreamer4_jax import demo
from dreamer4_jax.eval.success_table import death_cell, ladder_cell, return_cell
from dreamer4_jax.figures import arms as arms_lib
from dreamer4_jax.figures import output
from dreamer4_jax.figures.experiment import Experiment, ensure_data

AGENTS = (('random', 'random'), ('BC', 'bc'), ('WM+BC', 'agent'), ('Dreamer 4', 'imagination'))
# PAPER 12.1 [P] (Minecraft items, 1000 episodes): BC, WM+BC, Dreamer 4 success rates in %.
PAPER = (
    ('Log', 97.3, 99.6, 99.1),
    ('Planks', 95.7, 99.6, 98.9),
    ('Crafting table', 93.5, 99.1, 98.5),
    ('Stick', 95.0, 98.9, 98.7),
    ('Wooden pickaxe', 86.5, 97.3, 96.6),
    ('Cobblestone', 83.9, 97.2, 95.9),
    ('Stone pickaxe', 53.8, 89.4, 90.1),
    ('Iron ore', 26.5, 62.9, 66.7),
    ('Furnace', 16.2, 51.1, 58.1),
    ('Iron ingot', 4.3, 27.8, 39.5),
    ('Iron pickaxe', 0.6, 16.9, 29.0),
    ('Diamond', 0.0, 0.0, 0.7),
)


def pipeline_arms(exp: Experiment, workdir: str) -> list[arms_lib.Arm]:
    """The demo's training stages as arms, with the demo's links between them."""
    arms = []
    for stage in demo.TRAIN_STAGES:
        links = {}
        if stage in demo.LINKS:
            section, field, previous = demo.LINKS[stage]
            links[f'{section}.{field}'] = os.path.join(workdir, previous)
        spec = demo.stage_spec(stage, exp.path)
        arms.append(arms_lib.Arm(stage, spec, os.path.join(workdir, stage), links))
    return arms


def run(exp: Experiment, workdir: str, log=print, episodes: int | None = None) -> tuple[str, str]:
    from dreamer4_jax.eval.closed_loop import evaluate_agents  # deferred: loads Craftax

    arms = pipeline_arms(exp, workdir)
    ensure_data(arms[0], log)
    arms_lib.run_arms(arms, 'table7', log=log)
    cfg = arms[-1].config().closed_loop
    cfg.episodes = int(episodes or exp.sizes.episodes)
    cfg.max_steps = int(exp.sizes.max_steps)
    cfg.modes = 'ladder'  # PAPER 11: the prompt walks the task ladder
    out = os.path.join(workdir, 'table7')
    results = output.read_json(os.path.join(out, 'success.json'))
    info = (results or {}).get('ladder', {}).get('info', {})
    if info != {'episodes': cfg.episodes, 'max_steps': cfg.max_steps}:
        log(f'[table7] {cfg.episodes} real episodes per agent ({cfg.max_steps} steps at most)')
        agents = {
            name: stage if stage == 'random' else os.path.join(workdir, stage)
            for name, stage in AGENTS
        }
        results = evaluate_agents(agents, out, cfg, log=log)
    ladder = results['ladder']
    md = output.write_atomic(os.path.join(workdir, 'table7.md'), markdown(ladder, exp))
    png = output.save_png(plot(ladder), os.path.join(workdir, 'table7.png'))
    return md, png


def _cell(entry: dict) -> str:
    return f'{100 * entry["rate"]:.1f} [{100 * entry["ci_low"]:.0f}, {100 * entry["ci_high"]:.0f}]'


def markdown(ladder: dict, exp: Experiment) -> str:
    agents = list(ladder['rates'])
    rows = [[name, *(_cell(ladder['rates'][a][name]) for a in agents)] for name in ladder['rows']]
    stats = ladder['episode_stats']
    rows.append(['**mean return** [95 % interval]', *(return_cell(stats[a]) for a in agents)])
    rows.append(
        [
            'ladder tasks unlocked per episode [95 % interval]',
            *(ladder_cell(stats[a]) for a in agents),
        ]
    )
    rows.append(['mean episode length', *(f'{stats[a]["mean_length"]:.1f}' for a in agents)])
    rows.append(['episodes ended by death (by cause, %)', *(death_cell(stats[a]) for a in agents)])
    paper = [[item, f'{bc:g}', f'{wm:g}', f'{d4:g}'] for item, bc, wm, d4 in PAPER]
    info = ladder['info']
    return (
        '# Table 7 on Craftax-Classic: success rates (PAPER 12.1)\n\n'
        f'Experiment `{exp.shown}` (the demo pipeline). {info["episodes"]} real '
        f'episodes per agent of at most {info["max_steps"]} steps; the prompt walks the task '
        'ladder; percent of episodes in which each achievement was unlocked, 95 % Wilson '
        'interval in brackets.\n\n'
        + output.markdown_table(['Achievement', *agents], rows)
        + '\nThe paper (Minecraft items, 1000 episodes of 60 min each; other tasks, so only '
        'the order of the columns compares) [P]:\n\n'
        + output.markdown_table(['Item', 'BC', 'WM+BC', 'Dreamer 4'], paper)
    )


def plot(ladder: dict):
    import numpy as np

    agents = list(ladder['rates'])
    # Achievements that any agent unlocked at least once, in the table's order.
    names = [n for n in ladder['rows'] if any(ladder['rates'][a][n]['rate'] > 0 for a in agents)]
    names = names or ladder['rows'][:5]
    fig, (ax,) = output.new_figure(1, width=max(6.0, 0.9 * len(names) + 3), height=4.0)
    width = 0.8 / len(agents)
    for i, a in enumerate(agents):
        e = [ladder['rates'][a][n] for n in names]
        rate = np.array([100 * x['rate'] for x in e])
        low = rate - np.array([100 * x['ci_low'] for x in e])
        high = np.array([100 * x['ci_high'] for x in e]) - rate
        err = np.stack([low, high])
        ax.bar(np.arange(len(names)) + i * width, rate, width, yerr=err, capsize=2, label=a)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha='right')
    ax.set(ylabel='success rate (%) with 95 % interval', title='Craftax success rates')
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
