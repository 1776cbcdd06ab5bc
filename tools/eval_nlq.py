"""Evaluate NLQ: score a predictions file, or run a trained checkpoint on a split.

    python tools/eval_nlq.py annotations=nlq_val.json predictions=preds.json [output_dir=OUT]
    python tools/eval_nlq.py checkpoint=OUT/model_best.pth data.root=DIR split=val output_dir=EVAL
    python tools/eval_nlq.py checkpoint=OUT/model_best.pth data.root=DIR split=test_unannotated output_dir=EVAL

Scoring mode prints the metrics (and any warnings), then the same metrics as ONE JSON
object on the last line of stdout, and writes metrics.json to output_dir (default: the
predictions file's folder). Checkpoint mode writes EVAL/predictions.json (challenge
format) and then scores THAT file (metrics.json, last stdout line) for an annotated split;
for test_unannotated it writes EVAL/submission.json, validates it and prints its counts.
A clip whose feature file is missing or wrongly shaped does not stop checkpoint mode: its
queries are left unanswered, counted and named (``num_failed``, ``failed``,
EVAL/failures.json), and the tool exits 3 (``allow_failures=true``: 0).
Each mode is one library function.
"""
from __future__ import annotations

from omegaconf import DictConfig

from episodic.cli import run_one_mode, tool_main
from nlq.evaluation.scoring import format_metrics, score_from_config


def _checkpoint_mode(cfg: DictConfig) -> dict:
    from nlq.engine.inference import evaluate_checkpoint_from_config  # torch: only in this mode

    return evaluate_checkpoint_from_config(cfg)


MODES = {"predictions": score_from_config, "checkpoint": _checkpoint_mode}


@tool_main("../configs/nlq", "eval")
def main(cfg: DictConfig) -> None:
    run_one_mode(cfg, MODES, format_metrics)


if __name__ == "__main__":
    main()
