#!/usr/bin/env bash
# Evaluate a VQ2D checkpoint on a SLURM cluster (docs/slurm.md#slurm).
#
#   PARTITION=learnfair WORKERS=64 scripts/slurm_eval_vq2d.sh CHECKPOINT OUTPUT_DIR [hydra overrides...]
#   e.g. scripts/slurm_eval_vq2d.sh runs/improved/model_final.pth outputs/eval_val data.root=/datasets/ego4d split=val
#
# tools/eval_vq2d.py shards the split's clips into WORKERS parts and submits them as one
# SLURM job array through episodic.launch (submitit; one GPU per array task, at most
# ARRAY_PARALLELISM at once), waits for them, merges their results, writes
# OUTPUT_DIR/predictions.json (OUTPUT_DIR/submission.json for split=test_unannotated) and
# scores that file (OUTPUT_DIR/metrics.json). This process only waits: run it in tmux/screen
# on the login node, or inside a small CPU job. Preempted array tasks are requeued and keep
# their finished clips; after a kill, run the same command again: only the rest is redone.
# Environment: PARTITION (required), WORKERS=32, ARRAY_PARALLELISM=WORKERS, CPUS_PER_TASK=10,
# MEM_GB=64 (per array task), TIMEOUT_MIN=720, PYTHON=.venv/bin/python.
# CPU-only partition: the GPU defaults (device=cuda gpus_per_worker=1) are overridden by
#   PARTITION=debug WORKERS=2 CPUS_PER_TASK=1 MEM_GB=2 scripts/slurm_eval_vq2d.sh CKPT OUT \
#       data.root=D split=val device=cpu gpus_per_worker=0
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
CHECKPOINT=$1
OUTPUT_DIR=$2
shift 2

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PARTITION=${PARTITION:?set PARTITION to your cluster partition, e.g. PARTITION=learnfair}
WORKERS=${WORKERS:-32}                 # shards = array tasks
ARRAY_PARALLELISM=${ARRAY_PARALLELISM:-$WORKERS}
CPUS_PER_TASK=${CPUS_PER_TASK:-10}     # frame decoding + torch CPU threads per shard
MEM_GB=${MEM_GB:-64}                   # per array task
TIMEOUT_MIN=${TIMEOUT_MIN:-720}

exec "$PYTHON" tools/eval_vq2d.py \
    checkpoint="$CHECKPOINT" output_dir="$OUTPUT_DIR" \
    launcher=slurm launcher.partition="$PARTITION" launcher.array_parallelism="$ARRAY_PARALLELISM" \
    launcher.cpus_per_task="$CPUS_PER_TASK" launcher.mem_gb="$MEM_GB" launcher.timeout_min="$TIMEOUT_MIN" \
    workers="$WORKERS" device=cuda gpus_per_worker=1 \
    "$@"
