"""Matmul and convolution FLOPs of a traced program, loops counted by their trip counts.

XLA's `compiled.cost_analysis()` counts the body of a scan (or while loop) once, and sees no
FLOPs inside Pallas kernels. This walks the jaxpr instead:
  dot_general           2 x output elements x contracted size
  conv_general_dilated  2 x output elements x (kernel elements / output features)
  scan                  `length` x its body
  while                 its body once (trip count unknown; such loops are counted in `loops`)
  cond / switch         the most expensive branch
  pallas_call           grid size x the kernel body (block-sparse kernels such as splash
                        attention are counted as if no block were skipped)
  shard_map             the per-shard body x the number of devices of its mesh
  anything else         the jaxprs in its parameters (jit, remat, custom_vjp, ...), once.
Elementwise work (norms, softmax, activations) is not counted: these are matmul FLOPs, the
figure MFU is measured against. Shapes are global outside shard_map, so the result is the
FLOPs of the whole step over all devices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from jax.extend import core as jcore


@dataclasses.dataclass
class FlopCount:
    flops: float = 0.0
    loops: int = 0  # while loops whose trip count is unknown (each counted once)


def _dot(eqn) -> float:
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[i] for i in lhs_contract)


def _conv(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
    return 2.0 * math.prod(out) * math.prod(rhs) / out_features


def _walk(jaxpr: Any, count: FlopCount) -> float:
    jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)  # ClosedJaxpr -> Jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        p = eqn.params
        if name == 'dot_general':
            total += _dot(eqn)
        elif name == 'conv_general_dilated':
            total += _conv(eqn)
        elif name == 'scan':
            total += p['length'] * _walk(p['jaxpr'], count)
        elif name == 'while':
            count.loops += 1
            total += _walk(p['body_jaxpr'], count) + _walk(p['cond_jaxpr'], count)
        elif name == 'cond':
            total += max(_walk(b, count) for b in p['branches'])
        elif name == 'pallas_call':
            total += math.prod(p['grid_mapping'].grid) * _walk(p['jaxpr'], count)
        elif name == 'shard_map':
            total += p['mesh'].size * _walk(p['jaxpr'], count)
        else:
            total += sum(_walk(sub, count) for sub in jcore.jaxprs_in_params(p))
    return total


def count_flops(jaxpr: Any) -> FlopCount:
    """Matmul + convolution FLOPs of a (Closed)Jaxpr, e.g. `jax.jit(f).trace(...).jaxpr`."""
    count = FlopCount()
    count.flops = _walk(jaxpr, count)
    return count


def function_flops(fn, *args, **kwargs) -> FlopCount:
    """count_flops of `fn` traced with these (possibly abstract) arguments."""
    return count_flops(jax.make_jaxpr(fn)(*args, **kwargs))
