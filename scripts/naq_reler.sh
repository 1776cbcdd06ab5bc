#!/usr/bin/env bash
# NaQ two-stage recipe for ReLER: joint NLQ + NaQ (batch 768, lr 1.5e-4, warmup 2.5%), then
# fine-tune on NLQ (batch 32, lr 1e-5), then val metrics + test submission.
#   scripts/naq_reler.sh                                    # here, data/synthetic
#   ROOT=/data/ego4d TORCHRUN="torchrun --nproc_per_node=8" scripts/naq_reler.sh data.features.names=[slowfast,clip]
#   LAUNCHER=slurm PARTITION=learnfair scripts/naq_reler.sh   # stage 2 chained after stage 1 (afterok)
#   LAUNCHER=slurm PARTITION=debug PRESET=tiny scripts/naq_reler.sh device=cpu launcher.gpus_per_node=0 \
#       launcher.cpus_per_task=1 launcher.mem_gb=2     # a CPU-only partition
# See scripts/naq_recipe.sh for the environment variables.
exec "$(dirname "$0")/naq_recipe.sh" reler "$@"
