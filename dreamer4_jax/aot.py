"""Ahead-of-time compilation of a phase's train step for a TPU topology, on any host (no TPU).

  python -m dreamer4_jax.aot --config=experiments/minecraft_paper.py:dynamics \
      --topology=v5p:8x8x4 [--num_slices=1] [--out=aot.json] [--config.train.batch_size=...]

Needs the `tpu` extra (`pip install -e '.[tpu]'`: jax[tpu] brings the libtpu that matches
jax); `jax.experimental.topologies` then gives compile-only devices of the topology, and the
step compiles for them without hardware. What is compiled is the loop's own step
(`loop.jit_train_step`: same function, shardings and donation) on the mesh the run would build,
with abstract state, batch (`pipeline.batch_spec`) and constants; earlier phases' weights
(the frozen tokenizer, the phase-2 model, ...) are abstract too (`pretrained.abstract`), built
from the variants of the same experiment file named after their phases: the dynamics variant's
tokenizer is the `tokenizer` variant, the agent's dynamics model the `dynamics` variant, ...

Printed and written as JSON: parameters (trained, and frozen constants), per-chip memory
(arguments, outputs, temporaries, total) against the chip's HBM, FLOPs per step, and the step
time and MFU that follow at the chip's peak:
  flops            matmul + conv FLOPs of the step over all chips, from the jaxpr with loops
                   counted by their trip counts (dreamer4_jax.jaxpr_flops), remat recompute and
                   teacher passes included: what the chips execute.
  model_flops      the same with remat off (each op once): the work the method needs.
  step_time_bound  flops / (chips x peak bf16 FLOP/s): no step can be faster.
  mfu_bound        model_flops / flops: the MFU of a step that ran at that bound.
  xla_flops        XLA's cost analysis (per chip x chips), for reference: it counts a scan
                   body once and nothing inside Pallas kernels.
A program that does not fit prints one line with the memory needed and available; exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from dreamer4_jax import config_checks, parallel, pretrained
from dreamer4_jax.data.pipeline import batch_spec
from dreamer4_jax.jaxpr_flops import count_flops
from dreamer4_jax.train import data_sources, loop, phases

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures of a TPU generation.

    hbm_bytes: the HBM the TPU compiler (libtpu 0.0.42) reports as available to a program,
    slightly below the nominal 32 / 16 / 95 / 32 GB. peak_bf16_flops: Cloud TPU documentation.
    """

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    chip_config: str | None = None  # get_topology_desc's chip_config_name, where needed


CHIPS = {
    'v4': Chip('TPU v4', int(30.75 * GiB), 275e12, 'megacore'),
    'v5e': Chip('TPU v5e', int(15.75 * GiB), 197e12),
    'v5p': Chip('TPU v5p', int(95.74 * GiB), 459e12),
    'v6e': Chip('TPU v6e', int(31.25 * GiB), 918e12),
}

# Earlier runs of an AOT compile are named 'aot:<variant>': the variant of the same experiment file.
AOT_RUN = 'aot:'


class DoesNotFit(RuntimeError):
    """The program needs more memory per chip than the chip has."""


def parse_topology(topology: str) -> tuple[Chip, int]:
    """'v5p:8x8x4' -> (chip, number of chips)."""
    m = re.fullmatch(r'(v\d+[a-z]*):(\d+(?:x\d+)*)', topology)
    if not m or m.group(1) not in CHIPS:
        raise ValueError(
            f'--topology={topology!r}: expected GENERATION:AxBxC with GENERATION in '
            f'{sorted(CHIPS)}, e.g. v5p:8x8x4 or v6e:16x16'
        )
    return CHIPS[m.group(1)], math.prod(int(d) for d in m.group(2).split('x'))


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """Compile-only TPU devices of `num_slices` slices of this topology (needs libtpu)."""
    # Compile-only use never runs on a TPU, so several processes may load libtpu at once
    # (otherwise the second one fails on libtpu's lockfile).
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    chip, _ = parse_topology(topology)
    kwargs = {'chip_config_name': chip.chip_config} if chip.chip_config else {}
    if num_slices > 1:
        kwargs['num_slices'] = num_slices
    return list(topologies.get_topology_desc(topology, 'tpu', **kwargs).devices)


