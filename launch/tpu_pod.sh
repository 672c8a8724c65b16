#!/usr/bin/env bash
# Launch one experiment on every host of a Cloud TPU pod slice (each host runs the same command;
# jax.distributed discovers the coordinator, process count and id on TPU VMs by itself).
#
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/minecraft_paper.py:dynamics gs://BUCKET/runs/dyn \
#       --config.dynamics.tokenizer_workdir=gs://BUCKET/runs/tok [--config.train.steps=600000 ...]
#
# Variants of experiments/minecraft_paper.py: tokenizer, dynamics, agent, imagination (see its
# docstring for the chain of workdirs). Set --config.train.batch_size to the chip count (1 per
# chip, PAPER 8). Check memory first, on any machine: python -m dreamer4_jax.aot --config=...
# --topology=v5p:8x8x4. Multi-slice (e.g. 2 slices from queued resources): add
# --config.mesh.num_slices=2 --config.mesh.shape='(2,-1,1)' (data parallel across slices,
# FSDP within each).
#
# Checkpoints go to the gs:// workdir (orbax writes from all hosts); re-running the same command
# resumes. A preemption sends SIGTERM: the run saves a checkpoint before exiting.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG GCS_WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
REPO_DIR=${REPO_DIR:-dreamer4_jax}
# Copy the checkout to every host, install once (idempotent), then run on all hosts at once.
gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$ZONE" . "$TPU_NAME:$REPO_DIR"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone="$ZONE" --command="
  set -e; cd $REPO_DIR
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[tpu]'
  .venv/bin/python -m dreamer4_jax.main --config=$CONFIG --workdir=$WORKDIR \
    --config.distributed.enabled=True $*"
