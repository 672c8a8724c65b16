"""How hard each phase-2 loss term pulls the shared world-model weights (README, phase 2).

  python -m benchmarks.agent_gradients --dynamics_workdir=runs/demo/dynamics \
      [--agent_workdir=runs/demo/agent] [--experiment=experiments/craftax_tiny.py] \
      [--mtp_length=8] [--bc_rows=relevant] [--batches=6]

Phase 2 (PAPER 9.2) sums shortcut forcing, behavior cloning and reward prediction, each divided by
a running RMS of its own value (PAPER 6.6), so every term enters the total at about 1. That makes
the terms' values equal, not their gradients. This reports, on training batches of the
experiment's agent phase, the norm of each term's gradient on the dynamics transformer's weights
(the weights the terms share; the heads are left out) with the term divided by its own value, as
the normalization does in steady state. Behavior cloning is split into offset 0 (the action the
agent takes, the only offset imagination and play read) and the further offsets of multi-token
prediction, both divided by the whole BC term as the loss does.

Two parameter sets are measured: the phase's start (the dynamics run's weights, new agent tokens
and heads) and, with `--agent_workdir`, a finished agent run's weights (its EMA). Why: with the
paper's settings the demo's policy learned only the action marginal (held-out BC accuracy = the
majority baseline); the numbers say how small BC's share of the shared gradient is.

Prints one line per parameter set and term, then one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
import optax

from dreamer4_jax import config_checks, pretrained
from dreamer4_jax.train import agent_phase

# Term -> the term whose value normalizes it (BC's offsets share the whole BC term's RMS).
NORMALIZED_BY = {
    'bc_offset0': 'bc',
    'bc_later_offsets': 'bc',
    'reward': 'reward',
    'dynamics': 'dynamics',
}


def normalized_gradient_norms(
    terms_fn: Callable[[dict], Mapping[str, jax.Array]],
    params: dict,
    subtree: str,
    normalized_by: Mapping[str, str] = NORMALIZED_BY,
) -> tuple[dict[str, float], dict[str, float]]:
    """({term: ||d(term / sg(value of its normalizer)) / d params[subtree]||}, {term: value}).

    `terms_fn(params)` returns scalar terms that include every key and normalizer named in
    `normalized_by`. A normalizer of value 0 (a term switched off) gives a gradient norm of 0.
    """
    values = {k: float(v) for k, v in terms_fn(params).items()}
    norms = {}
    for term, by in normalized_by.items():
        scale = 1.0 / values[by] if values[by] > 0 else 0.0

        def scaled(p, term=term, scale=scale):
            return terms_fn(p)[term] * scale

        grads = jax.grad(scaled)(params)
        norms[term] = float(optax.tree.norm(grads[subtree]))
    return norms, values


def agent_terms_fn(step: agent_phase.AgentStep, consts: dict, batch: dict, rng: jax.Array):
    """params -> the phase-2 terms of `batch` (as the train step computes them), BC split."""
    terms_of = agent_phase.step_terms(step, batch, rng, consts, use_dynamics=True)

    def terms(params):
        out, logs = terms_of(params)
        offset0 = logs['agent/bc_nll_offset0']
        return {**out, 'bc_offset0': offset0, 'bc_later_offsets': out['bc'] - offset0}

    return terms


def measure(phase, params: dict, batches: list[dict]) -> dict[str, dict[str, float]]:
    """Mean over batches of the gradient norms and the term values."""
    step, consts = phase.train_step.args[0], phase.constants()
    norms, values = [], []
    for i, batch in enumerate(batches):
        n, v = normalized_gradient_norms(
            agent_terms_fn(step, consts, batch, jax.random.key(i)), params, 'dynamics'
        )
        norms.append(n)
        values.append(v)
    return {
        'grad_norm': {k: float(np.mean([n[k] for n in norms])) for k in NORMALIZED_BY},
        'value': {k: float(np.mean([v[k] for v in values])) for k in NORMALIZED_BY},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--dynamics_workdir', required=True)
    parser.add_argument('--agent_workdir', default='')
    parser.add_argument('--experiment', default='experiments/craftax_tiny.py')
    parser.add_argument('--mtp_length', type=int, default=8, help="PAPER 9.2's L")
    parser.add_argument('--bc_rows', default='relevant', choices=agent_phase.ROW_CHOICES)
    parser.add_argument('--batches', type=int, default=6)
    args = parser.parse_args(argv)
    if args.batches < 1 or args.mtp_length < 0:
        parser.error('--batches must be >= 1 and --mtp_length >= 0')

    config = config_checks.load_config(f'{args.experiment}:agent')
    with config.unlocked():
        config.agent.dynamics_workdir = args.dynamics_workdir
        config.agent.mtp_length = args.mtp_length
        config.agent.bc_rows = args.bc_rows
    phase = agent_phase.make_phase(config)
    start = phase.warm_start(nn.unbox(phase.init(jax.random.key(0))))
    param_sets = {'start': start.params}
    if args.agent_workdir:
        param_sets['finished'] = pretrained.load(args.agent_workdir, expect='agent').params()
    batches = list(itertools.islice(iter(phase.make_data(0, 1)), args.batches))
    result = {'mtp_length': args.mtp_length, 'bc_rows': args.bc_rows, 'batches': args.batches}
    for name, params in param_sets.items():
        r = measure(phase, params, batches)
        result[name] = r
        for term in NORMALIZED_BY:
            print(
                f'{name:8s} {term:16s} gradient norm {r["grad_norm"][term]:.4f} '
                f'(term value {r["value"][term]:.3f})',
                flush=True,
            )
    print(json.dumps(result), flush=True)
    return result


if __name__ == '__main__':
    main()
