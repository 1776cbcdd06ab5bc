"""Evaluate NLQ: score a predictions file, or run a trained checkpoint on a split.

    python tools/eval_nlq.py annotations=nlq_val.json predictions=preds.json [output_dir=OUT]
    python tools/eval_nlq.py checkpoint=OUT/model_best.pth data.root=DIR split=val output_dir=EVAL
    python tools/eval_nlq.py checkpoint=OUT/model_best.pth data.root=DIR split=test_unannotated output_dir=EVAL

Scoring mode prints the metrics (and any warnings), then the same metrics as ONE JSON
object on the last line of stdout, and writes metrics.json to output_dir (default: the
predictions file's folder). Checkpoint mode writes EVAL/predictions.json (challenge
format) and then scores THAT file (metrics.json, last stdout line) for an annotated split;
for test_unannotated it writes EVAL/submission.json, validates it and prints its counts.
Each mode is one library function.
"""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from episodic.errors import DataError
from nlq.engine.inference import evaluate_checkpoint_from_config
from nlq.evaluation.scoring import format_metrics, score_from_config

MODES = {"predictions": score_from_config, "checkpoint": evaluate_checkpoint_from_config}


@hydra.main(version_base="1.3", config_path="../configs/nlq", config_name="eval")
def main(cfg: DictConfig) -> None:
    given = [key for key in MODES if cfg[key] is not None]
    if len(given) != 1:
        raise SystemExit("give exactly one of predictions=<predictions file> or checkpoint=<checkpoint>")
    try:
        metrics = MODES[given[0]](cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print("\n".join(format_metrics(metrics)))
    print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
