#!/usr/bin/env bash
# The two-stage NaQ recipe (docs/nlq.md#training-recipe) for one model, shared by naq_vslnet.sh and naq_reler.sh:
#   1. make_naq: NLQ train + narrations as queries -> ROOT/v2/annotations/nlq_naq_train.json
#   2. joint:    NLQ + NaQ training, large batch           -> OUT/joint/model_best.pth
#   3. finetune: NLQ train only, from the best joint model  -> OUT/finetune/model_best.pth
#   4. eval:     val metrics (OUT/eval_val/metrics.json) and the challenge submission
#                (OUT/eval_test/submission.json)
#
# Usage: scripts/naq_recipe.sh vslnet|reler [extra hydra overrides for both training stages]
# Environment (all optional):
#   ROOT=data/synthetic       data root (Ego4D layout)
#   OUT=outputs/naq_<model>   output folder
#   PRESET=paper              paper | tiny (instant CPU smoke run)
#   LAUNCHER=                 empty: run here (or export TORCHRUN="torchrun --nproc_per_node=4");
#                             slurm: submit the joint stage, then the fine-tuning stage as a job that
#                             starts once the joint job succeeded (--dependency=afterok:<joint job>),
#                             wait for it, then evaluate here; local: submitit processes here, in turn
#   PARTITION=                SLURM partition (LAUNCHER=slurm)
#   PYTHON=.venv/bin/python
# Re-running the script resumes each stage from its last checkpoint; a preempted SLURM job is requeued
# and resumes on its own (docs/slurm.md#slurm).
# SLURM jobs get the GPU defaults of configs/nlq/launcher/slurm.yaml (8 GPUs, 10 CPUs per task, 480 GB);
# nodes x GPUs per node with launcher.nodes=2 launcher.gpus_per_node=8 (the global batch is split over all
# ranks). On a CPU-only partition override them, e.g.
#   LAUNCHER=slurm PARTITION=debug PRESET=tiny scripts/naq_vslnet.sh device=cpu launcher.gpus_per_node=0 \
#       launcher.cpus_per_task=1 launcher.mem_gb=2
set -euo pipefail

MODEL=${1:?usage: scripts/naq_recipe.sh vslnet|reler [hydra overrides]}
shift
ROOT=${ROOT:-data/synthetic}
OUT=${OUT:-outputs/naq_${MODEL}}
PRESET=${PRESET:-paper}
PYTHON=${PYTHON:-.venv/bin/python}
TRAIN=(${TORCHRUN:-$PYTHON} tools/train_nlq.py "model=$MODEL" "preset=$PRESET" "data.root=$ROOT")
if [[ "${LAUNCHER:-}" == slurm ]]; then
  TRAIN+=("launcher=slurm" "launcher.partition=${PARTITION:?set PARTITION for LAUNCHER=slurm}")
elif [[ -n "${LAUNCHER:-}" ]]; then
  TRAIN+=("launcher=$LAUNCHER")
fi
NAQ_FILE=$ROOT/v2/annotations/nlq_naq_train.json

cd "$(dirname "$0")/.."   # ROOT, OUT and PYTHON are relative to the repository root
if [[ ! -f "$NAQ_FILE" ]]; then
  "$PYTHON" tools/make_naq.py "narrations=$ROOT/v2/narrations/egoclip.tsv" \
    "annotations_dir=$ROOT/v2/annotations" "out=$NAQ_FILE"
fi
if [[ "${LAUNCHER:-}" == slurm ]]; then
  # stage 1 is submitted without waiting; its last stdout line is {"job_id": "<id>"}
  JOINT_JOB=$("${TRAIN[@]}" stage=joint "naq_file=$NAQ_FILE" "output_dir=$OUT/joint" wait=false "$@" | tail -n 1 |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
  echo "NaQ $MODEL: joint stage is SLURM job $JOINT_JOB; fine-tuning starts after it (afterok)"
  "${TRAIN[@]}" stage=finetune "init=$OUT/joint/model_best.pth" "output_dir=$OUT/finetune" \
    "launcher.dependency=afterok:$JOINT_JOB" "$@"
else
  "${TRAIN[@]}" stage=joint "naq_file=$NAQ_FILE" "output_dir=$OUT/joint" "$@"
  "${TRAIN[@]}" stage=finetune "init=$OUT/joint/model_best.pth" "output_dir=$OUT/finetune" "$@"
fi
for SPLIT in val test_unannotated; do
  NAME=$([[ $SPLIT == val ]] && echo eval_val || echo eval_test)
  "$PYTHON" tools/eval_nlq.py "checkpoint=$OUT/finetune/model_best.pth" "data.root=$ROOT" \
    "split=$SPLIT" "output_dir=$OUT/$NAME"
done
echo "NaQ $MODEL: val metrics in $OUT/eval_val/metrics.json, submission in $OUT/eval_test/submission.json"