def _size(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract(tree: Any, shardings: Any = None) -> Any:
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _without_remat(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every transformer's remat set to 'none' (for model FLOPs)."""
    config = ml_collections.ConfigDict(config.to_dict())

    def visit(node):
        for key in node.keys():
            if isinstance(node[key], ml_collections.ConfigDict):
                visit(node[key])
            elif key == 'remat':
                node[key] = 'none'

    visit(config)
    return config


def _linked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose earlier-run workdir (if its phase has one) names that phase's variant."""
    config = copy.deepcopy(config)
    if str(config.phase) in pretrained.EARLIER:
        field, earlier = pretrained.EARLIER[str(config.phase)]
        section, name = field.split('.')
        config[section][name] = AOT_RUN + earlier
    return config


def make_phase(
    config: ml_collections.ConfigDict,
    experiment: str | None = None,
    edit: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict] = lambda c: c,
):
    """The phase of `config`; earlier runs are abstract (pretrained.abstract), each built from
    the variant of the experiment file `experiment` named after its phase (tokenizer,
    dynamics, agent): nothing is read from a checkpoint. `edit` applies to every config."""
    if str(config.phase) not in pretrained.EARLIER:
        return phases.make_phase(edit(config))
    if not experiment:
        raise config_checks.ConfigError(
            f'ahead-of-time compilation of phase {config.phase!r} builds its earlier runs from '
            'the same experiment file: pass --config=FILE:VARIANT'
        )
    module = importlib.import_module(phases.PHASES[str(config.phase)])
    return module.make_phase(edit(_linked(config)), load=_abstract_loader(experiment, edit))


def _abstract_loader(experiment: str, edit) -> Callable[..., pretrained.Pretrained]:
    """load(workdir, expect=...) of abstract earlier runs: the experiment's variants."""
    path = experiment.partition(':')[0]

    def config_of(workdir: str) -> ml_collections.ConfigDict:
        if not workdir.startswith(AOT_RUN):
            raise ValueError(f'ahead-of-time compilation reads no checkpoint ({workdir!r})')
        return edit(_linked(config_checks.load_config(f'{path}:{workdir[len(AOT_RUN) :]}')))

    def load(workdir: str, **_) -> pretrained.Pretrained:
        return pretrained.abstract(config_of(workdir), config_of, workdir)

    return load


def _latent_shape(config, experiment, edit) -> tuple[int, int] | None:
    """(N, C) of the batches' cached latents (config.data.latents='cache'), else None."""
    if not data_sources.uses_latent_cache(config) or str(config.phase) not in pretrained.EARLIER:
        return None
    run = pretrained.load_earlier(edit(_linked(config)), load=_abstract_loader(experiment, edit))
    tok = run.tokenizer_config()
    return (tok.num_latents, tok.latent_dim)


def _does_not_fit(message: str, chip: Chip) -> DoesNotFit | None:
    """The compiler's out-of-HBM error as one line (None for any other error)."""
    num = r'([\d.]+)([KMGT]?)'
    m = re.search(rf'\({num}\) exceeds available HBM \({num}\)', message) or re.search(
        rf'Used {num} of {num} hbm', message
    )
    if m is None:
        return None
    unit = {'K': 2**-20, 'M': 2**-10, 'G': 1.0, 'T': 2**10, '': 2**-30}
    need = float(m.group(1)) * unit[m.group(2)]
    have = float(m.group(3)) * unit[m.group(4)]
    what = ' (temporaries alone)' if 'temporaries' in message else ''
    return DoesNotFit(
        f'does not fit: needs {need:.1f} GiB per chip{what}, {chip.name} has {have:.1f} GiB'
    )


def _trace(config, mesh, rules, rng, experiment, edit=lambda c: c):
    """(traced step, abstract state, constants) of the loop's step for `config` on `mesh`."""
    phase = make_phase(config, experiment, edit)
    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(phase.init, rng)
    shardings = parallel.logical_shardings(boxed, mesh, rules)
    state = _abstract(nn.unbox(boxed), shardings)
    consts = () if phase.constants is None else (_abstract(jax.eval_shape(phase.constants)),)
    if 'data' in config:
        latent_shape = _latent_shape(config, experiment, edit)
        batch = batch_spec(config.data, int(config.train.batch_size), latent_shape=latent_shape)
    else:  # phases on synthetic data (toy): the shapes of their first batch
        batch = _abstract(next(phase.make_data(0, 1)))
    step = loop.jit_train_step(phase, mesh, rules, shardings, len(consts))
    with jax.set_mesh(mesh):
        traced = step.trace(state, batch, jax.eval_shape(lambda: rng), *consts)
    return traced, state, consts


def compile_step(
    config: ml_collections.ConfigDict,
    topology: str,
    num_slices: int | None = None,
    *,
    experiment: str | None = None,
) -> dict:
    """Compiles config's train step for the topology; returns the report (see module doc).

    `experiment` (FILE[:VARIANT]) is where the earlier runs of a later phase come from.
    Raises DoesNotFit when the program needs more HBM per chip than the chip has.
    """
    chip, _ = parse_topology(topology)
    slices = int(config.mesh.get('num_slices', 1)) if num_slices is None else int(num_slices)
    devices = topology_devices(topology, slices)
    mesh_shape = config_checks.resolve_mesh_shape(config.mesh.shape, len(devices))
    config_checks.check_slices(slices, mesh_shape)
    config_checks.check_batch_size(int(config.train.batch_size), mesh_shape, 1)
    mesh = parallel.make_mesh(mesh_shape, devices, slices)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    rng = jax.random.key(0)

    start = time.perf_counter()
    traced, state, consts = _trace(config, mesh, rules, rng, experiment)
    flops = count_flops(traced.jaxpr)
    model = count_flops(_trace(config, mesh, rules, rng, experiment, _without_remat)[0].jaxpr)
    traced_at = time.perf_counter()
    try:
        compiled = traced.lower().compile()
    except Exception as e:  # XLA reports running out of HBM at compile time
        error = _does_not_fit(str(e), chip)
        if error is None:
            raise
        raise error from None
    seconds = time.perf_counter() - traced_at
    mem = compiled.memory_analysis()
    total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.generated_code_size_in_bytes
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    n = len(devices)
    report = {
        'phase': str(config.phase),
        'topology': topology,
        'num_slices': slices,
        'chips': n,
        'chip': chip.name,
        'mesh_shape': list(mesh_shape),
        'batch_size': int(config.train.batch_size),
        'params': _size(state.params),
        'frozen_params': _size(consts),
        'memory_gib': {
            'arguments': mem.argument_size_in_bytes / GiB,
            'outputs': mem.output_size_in_bytes / GiB,
            'aliased': mem.alias_size_in_bytes / GiB,
            'temporaries': mem.temp_size_in_bytes / GiB,
            'total': total / GiB,
            'hbm': chip.hbm_bytes / GiB,
        },
        'fits': total <= chip.hbm_bytes,
        'flops': flops.flops,
        'model_flops': model.flops,
        'unknown_trip_loops': flops.loops,
        'xla_flops': float(cost.get('flops', 0.0)) * n,
        'step_time_bound_s': flops.flops / (n * chip.peak_bf16_flops),
        'mfu_bound': model.flops / flops.flops if flops.flops else 0.0,
        'trace_seconds': traced_at - start,
        'compile_seconds': seconds,
    }
    if not report['fits']:
        raise DoesNotFit(
            f'does not fit: needs {total / GiB:.1f} GiB per chip, {chip.name} has '
            f'{chip.hbm_bytes / GiB:.1f} GiB'
        )
    return report


def summary(report: dict) -> str:
    m = report['memory_gib']
    return '\n'.join(
        [
            f'{report["phase"]} on {report["topology"]} x{report["num_slices"]} '
            f'({report["chips"]} chips, mesh {tuple(report["mesh_shape"])}, '
            f'batch {report["batch_size"]})',
            f'  parameters      {report["params"] / 1e6:,.1f}M trained, '
            f'{report["frozen_params"] / 1e6:,.1f}M frozen',
            f'  memory per chip {m["total"]:.2f} GiB of {m["hbm"]:.2f} GiB '
            f'(arguments {m["arguments"]:.2f}, outputs {m["outputs"]:.2f}, aliased '
            f'{m["aliased"]:.2f}, temporaries {m["temporaries"]:.2f})',
            f'  FLOPs per step  {report["flops"]:.3e} (model {report["model_flops"]:.3e}; '
            f'XLA cost analysis {report["xla_flops"]:.3e})',
            f'  step time >= {report["step_time_bound_s"]:.3f} s at peak; MFU <= '
            f'{100 * report["mfu_bound"]:.0f} %',
            f'  traced in {report["trace_seconds"]:.0f} s, compiled in '
            f'{report["compile_seconds"]:.0f} s',
        ]
    )


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    experiment = config_flags.get_config_filename(flags.FLAGS['config'])
    try:
        report = compile_step(
            config, flags.FLAGS.topology, flags.FLAGS.num_slices, experiment=experiment
        )
    except DoesNotFit as e:
        print(str(e))
        sys.exit(2)
    print(summary(report))
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, 'w') as f:
            json.dump(report, f, indent=1)


def entry() -> None:
    config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
    flags.DEFINE_string('topology', 'v5p:8x8x4', 'TPU topology, e.g. v5p:8x8x4 or v6e:16x16.')
    flags.DEFINE_integer('num_slices', None, 'Slices (default: config.mesh.num_slices).')
    flags.DEFINE_string('out', '', 'Write the report as JSON here.')
    flags.mark_flag_as_required('config')
    # An unknown --config.x field: one clear line before absl's flag parsing (as in main.py).
    spec = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--config=')), None)
    paths = config_checks.override_paths(sys.argv)
    if spec is not None and paths:
        try:
            config_checks.check_overrides(config_checks.load_config(spec), paths)
        except config_checks.ConfigError as e:
            print(f'Config error: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(main)


if __name__ == '__main__':
    entry()
