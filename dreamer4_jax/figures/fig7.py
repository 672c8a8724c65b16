"""Fig. 7: action conditioning with few action labels (PAPER 12.5).

Every arm of the experiment's `fig7_sweep()` trains a dynamics model on all the video, with the
actions of only the first share of the train episodes (the paper: the first hours). Each is then
asked for action-conditioned open-loop predictions on held-out windows (all labeled); PSNR and
SSIM per horizon step, and relative to the no-label (0 %) and all-label (100 %) arms as the paper
reports them. Writes DIR/fig7.md and DIR/fig7.png.
"""

from __future__ import annotations

import os

from dreamer4_jax.figures import arms as arms_lib
from dreamer4_jax.figures import output
from dreamer4_jax.figures.evaluation import evaluate_arm
from dreamer4_jax.figures.experiment import Experiment, dynamics_sweep

# PAPER 12.5: share of the 2541 h with actions -> (hours, PSNR %, SSIM %, tag), relative to the
# no-action and all-action models.
PAPER = (
    (10 / 2541, '10 h', 53, 75, '[P]'),
    (100 / 2541, '100 h', 85, 100, '[P]'),
    (1000 / 2541, '1000 h', 100, 100, '[P~] read off the figure'),
)


def label_fraction(arm: arms_lib.Arm) -> float:
    config = arm.config()
    if int(config.data.label_first_episodes) >= 0:
        raise ValueError(f'{arm.name}: fig7 arms set data.label_fraction, not label_first_episodes')
    return float(config.data.label_fraction)


def relative(value: float, none: float, full: float) -> float | None:
    """Percent of the way from the no-label arm to the all-label arm (PAPER 12.5)."""
    gap = full - none
    return None if abs(gap) < 1e-9 else 100.0 * (value - none) / gap


def paper_beside(fraction: float) -> str:
    """The paper's relative scores at (about) the same share of labeled video, if it has one."""
    for share, hours, psnr, ssim, tag in PAPER:
        if abs(fraction - share) <= 0.35 * share:
            return f'{hours}: {psnr} % / {ssim} % {tag}'
    return '-'


def run(exp: Experiment, workdir: str, log=print) -> tuple[str, str]:
    tok, arms = dynamics_sweep(exp, workdir, 'fig7', log)
    fractions = {a.name: label_fraction(a) for a in arms}
    if 0.0 not in fractions.values() or 1.0 not in fractions.values():
        raise ValueError('fig7_sweep() needs an arm with label_fraction 0 and one with 1')
    arms_lib.run_arms([tok, *arms], 'fig7', log=log)
    results = {
        a.name: evaluate_arm(a.workdir, exp.sizes, frechet=False, fps=False, log=log) for a in arms
    }
    md = output.write_atomic(os.path.join(workdir, 'fig7.md'), markdown(results, fractions, exp))
    png = output.save_png(plot(results, fractions), os.path.join(workdir, 'fig7.png'))
    return md, png


def markdown(results: dict, fractions: dict, exp: Experiment) -> str:
    s = exp.sizes
    none = next(n for n, f in fractions.items() if f == 0.0)
    full = next(n for n, f in fractions.items() if f == 1.0)
    rows = []
    for name, f in fractions.items():
        r = results[name]
        rp = relative(r['psnr'], results[none]['psnr'], results[full]['psnr'])
        rs = relative(r['ssim'], results[none]['ssim'], results[full]['ssim'])
        rows.append([
            name, f'{100 * f:g} %', output.fmt(r['psnr']), output.fmt(r['ssim'], 3),
            output.fmt(rp, 0), output.fmt(rs, 0), paper_beside(f),
        ])  # fmt: skip
    steps = [f'h{h + 1}' for h in range(s.horizon)]
    per_step = [
        [name, 'PSNR', *(output.fmt(v) for v in results[name]['psnr_h'])] for name in fractions
    ] + [[name, 'SSIM', *(output.fmt(v, 3) for v in results[name]['ssim_h'])] for name in fractions]
    header = ['Arm', 'labeled train episodes', 'PSNR', 'SSIM', 'PSNR rel. %', 'SSIM rel. %',
              'paper (PSNR / SSIM rel.)']  # fmt: skip
    return (
        '# Fig. 7: action conditioning with limited labels (PAPER 12.5)\n\n'
        f'Experiment `{exp.shown}`. Each arm sees all training video; only the '
        'first share of the train episodes keeps its actions. Open-loop predictions of '
        f'{s.horizon} frames after {s.context} real frames, with the real actions, on '
        f'{s.videos} held-out windows. "rel. %": (arm - 0 % arm) / (100 % arm - 0 % arm), as '
        'the paper reports it (its 320 context frames, 16 generated frames).\n\n'
        + output.markdown_table(header, rows)
        + '\nPer generated frame:\n\n'
        + output.markdown_table(['Arm', 'metric', *steps], per_step)
    )


def plot(results: dict, fractions: dict):
    fig, (ax_p, ax_s) = output.new_figure(2)
    for name, f in fractions.items():
        steps = range(1, len(results[name]['psnr_h']) + 1)
        ax_p.plot(steps, results[name]['psnr_h'], 'o-', label=f'{100 * f:g} % labeled')
        ax_s.plot(steps, results[name]['ssim_h'], 'o-', label=f'{100 * f:g} % labeled')
    ax_p.set(xlabel='generated frame', ylabel='PSNR (dB)', title='Action-conditioned PSNR')
    ax_s.set(xlabel='generated frame', ylabel='SSIM', title='Action-conditioned SSIM')
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    return fig
