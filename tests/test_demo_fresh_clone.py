"""`make demo` on a fresh clone: the README's first command must work with no runs/ folder.

The clone is the repository's tracked and not-ignored files copied to a temporary folder (what a
`git clone` of the working tree holds: no runs/, data_cache/ or .venv/). Two stand-ins keep it
short: its .venv/bin/python runs this interpreter (installing takes minutes), and its data stage
finds a tiny synthetic dataset where the collected one would be (collection compiles Craftax for
about 40 s). `make demo`, the Makefile line and the demo's own handling of its workdir are real.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

from dreamer4_jax import demo
from dreamer4_jax.data.synthetic import build_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_clone(dest) -> None:
    listed = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for rel in filter(None, listed.split('\0')):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):  # a tracked file deleted in the working tree is skipped
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def _stand_in_venv(clone) -> None:
    """.venv/bin/python that runs this interpreter, stamped newer than setup.py (Makefile)."""
    bin_dir = clone / '.venv' / 'bin'
    bin_dir.mkdir(parents=True)
    python = bin_dir / 'python'
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    stamp = clone / '.venv' / '.installed'
    stamp.touch()
    newer = os.stat(clone / 'setup.py').st_mtime + 60
    os.utime(stamp, (newer, newer))


def _git_checkout() -> bool:
    return bool(shutil.which('git') and shutil.which('make')) and os.path.exists(
        os.path.join(ROOT, '.git')  # a folder in a clone, a file in a worktree
    )


@pytest.mark.skipif(not _git_checkout(), reason='needs git, make and a git checkout')
def test_make_demo_on_a_fresh_clone(tmp_path):
    clone = tmp_path / 'clone'
    _fresh_clone(clone)
    assert not (clone / 'runs').exists() and (clone / 'Makefile').is_file()
    _stand_in_venv(clone)
    data = demo.stage_config('tokenizer', 'runs/demo').data
    data.dir = str(clone / data.dir)
    build_synthetic_dataset(data, lengths=(12,) * 6, as_collected=True)

    env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'DREAMER4_DEBUG')}
    # tokenizer: one step (the scale is 1 / its steps); report: the page over what exists.
    scale = 1.0 / demo.stage_config('tokenizer', 'runs/demo').train.steps
    args = f'DEMO_ARGS=--stages=data,tokenizer,report --steps_scale={scale!r}'
    result = subprocess.run(['make', 'demo', args], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '[demo] data: data_cache/craftax_tiny' in result.stdout  # reused, not collected
    demo_dir = clone / 'runs' / 'demo'
    assert (demo_dir / 'tokenizer' / 'checkpoints' / '1').is_dir()
    assert (demo_dir / 'tokenizer' / 'metrics.jsonl').is_file()
    assert (demo_dir / 'report.md').is_file() and (demo_dir / 'report.html').is_file()
