"""Loading an earlier phase: its saved config, and its parameters (or EMA weights), sharded.

Every later phase, closed-loop evaluation and the play server load earlier runs through this one
module. A run is rebuilt from the config saved with its checkpoint, so a caller needs only the
folder. Only the weights are read (the EMA weights where the run keeps them, PAPER 8: sampling
uses the EMA), never the optimizer state, and they are restored straight onto the shardings the
caller asks for: nothing full-size lands on one device.

The architecture of a run follows its phase:
  tokenizer    the tokenizer                       (config.tokenizer)
  dynamics     the dynamics model                  (config.dynamics + its tokenizer run)
  agent        {'dynamics', 'agent'}               (config.agent + its dynamics run)
  imagination  {'dynamics', 'agent', 'prior_policy'} (the same world model as its agent run)
Other phases (the toy) restore their parameters as saved, unsharded.

`abstract(config)` gives the same object without a checkpoint: its `params()` are
jax.ShapeDtypeStruct leaves, which is what ahead-of-time compilation needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from dreamer4_jax import checkpoint, parallel, world_model
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import init_params as init_dynamics_params
from dreamer4_jax.model_configs import tokenizer_config_from
from dreamer4_jax.tokenizer import Tokenizer, TokenizerConfig

ConfigOf = Callable[[str], ml_collections.ConfigDict]

# Which earlier run each phase builds on: (config field naming its workdir, that run's phase).
EARLIER = {
    'dynamics': ('dynamics.tokenizer_workdir', 'tokenizer'),
    'agent': ('agent.dynamics_workdir', 'dynamics'),
    'imagination': ('imagination.agent_workdir', 'agent'),
}


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved with its newest checkpoint."""
    return checkpoint.saved_config(workdir)[0]


def uses_ema(config: ml_collections.ConfigDict) -> bool:
    """True when the run keeps EMA weights (`config.<phase>.ema_decay > 0`)."""
    section = config.get(str(config.phase))
    if not isinstance(section, ml_collections.ConfigDict) or 'ema_decay' not in section:
        return False
    return float(section.ema_decay) > 0


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A finished (or running) phase: its saved config and a way to get its weights.

    config: the run's saved config. params(shardings): the weights (EMA where kept), restored
    onto `shardings` (a tree like the unboxed parameters; None: the default device).
    """

    workdir: str
    config: ml_collections.ConfigDict
    config_of: ConfigOf = saved_config
    step: int | None = None
    is_abstract: bool = False

    @property
    def phase(self) -> str:
        return str(self.config.phase)

    def earlier(self) -> Pretrained:
        """The run this one builds on (tokenizer of a dynamics run, ...), found the same way."""
        if self.is_abstract:

            def find(where, expect=None):
                return abstract(self.config_of(where), self.config_of, where)

        else:

            def find(where, expect=None):
                return load(where, expect=expect, config_of=self.config_of)

        return load_earlier(self.config, load=find)

    def tokenizer_config(self) -> TokenizerConfig:
        """The TokenizerConfig whose latents this run's models read (or are)."""
        if self.phase == 'tokenizer':
            return tokenizer_config_from(self.config.tokenizer)
        return self.earlier().tokenizer_config()

    def init_params(self, rng: jax.Array) -> Any:
        """Freshly initialized parameters of this run's architecture (boxed with logical names)."""
        phase = self.phase
        if phase == 'tokenizer':
            tok = Tokenizer(tokenizer_config_from(self.config.tokenizer))
            return world_model.init_tokenizer_params(tok, rng)
        if phase == 'dynamics':
            model = world_model.dynamics_of(self.config.dynamics, self.tokenizer_config())
            return init_dynamics_params(model, rng)
        if phase in ('agent', 'imagination'):
            params = world_model.init_world_model_params(self.world_model(), rng)
            if phase == 'imagination':
                params['prior_policy'] = params['agent']['policy']
            return params
        raise ConfigError(f'{self.workdir}: no architecture is known for phase {phase!r}.')

    def world_model(self) -> world_model.WorldModel:
        """The agent-carrying world model of an agent or imagination run."""
        agent_run = self.earlier() if self.phase == 'imagination' else self
        if agent_run.phase != 'agent':
            raise ConfigError(
                f'{self.workdir} holds a {self.phase!r} run; a world model with agent heads '
                "needs an 'agent' or 'imagination' run."
            )
        dyn_run = agent_run.earlier()
        return world_model.build_world_model(
            dyn_run.config.dynamics, dyn_run.tokenizer_config(), agent_run.config.agent
        )

    def abstract_params(self, shardings: Any = None) -> Any:
        """jax.ShapeDtypeStruct tree of the (unboxed) parameters, with `shardings` if given.

        `shardings` may cover more than this run's parameters (the fresh state of a later phase
        has new leaves, e.g. agent tokens): each parameter takes the sharding at its path.
        """
        tree = parallel.unboxed(jax.eval_shape(self.init_params, jax.random.key(0)))
        if shardings is None:
            return tree
        by_path = {_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}

        def one(path, x):
            key = _keys(path)
            if key not in by_path:
                raise ConfigError(
                    f'{self.workdir}: parameter {"/".join(key)} has no place in the model it is '
                    'loaded into; the architectures differ.'
                )
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=by_path[key])

        return jax.tree_util.tree_map_with_path(one, tree)

    def shardings(self, mesh: jax.sharding.Mesh, rules) -> Any:
        """NamedShardings of the parameters on `mesh` under the logical-axis `rules`."""
        with nn.logical_axis_rules(rules):
            boxed = jax.eval_shape(self.init_params, jax.random.key(0))
        return parallel.logical_shardings(boxed, mesh, rules)

    def params(self, shardings: Any = None) -> Any:
        """The run's weights: EMA where it keeps them, else the trained parameters."""
        if self.is_abstract:
            return self.abstract_params(shardings)
        path = ('aux', 'ema') if uses_ema(self.config) else ('params',)
        if self.phase not in ('tokenizer', 'dynamics', 'agent', 'imagination'):
            return checkpoint.restore_subtree(self.workdir, self.step, path, None)
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: device, self.abstract_params())
        return checkpoint.restore_subtree(
            self.workdir, self.step, path, self.abstract_params(shardings)
        )


