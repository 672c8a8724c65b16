"""Where a compiled step spends its time: a jax.profiler trace folded into op categories.

Run: python -m benchmarks.profile_ops [--quick] [--what=tokenizer,dynamics,generation]

Each XLA:CPU thunk in the trace is one HLO instruction of the step's compiled module; the
instruction's opcode, what a fusion contains, and the JAX name stack in its metadata say what it
is: 'matmul' (dots, and fusions around one), 'conv' (LPIPS AlexNet), 'copy/transpose' (layout
changes), 'reduce', 'elementwise', 'rng', 'other'; and in which part of the program it sits:
'lpips', 'remat' (recomputation of a checkpointed forward), 'backward' (transpose of the JVP),
'forward' (the JVP's primal), or 'update/other' (outside the gradient: AdamW, clipping, EMA, the
loss normalizer; in a generation step, everything). Reports seconds per step per category.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import tempfile

import jax

_INSTR = re.compile(r'^\s*(?:ROOT )?(%?[\w.\-]+) = [^ ]+ (\w[\w\-]*)\(')
_FUSED = re.compile(r'calls=(%?[\w.\-]+)')
_OPNAME = re.compile(r'op_name="([^"]*)"')


def _instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """instruction name -> (opcode, fused opcodes joined, op_name metadata)."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if line.strip().endswith('{') and ('(' in line) and '=' not in line.split('(')[0]:
            current = line.split()[0].lstrip('%')
            if current == 'ENTRY':
                current = line.split()[1].lstrip('%')
            comps[current] = []
        elif current is not None:
            comps[current].append(line)
    out = {}
    for lines in comps.values():
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            name, op = m.group(1).lstrip('%'), m.group(2)
            inner = ''
            f = _FUSED.search(line)
            if f and f.group(1).lstrip('%') in comps:
                inner = ' '.join(
                    mm.group(2) for ln in comps[f.group(1).lstrip('%')] if (mm := _INSTR.match(ln))
                )
            o = _OPNAME.search(line)
            out[name] = (op, inner, o.group(1) if o else '')
    return out


def _kind(op: str, inner: str) -> str:
    ops = set(inner.split()) | {op}
    if 'convolution' in ops:
        return 'conv'
    if 'dot' in ops or (op == 'custom-call' and 'matmul' in inner):
        return 'matmul'
    if op in ('copy', 'transpose') or (
        op == 'fusion'
        and ops
        <= {
            'fusion',
            'parameter',
            'copy',
            'transpose',
            'bitcast',
            'reshape',
            'broadcast',
            'slice',
            'concatenate',
            'pad',
            'tuple',
            'get-tuple-element',
            'dynamic-slice',
            'dynamic-update-slice',
            'constant',
        }
    ):
        return 'copy/transpose'
    if ops & {'rng-bit-generator', 'rng', 'threefry2x32'} or 'threefry' in inner:
        return 'rng'
    if ops & {'reduce', 'reduce-window', 'select-and-scatter'}:
        return 'reduce'
    if op in ('fusion', 'add', 'multiply', 'exponential', 'tanh', 'select', 'convert', 'divide'):
        return 'elementwise'
    return 'other:' + op


def _part(op_name: str) -> str:
    low = op_name.lower()
    if 'lpips' in low or 'alexnet' in low:
        return 'lpips'
    if 'rematted_computation' in low:
        return 'remat'
    if 'transpose(' in low:
        return 'backward'
    if 'jvp(' in low:
        return 'forward'
    # Outside value_and_grad: the optimizer update, clipping, EMA, loss normalizer, sampling.
    return 'update/other'


def _where(op_name: str) -> str:
    """The source of an op: its module path without layer indices, and the primitive."""
    parts = [
        p for p in op_name.split('/') if p and not p.startswith(('jit(', 'jvp(', 'transpose('))
    ]
    parts = [re.sub(r'_\d+', '_i', p) for p in parts if 'block_' not in p or '.' in p]
    return '/'.join(parts[-3:])


def profile(fn, compiled_text: str, calls: int = 5, dump: str = '', top: int = 0) -> dict:
    """Seconds per call of fn() by (part, kind), from a profiler trace of `calls` calls."""
    jax.block_until_ready(fn())
    instr = _instructions(compiled_text)
    shapes = {
        m.group(1).lstrip('%'): m.group(2)
        for line in compiled_text.splitlines()
        if (m := re.match(r'^\s*(?:ROOT )?(%?[\w.\-]+) = (\S+) ', line))
    }
    if dump:
        with open(dump, 'w') as f:
            f.write(compiled_text)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                jax.block_until_ready(fn())
        (path,) = glob.glob(os.path.join(d, '**', '*.xplane.pb'), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    by = collections.Counter()
    where = collections.Counter()
    per_instr = collections.Counter()
    unknown = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                name = ev.name.lstrip('%')
                if name not in instr:
                    unknown[name] += ev.duration_ns
                    continue
                op, inner, op_name = instr[name]
                by[(_part(op_name), _kind(op, inner))] += ev.duration_ns
                where[_where(op_name)] += ev.duration_ns
                per_instr[name] += ev.duration_ns
    total = sum(by.values())
    out = {f'{p}/{k}': v / calls / 1e9 for (p, k), v in by.most_common()}
    out['_total_thunk_seconds'] = total / calls / 1e9
    out['_by_source'] = {k: v / calls / 1e9 for k, v in where.most_common(25)}
    out['_top_instructions'] = [
        f'{v / calls / 1e6:.1f} ms {n} {instr[n][0]} {_where(instr[n][2])} {shapes.get(n, "")}'
        for n, v in per_instr.most_common(top)
    ]
    out['_top_unmatched'] = {k: v / calls / 1e9 for k, v in unknown.most_common(8)}
    return out


def _targets(ps, config):
    def train(make):
        run = make(config)[0]
        return run, run.hlo_text()

    def gen():
        model, params = ps.gen_setup(config)
        return ps.generation_profile_target(model, params, 63)

    return {
        'tokenizer': lambda: train(ps.tokenizer_step),
        'dynamics': lambda: train(ps.dynamics_step),
        'generation': gen,
    }


def main(argv=None):
    from benchmarks import bench_peer_shapes as ps

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--what', default='tokenizer,dynamics,generation')
    parser.add_argument('--set', default='', help='transformer overrides, e.g. remat=none')
    parser.add_argument('--top', type=int, default=0, help='list the N slowest instructions')
    parser.add_argument('--dump', default='', help='write each compiled HLO to DUMP_<what>.txt')
    args = parser.parse_args(argv)
    overrides = {}
    for kv in filter(None, args.set.split(',')):
        k, v = kv.split('=')
        overrides[k] = v
    b, t = (4, 8) if args.quick else (ps.BATCH, ps.FRAMES)
    config = ps.peer_config(b, t, **overrides)
    result = {}
    targets = _targets(ps, config)
    for what in args.what.split(','):
        fn, text = targets[what]()
        result[what] = profile(
            fn, text, dump=f'{args.dump}_{what}.txt' if args.dump else '', top=args.top
        )
    print(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    main()
