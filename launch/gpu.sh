#!/usr/bin/env bash
# Run one experiment on the GPUs of this machine (one process drives all local GPUs).
#
#   launch/gpu.sh experiments/craftax_small.py:tokenizer runs/small/tokenizer [--config.overrides ...]
#
# Variants of experiments/craftax_small.py: tokenizer, dynamics, agent, imagination (its
# docstring lists the chain of workdirs each later phase needs).
#
# Multi-node GPU: run this on every node with
#   --config.distributed.enabled=True --config.distributed.coordinator_address=HOST0:12345
#   --config.distributed.num_processes=N --config.distributed.process_id=I
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
CONFIG=$1 WORKDIR=$2
shift 2
test -x .venv/bin/python || python3 -m venv .venv
.venv/bin/pip install -q -e . 'jax[cuda12]'
mkdir -p "$(dirname "$WORKDIR")"
# Let XLA use most of the GPU memory up front, and the cuDNN attention kernel where it applies.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec .venv/bin/python -m dreamer4_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
