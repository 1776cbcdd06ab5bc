#!/usr/bin/env bash
# NaQ two-stage recipe for VSLNet: joint NLQ + NaQ (batch 2048, lr 1e-3, warmup 2.5%), then
# fine-tune on NLQ (batch 32, lr 1e-4), then val metrics + test submission.
#   scripts/naq_vslnet.sh                                   # here, data/synthetic
#   ROOT=/data/ego4d TORCHRUN="torchrun --nproc_per_node=4" scripts/naq_vslnet.sh data.features.names=[slowfast]
#   LAUNCHER=slurm PARTITION=learnfair scripts/naq_vslnet.sh launcher.gpus_per_node=4   # stage 2 after stage 1
#   LAUNCHER=slurm PARTITION=debug PRESET=tiny scripts/naq_vslnet.sh device=cpu launcher.gpus_per_node=0 \
#       launcher.cpus_per_task=1 launcher.mem_gb=2     # a CPU-only partition
# See scripts/naq_recipe.sh for the environment variables.
exec "$(dirname "$0")/naq_recipe.sh" vslnet "$@"
