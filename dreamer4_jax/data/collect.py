r"""Command line: build a dataset (Craftax collection or VPT recordings) and print its card.

  python -m dreamer4_jax.data.collect --name=craftax_tiny                     # the demo dataset
  python -m dreamer4_jax.data.collect --name=craftax_seeker --num_episodes=1000 --max_steps=1000 \
      --policy_mix=random=0.25,seeker=0.75 --num_envs=64
  python -m dreamer4_jax.data.collect --source=vpt --vpt_dir=/path/to/recordings --name=vpt_small \
      --resolution=384 --width=640

Flags left out keep the values of `default_data_config()`. An existing dataset with the same
settings is reused (use --force to rebuild it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence

import ml_collections

from dreamer4_jax import errors
from dreamer4_jax.data.build import build_dataset, ensure_dataset
from dreamer4_jax.data.card import card_markdown
from dreamer4_jax.data.config import DataError, dataset_path, default_data_config

_TOP = ('source', 'name', 'dir', 'resolution', 'width', 'eval_fraction')
_COLLECT = ('num_episodes', 'max_steps', 'num_envs', 'seed', 'max_repeat', 'epsilon',
            'pool_size', 'chunk_steps', 'task_events', 'try_epsilon')  # fmt: skip


def parse_policy_mix(text: str) -> dict[str, float]:
    """'random=0.3,seeker=0.7' -> {'random': 0.3, 'seeker': 0.7}."""
    mix = {}
    for part in text.split(','):
        name, sep, weight = part.partition('=')
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            sep = ''
        if not sep:
            raise DataError(
                f'--policy_mix={text!r}: expected name=weight pairs, e.g. random=0.5,seeker=0.5'
            )
    return mix


def config_from_args(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, bool, bool]:
    """(data config, force rebuild, show progress) from command-line flags."""
    cfg = default_data_config()
    p = errors.ArgumentParser(prog='python -m dreamer4_jax.data.collect', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    for key in _TOP:
        p.add_argument(f'--{key}', type=type(cfg[key]), default=cfg[key],
                       help=f'config.data.{key} (default %(default)s)')  # fmt: skip
    for key in _COLLECT:
        p.add_argument(f'--{key}', type=type(cfg.collect[key]), default=cfg.collect[key],
                       help=f'config.data.collect.{key} (default %(default)s)')  # fmt: skip
    p.add_argument('--policy_mix', default='random=0.5,seeker=0.5',
                   help='name=weight pairs over {random, seeker, view_seeker}')  # fmt: skip
    p.add_argument('--vpt_dir', default='', help='recordings folder for --source=vpt')
    p.add_argument('--vpt_lenient', action='store_true',
                   help='cut video and jsonl to the shorter one instead of failing')  # fmt: skip
    p.add_argument('--vpt_cursor_file', default='',
                   help='16x16 RGBA cursor PNG for open GUIs (default: an arrow)')  # fmt: skip
    p.add_argument('--vpt_no_cursor', action='store_true', help='do not draw the GUI cursor')
    p.add_argument('--vpt_keep_stuck_attack', action='store_true',
                   help='keep an attack button stuck down from the first tick')  # fmt: skip
    p.add_argument('--force', action='store_true', help='delete and rebuild an existing dataset')
    p.add_argument('--no_progress', action='store_true')
    args = p.parse_args(argv)
    for key in _TOP:
        cfg[key] = getattr(args, key)
    for key in _COLLECT:
        cfg.collect[key] = getattr(args, key)
    cfg.collect.policy_mix = ml_collections.ConfigDict(
        {'random': 0.0, 'seeker': 0.0, **parse_policy_mix(args.policy_mix)}
    )
    cfg.vpt.dir = args.vpt_dir
    cfg.vpt.strict = not args.vpt_lenient
    cfg.vpt.cursor_file = args.vpt_cursor_file
    cfg.vpt.draw_cursor = not args.vpt_no_cursor
    cfg.vpt.release_stuck_attack = not args.vpt_keep_stuck_attack
    return cfg, args.force, not args.no_progress


def main(argv: Sequence[str] | None = None) -> int:
    """Builds (or reuses) the dataset; bad input ends with one line and exit code 2."""
    return errors.cli(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: Sequence[str]) -> int:
    cfg, force, progress = config_from_args(argv)
    path = dataset_path(cfg)
    if force and path.exists():
        shutil.rmtree(path)
    if force:
        path = build_dataset(cfg, progress=progress)
    else:
        path = ensure_dataset(cfg, progress=progress)
    card = json.loads((path / 'dataset_card.json').read_text())
    print(card_markdown(card))
    print(f'dataset ready at {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
