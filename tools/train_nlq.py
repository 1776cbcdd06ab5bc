"""Train VSLNet or ReLER on pre-extracted NLQ features, one stage of the NaQ recipe.

    python tools/train_nlq.py model=vslnet stage=joint data.root=DIR output_dir=OUT
    python tools/train_nlq.py model=vslnet stage=finetune init=OUT/model_best.pth output_dir=OUT2
    (stage=nlq_only: NLQ only; stage=naq_only: NaQ only; preset=tiny: instant CPU run;
     launcher=slurm launcher.partition=P: a SLURM job; torchrun --nproc_per_node=N ...: DDP)

Writes OUT/config.yaml, checkpoints (model_best.pth by val R@1 IoU0.3), log.txt and
tensorboard/; the same command resumes from OUT/last_checkpoint. The last stdout line is
a JSON summary (best epoch and metric).
"""
from __future__ import annotations

import json

from omegaconf import DictConfig

from episodic.cli import tool_main
from episodic.errors import DataError
from nlq.engine.launch import launch_training


@tool_main("../configs/nlq", "train")
def main(cfg: DictConfig) -> None:
    try:
        summary = launch_training(cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if summary is not None:  # DDP: the main process only
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
