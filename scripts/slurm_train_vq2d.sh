#!/usr/bin/env bash
# Train the VQ2D detector on a SLURM cluster through submitit (episodic.launch; docs/slurm.md#slurm):
# one task per GPU, DDP over every GPU of every node (launcher.nodes x launcher.gpus_per_node ranks,
# batch_size is the global batch split over them). Returns once the job is submitted; the log is
# OUTPUT_DIR/log.txt, submitit's files OUTPUT_DIR/submitit/<job id>/. On preemption or
# `scontrol requeue` (SIGTERM) and on submitit's timeout signal the trainer saves a checkpoint
# after the current iteration and exits; the requeued job resumes from OUTPUT_DIR/last_checkpoint
# (the same command run again also resumes).
#
#   scripts/slurm_train_vq2d.sh PARTITION OUTPUT_DIR [hydra overrides ...]
#
# e.g. (seed-paper recipe, batch 64 over 2 nodes x 8 GPUs):
#   scripts/slurm_train_vq2d.sh learnfair outputs/vq2d_improved data.root=/datasets/ego4d \
#       model.weights.path=/checkpoints/fasterrcnn_resnet50_fpn_coco.pth launcher.nodes=2
# Environment: PRESET (improved | baseline | tiny; default improved), PYTHON (default .venv/bin/python).
# Cluster settings: launcher.gpus_per_node=8 launcher.timeout_min=4320 launcher.mem_gb=480
#   launcher.slurm_extra='{constraint: volta32gb, account: ego4d}' (configs/vq2d/launcher/slurm.yaml).
# CPU-only partition: override the GPU defaults, e.g.
#   PRESET=tiny scripts/slurm_train_vq2d.sh debug OUT data.root=D max_iter=150 checkpoint.period=20 \
#       launcher.gpus_per_node=0 launcher.tasks_per_node=1 launcher.cpus_per_task=1 launcher.mem_gb=4
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 PARTITION OUTPUT_DIR [hydra overrides ...]" >&2
  exit 2
fi
partition=$1
output_dir=$2
shift 2
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" tools/train_vq2d.py "preset=${PRESET:-improved}" launcher=slurm \
  "launcher.partition=${partition}" "output_dir=${output_dir}" "$@"
