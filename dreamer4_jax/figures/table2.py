"""Table 2: the design cascade from diffusion forcing to the full model (PAPER 12.3).

Every arm of the experiment's `table2_sweep()` trains a dynamics model on the one shared
tokenizer run; each is then measured on the same held-out windows: a Frechet video metric (the
offline stand-in of dreamer4_jax/eval/fvd.py), PSNR / SSIM over the generated horizon, and
frames per second generating one video. Writes DIR/table2.md and DIR/table2.png.
"""

from __future__ import annotations

import os

from dreamer4_jax.eval import fvd
from dreamer4_jax.figures import arms as arms_lib
from dreamer4_jax.figures import output
from dreamer4_jax.figures.evaluation import evaluate_arm
from dreamer4_jax.figures.experiment import Experiment, dynamics_sweep
from dreamer4_jax.figures.sweeps import TABLE2_ROWS

# PAPER 12.3 [P]: (train step s, inference FPS on one H100, FVD) per row.
PAPER = {
    'diffusion_forcing': (9.8, 0.8, 306),
    'fewer_steps': (9.8, 9.1, 875),
    'shortcut': (9.8, 9.1, 329),
    'x_prediction': (9.8, 9.1, 326),
    'x_loss': (9.8, 9.1, 151),
    'ramp': (9.8, 9.1, 102),
    'alternating_lengths': (1.5, 9.1, 80),
    'long_context_every_4': (0.6, 18.9, 70),
    'gqa': (0.5, 23.2, 71),
    'time_factorized': (0.4, 30.1, 91),
    'registers': (0.5, 28.9, 91),
}
PAPER_ONLY = (
    ('+ More spatial tokens (N_z=128)', 0.8, 25.7, 66),
    ('+ More spatial tokens (N_z=256)', 1.7, 21.4, 57),
)


def run(exp: Experiment, workdir: str, log=print) -> tuple[str, str]:
    """Trains every unfinished arm, evaluates, writes the table and the plot; returns paths."""
    tok, arms = dynamics_sweep(exp, workdir, 'table2', log)
    arms_lib.run_arms([tok, *arms], 'table2', log=log)
    results = {
        a.name: evaluate_arm(a.workdir, exp.sizes, frechet=True, fps=True, log=log) for a in arms
    }
    md = output.write_atomic(os.path.join(workdir, 'table2.md'), markdown(results, arms, exp))
    png = output.save_png(plot(results), os.path.join(workdir, 'table2.png'))
    return md, png


def markdown(results: dict, arms, exp: Experiment) -> str:
    s = exp.sizes
    header = [
        'Row', f'{fvd.STANDIN_NAME} ↓ ¹', 'PSNR ↑', 'SSIM ↑', 'FPS ²',
        'paper FVD ↓', 'paper FPS', 'paper train step (s)',
    ]  # fmt: skip
    rows = []
    for arm in arms:
        r = results[arm.name]
        paper = PAPER.get(arm.name)
        rows.append([
            TABLE2_ROWS.get(arm.name, arm.name), output.fmt(r['frechet'], 1), output.fmt(r['psnr']),
            output.fmt(r['ssim'], 3), output.fmt(r['fps'], 1),
            *(('-',) * 3 if paper is None else (paper[2], paper[1], paper[0])),
        ])  # fmt: skip
    for label, step_s, fps, fid in PAPER_ONLY:
        rows.append([f'{label} (not run ³)', '-', '-', '-', '-', fid, fps, step_s])
    # Baselines without a dynamics model, on the same windows (equal for every arm): what a
    # world that stands still scores, in pixels and through the shared tokenizer.
    first = results[arms[0].name] if arms else {}
    for label, key in (
        ('copy the last context frame ⁴', 'psnr_copy_last'),
        ('repeat the last context latent ⁴', 'psnr_copy_latent'),
    ):
        if first.get(key) is not None:
            rows.append([label, '-', output.fmt(first[key]), '-', '-', '-', '-', '-'])
    # Each arm's own settings (the sweep is cumulative), with the experiment path as shown.
    sweep, before, lines = exp.sweep('table2'), [], []
    for a in arms:
        now = sweep.get(a.name, [])
        added = now[len(before) :] if now[: len(before)] == before else now
        lines.append(f'- `{a.name}`: ' + ', '.join(f'`{x}`' for x in added))
        before = now
    settings = '\n'.join(lines)
    return (
        '# Table 2: design cascade (PAPER 12.3)\n\n'
        f'Experiment `{exp.shown}`; each row adds one change to the row above. '
        f'Ours: {s.videos} held-out windows, {s.context} real context frames, {s.horizon} '
        'generated frames with the real actions; PSNR / SSIM averaged over the generated '
        'frames. Paper: Minecraft, 48 h per model on H100s, FVD of 1024 videos x 384 frames '
        'without context [P].\n\n'
        + output.markdown_table(header, rows)
        + f'\n¹ {fvd.STANDIN_NOTE}\n'
        f'\n² Frames per second of the dynamics model generating one video (batch 1; '
        f'{s.fps_frames} frames after {s.context} context frames, one compiled call per frame: '
        'K denoising passes and the commit) on this machine; decoding to pixels is not timed '
        '(every arm shares the tokenizer). The paper times the whole model on one H100.\n'
        '\n³ More spatial tokens change the tokenizer; every arm here shares one tokenizer run.\n'
        '\n⁴ No dynamics model: the last context frame (or its latent, decoded) repeated over '
        'the generated frames. A row that does not beat them has learned no motion.\n'
        f'\nArms: `--config={exp.shown}:dynamics,<settings>` with the settings of every row '
        'up to and including its own; each row adds:\n\n' + settings + '\n'
    )


def plot(results: dict):
    names = list(results)
    labels = [TABLE2_ROWS.get(n, n) for n in names]
    fig, (ax_f, ax_p, ax_s) = output.new_figure(3, width=5.5, height=4.5)
    x = range(len(names))
    ax_f.bar(x, [results[n]['frechet'] for n in names], color='tab:blue', label='ours (stand-in)')
    ax_f.set_ylabel('Frechet stand-in (ours) ↓')
    twin = ax_f.twinx()
    twin.plot(
        x, [PAPER[n][2] if n in PAPER else float('nan') for n in names], 'o-', color='tab:red'
    )
    twin.set_ylabel('paper FVD ↓', color='tab:red')
    ax_f.set_title('Frechet video metric')
    ax_p.plot(x, [results[n]['psnr'] for n in names], 'o-', label='PSNR')
    ax_p.set_ylabel('PSNR over the horizon (dB) ↑')
    ax_p.set_title('Open-loop PSNR')
    ax_s.bar(x, [results[n]['fps'] for n in names], color='tab:green')
    ax_s.set_ylabel('FPS, batch 1 (ours)')
    twin_s = ax_s.twinx()
    twin_s.plot(
        x, [PAPER[n][1] if n in PAPER else float('nan') for n in names], 'o-', color='tab:red'
    )
    twin_s.set_ylabel('paper FPS (H100)', color='tab:red')
    ax_s.set_title('Generation speed')
    for ax in (ax_f, ax_p, ax_s):
        ax.set_xticks(list(x), labels, rotation=70, ha='right', fontsize=8)
    fig.tight_layout()
    return fig