def load(
    workdir: str,
    *,
    expect: str | None = None,
    step: int | None = None,
    config_of: ConfigOf = saved_config,
) -> Pretrained:
    """The run in `workdir` (its newest checkpoint, or `step`); weights are read on `params()`.

    `expect`: the phase the caller needs; another phase is a clear error, not a KeyError later.
    """
    config, step = checkpoint.saved_config(workdir, step)
    found = config.get('phase', None)
    if expect is not None and found != expect:
        raise checkpoint.CheckpointError(
            f'{workdir} holds a {found!r} run (config.phase saved in its checkpoint), not a '
            f'{expect!r} run. Point the config at the workdir of a finished {expect} run.'
        )
    return Pretrained(workdir, config, config_of, step)


def load_earlier(
    config: ml_collections.ConfigDict, *, phase: str | None = None, load=load
) -> Pretrained:
    """The run that `config`'s phase (or `phase`) builds on, e.g. a dynamics run's tokenizer.

    Errors name the config field: `config.dynamics.tokenizer_workdir=X: X does not exist ...`.
    `load(workdir, expect=...)`: `load` here, or abstract runs for ahead-of-time compilation.
    """
    phase = str(config.phase) if phase is None else phase
    field, earlier = EARLIER[phase]
    section, name = field.split('.')
    where = str(config[section][name] or '')
    if not where:
        raise ConfigError(
            f'config.{field} is empty: point it at the workdir of a finished {earlier!r} run.'
        )
    try:
        return load(where, expect=earlier)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f'config.{field}={where}: {e}') from e


def abstract(
    config: ml_collections.ConfigDict, config_of: ConfigOf = saved_config, workdir: str = ''
) -> Pretrained:
    """A run that exists only as a config: `params()` gives shapes, dtypes and shardings.

    `config_of(workdir)` answers for the earlier runs it builds on (ahead-of-time compilation
    maps them to the variants of the same experiment file).
    """
    return Pretrained(workdir, config, config_of, None, is_abstract=True)


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, 'key', p)) for p in path)


def device_shardings(tree: Any) -> Any:
    """The shardings of a tree of arrays (where a loaded tree should land to replace it)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def replace_leaves(fresh: Any, loaded: Any, where: str) -> Any:
    """`fresh` with every leaf that `loaded` has replaced by the loaded array (warm start).

    Leaves only in `fresh` (new parameters such as the agent-token embedding) keep their init;
    a loaded leaf of another shape, or with no place in `fresh`, is an architecture mismatch.
    Both trees are unboxed; loaded arrays already sit on the shardings of the leaves they replace.
    """
    flat = {
        tuple(getattr(p, 'key', p) for p in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(loaded)[0]
    }
    used = set()

    def one(path, leaf):
        key = tuple(getattr(p, 'key', p) for p in path)
        if key not in flat:
            return leaf
        used.add(key)
        new = flat[key]
        if new.shape != leaf.shape:
            raise ConfigError(
                f'{where}: parameter {"/".join(key)} has shape {new.shape} in the checkpoint but '
                f"{leaf.shape} in this model; the architecture must match the checkpoint's "
                'saved config.'
            )
        return new.astype(leaf.dtype)

    out = jax.tree_util.tree_map_with_path(one, fresh)
    extra = sorted('/'.join(k) for k in set(flat) - used)
    if extra:
        raise ConfigError(
            f'{where}: checkpoint parameters {extra[:5]} have no place in this model; it was '
            'built from another architecture.'
        )
    return out
