"""The README's paper-scale table: every phase compiled ahead of time for TPU pods.

  python -m benchmarks.aot_table [--variants=tokenizer,dynamics] [--topologies=v5p:8x8x4]
  make aot-table

Runs `python -m dreamer4_jax.aot` once per (variant of experiments/minecraft_paper.py,
topology), one at a time (each compile holds a few GB of host memory), with the global batch
set to one sequence per chip (PAPER 8). Writes benchmarks/results/aot_table.json (one report
per compile; `{"does_not_fit": "..."}` where it does not fit) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

from dreamer4_jax.aot import parse_topology

EXPERIMENT = 'experiments/minecraft_paper.py'
VARIANTS = ('tokenizer', 'dynamics', 'agent', 'imagination')
# (name in the table, topology): v5p pods by chip count, and one v6e pod.
TOPOLOGIES = (
    ('v5p, 64 chips', 'v5p:4x4x4'),
    ('v5p, 256 chips', 'v5p:8x8x4'),
    ('v5p, 512 chips', 'v5p:8x8x8'),
    ('v6e, 256 chips', 'v6e:16x16'),
)


def compile_one(variant: str, topology: str, out: str, extra: list[str]) -> dict:
    _, chips = parse_topology(topology)
    cmd = [sys.executable, '-m', 'dreamer4_jax.aot', f'--config={EXPERIMENT}:{variant}',
           f'--topology={topology}', f'--out={out}', f'--config.train.batch_size={chips}',
           *extra]  # fmt: skip
    print('$', ' '.join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stdout, flush=True)
    if done.returncode == 2 and done.stdout.startswith('does not fit'):
        return {'variant': variant, 'topology': topology, 'does_not_fit': done.stdout.strip()}
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-4000:]}')
    with open(out) as f:
        return {'variant': variant, **json.load(f)}


def row(name: str, r: dict) -> str:
    if 'does_not_fit' in r:  # 'does not fit: needs 39.6 GiB per chip (...), TPU v6e has 31.2 GiB'
        m = re.search(r'needs ([\d.]+) GiB per chip( \(temporaries alone\))?.* has ([\d.]+)',
                      r['does_not_fit'])  # fmt: skip
        what = ' (temporaries alone)' if m.group(2) else ''
        return f'| {r["variant"]} | {name} | needs {m.group(1)}{what} of {m.group(3)} | no | | | |'
    m = r['memory_gib']
    return (
        f'| {r["variant"]} | {name} | {m["total"]:.1f} of {m["hbm"]:.1f} | '
        f'{"yes" if r["fits"] else "no"} | {r["flops"]:.2e} | {r["step_time_bound_s"]:.2f} | '
        f'{100 * r["mfu_bound"]:.0f} % |'
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--variants', default=','.join(VARIANTS))
    p.add_argument('--topologies', default=','.join(t for _, t in TOPOLOGIES))
    p.add_argument('--out', default='benchmarks/results/aot_table.json')
    args, extra = p.parse_known_args(argv)
    names = {t: n for n, t in TOPOLOGIES}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    reports = []
    for variant in args.variants.split(','):
        for topology in args.topologies.split(','):
            one = f'{args.out}.{variant}.{topology.replace(":", "_")}.tmp'
            reports.append(compile_one(variant, topology, one, extra))
            if os.path.exists(one):
                os.remove(one)
            with open(args.out, 'w') as f:
                json.dump(reports, f, indent=1)
    print('| phase | pod | GiB per chip | fits | FLOPs per step | step time >= (s) | MFU <= |')
    print('|---|---|---|---|---|---|---|')
    for r in reports:
        print(row(names.get(r['topology'], r['topology']), r))
    return 0


if __name__ == '__main__':
    sys.exit(main())
