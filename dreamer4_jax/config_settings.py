"""Settings after the variant: `--config=experiments/x.py:dynamics,objective=diffusion`.

big_vision style: the string after ':' is `variant[,key=value,...]`. A key is either a dotted path
of the config (`dynamics.ramp=False`, `train.steps=5`) or a short name the experiment file
defines in its module-level `SETTINGS`:

  SETTINGS = {
      'objective': {  # a named choice: each value sets several real fields
          'diffusion': {'dynamics.shortcut': False, 'dynamics.sampling_steps': 64},
          'shortcut': {'dynamics.shortcut': True, 'dynamics.sampling_steps': 4},
      },
      'labels': 'data.label_fraction',  # an alias of one field
  }

Values are parsed with the type of the field they set (bool, int, float, str, tuple; `None` for
fields that may be None). Settings apply left to right, so a later one wins. An unknown key, an
unknown choice or a value of the wrong type is one ConfigError naming it. Experiment files opt in
with the `accepts_settings` decorator on get_config, so every caller (the absl flag of main.py,
config_checks.load_config, tests calling get_config) sees the same config.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from dreamer4_jax.config_checks import ConfigError

Settings = Mapping[str, Any]
_TRUE = ('true', '1', 'yes')
_FALSE = ('false', '0', 'no')


def split_arg(arg: str | None) -> tuple[str, list[tuple[str, str]]]:
    """'dynamics,a.b=1,c=(1,2)' -> ('dynamics', [('a.b', '1'), ('c', '(1,2)')]).

    Commas inside brackets belong to the value (tuples). A first part without '=' is the
    variant; every later part must be key=value.
    """
    parts, depth, current = [], 0, ''
    for ch in arg or '':
        depth += ch in '([{'
        depth -= ch in ')]}'
        if ch == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += ch
    parts.append(current)
    parts = [p.strip() for p in parts]
    variant = '' if '=' in parts[0] else parts.pop(0)
    settings = []
    for part in parts:
        key, eq, value = part.partition('=')
        if not eq or not key.strip():
            raise ConfigError(
                f'config setting {part!r} is not key=value (e.g. dynamics.ramp=False); the '
                'variant comes first: file.py:variant,key=value,...'
            )
        settings.append((key.strip(), value.strip()))
    return variant, settings


def _parent(config: ml_collections.ConfigDict, path: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the sub-config that holds the field, the field's name); unknown parts are errors."""
    node, walked = config, []
    for part in path.split('.'):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            where = '.'.join(walked) or '<top level>'
            raise ConfigError(
                f"unknown config setting '{path}': '{part}' does not exist under {where}. "
                f'Fields there: {", ".join(known) or "(none: not a sub-config)"}.'
            )
        parent = node
        node = node[part]
        walked.append(part)
    return parent, walked[-1]


def parse_value(text: str, kind: type, where: str) -> Any:
    """`text` as a value of type `kind` (the type of the field it sets)."""

    def bad(what: str):
        raise ConfigError(f'config setting {where}={text}: {what}')

    if text == 'None':
        return None
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        bad('expected a bool (True or False)')
    if kind is str:
        return text
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            bad(f'expected {"an int" if kind is int else "a float"}')
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        bad(f'expected a Python literal of type {kind.__name__}')
    if kind in (tuple, list) and not isinstance(value, (tuple, list)):
        bad(f'expected a {kind.__name__}, e.g. (1, 2)')
    return kind(value) if kind in (tuple, list) else value


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """config.<path> = value (already typed); a value the field refuses is a ConfigError."""
    node, leaf = _parent(config, path)
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f'config setting {path}={value!r}: {e}') from e


def set_text(config: ml_collections.ConfigDict, path: str, text: str) -> None:
    """config.<path> = text parsed with the field's type."""
    node, leaf = _parent(config, path)
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(
            f"config setting '{path}' is a sub-config; set one of its fields, e.g. "
            f'{path}.{sorted(node[leaf].keys())[0]}=...'
        )
    set_field(config, path, parse_value(text, node.get_type(leaf), path))


def apply_settings(
    config: ml_collections.ConfigDict, settings: Sequence[tuple[str, str]], named: Settings
) -> ml_collections.ConfigDict:
    """Applies key=value settings in order (see the module doc); returns `config`."""
    for key, text in settings:
        short = named.get(key)
        if isinstance(short, str):  # an alias of one field
            set_text(config, short, text)
        elif isinstance(short, Mapping):  # a named choice
            if text not in short:
                raise ConfigError(
                    f'config setting {key}={text}: unknown choice; choose one of '
                    f'{", ".join(sorted(short))}.'
                )
            for path, value in short[text].items():
                set_field(config, path, value)
        elif '.' in key or key in config:
            set_text(config, key, text)
        else:
            raise ConfigError(
                f"unknown config setting '{key}': neither a short setting of this experiment "
                f'({", ".join(sorted(named)) or "none defined"}) nor a field; dotted paths such '
                'as dynamics.ramp=False set any field.'
            )
    return config


def accepts_settings(get_config: Callable[..., ml_collections.ConfigDict]):
    """Decorator for an experiment's get_config(arg): splits off `,key=value` settings, calls
    get_config with the variant alone, then applies them with the module's SETTINGS."""

    @functools.wraps(get_config)
    def wrapped(arg: str | None = None) -> ml_collections.ConfigDict:
        variant, settings = split_arg(arg)
        config = get_config(variant or None)
        return apply_settings(config, settings, get_config.__globals__.get('SETTINGS', {}))

    return wrapped


def sibling_experiment(this_file: str, name: str) -> types.ModuleType:
    """The experiment file `name`.py next to `this_file`, loaded by its path.

    Experiment files are loaded by path (`--config=experiments/x.py:...`), not imported as a
    package, so one built on another (craftax_cpu on craftax_tiny) loads it the same way.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
