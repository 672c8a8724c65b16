#!/usr/bin/env bash
# Paper-scale speed on one GPU, in one command: the 1.57B dynamics step's MFU against the
# chip's bf16 peak and batch-1 generation at 256 tokens x 192 frames of context
# (benchmarks/bench_paper_scale.py; not yet run on a GPU, so its time there is not measured).
#
#   launch/gpu_bench.sh OUT_DIR [benchmark flags, e.g. --frames=32 --no_gen]
#
# Writes OUT_DIR/paper_scale.json (the figures) and OUT_DIR/paper_scale.log. Stops after
# BENCH_TIMEOUT seconds (default 480), so a run on a time-limited machine leaves room to rerun.
# Python: $PYTHON if set, else .venv/bin/python where it sees a GPU, else python3. On a machine
# without network that has JAX (with CUDA), Flax, optax and orbax, run `make offline-wheels` on
# a machine with network first: the wheels/ folder it fills travels with the repository, and this
# script installs it into a temporary directory (nothing is installed system-wide).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [benchmark flags]" >&2
  exit 2
fi
OUT=$1
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  if [ -x .venv/bin/python ] &&
    .venv/bin/python -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")' 2>/dev/null; then
    PY=.venv/bin/python
  fi
fi
if compgen -G 'wheels/*.whl' >/dev/null; then
  SITE=$(mktemp -d)
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" wheels/*.whl
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
mkdir -p "$OUT"
timeout "${BENCH_TIMEOUT:-480}" "$PY" -u -m benchmarks.bench_paper_scale \
  --out="$OUT/paper_scale.json" "$@" 2>&1 | tee "$OUT/paper_scale.log"
