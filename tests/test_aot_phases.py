"""Later phases trace for ahead-of-time compilation with abstract earlier runs (no checkpoint).

The dynamics, agent and imagination phases of craftax_tiny build their earlier runs from the
variants of the same experiment file (pretrained.abstract); tracing the loop's step needs no
TPU, so this runs on CPU without the tpu extra.
"""

import jax
import pytest

from dreamer4_jax import aot, config_checks, parallel, pretrained
from dreamer4_jax.jaxpr_flops import count_flops

EXPERIMENT = 'experiments/craftax_tiny.py'


@pytest.mark.parametrize('variant', ['dynamics', 'agent', 'imagination'])
def test_later_phase_traces_with_abstract_earlier_runs(variant):
    config = config_checks.load_config(f'{EXPERIMENT}:{variant}')
    config.dynamics.tokenizer_workdir = 'runs/does/not/exist'  # never read by the AOT path
    mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = tuple(tuple(r) for r in config.sharding_rules)
    traced, state, consts = aot._trace(config, mesh, rules, jax.random.key(0), EXPERIMENT)
    assert count_flops(traced.jaxpr).flops > 0
    # The frozen tokenizer is the tokenizer variant's, abstract.
    tok = pretrained.abstract(config_checks.load_config(f'{EXPERIMENT}:tokenizer'))
    assert aot._size(consts) == aot._size(tok.abstract_params())
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(consts))
    # The trained state has the shapes of the run this variant produces.
    run = pretrained.abstract(aot._linked(config), _config_of)
    assert jax.tree.map(lambda x: x.shape, state.params) == jax.tree.map(
        lambda x: x.shape, run.abstract_params()
    )


def _config_of(workdir):
    return aot._linked(config_checks.load_config(f'{EXPERIMENT}:{workdir[len(aot.AOT_RUN) :]}'))


def test_later_phase_needs_the_experiment_file():
    config = config_checks.load_config(f'{EXPERIMENT}:agent')
    with pytest.raises(config_checks.ConfigError, match='FILE:VARIANT'):
        aot.make_phase(config)
