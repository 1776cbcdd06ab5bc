"""Evaluate VQ2D.

Scoring mode: score a challenge-format predictions file against an annotation file::

    python tools/eval_vq2d.py annotations=vq_val.json predictions=preds.json [output_dir=OUT]

Checkpoint mode: run a trained detector on a split (detection pass, peaks, tracking; on a
pool of workers, resumable), write OUT/predictions.json (OUT/submission.json for the
test_unannotated split) and score that file::

    python tools/eval_vq2d.py checkpoint=C data.root=DIR split=val output_dir=OUT workers=2

Released-detections mode: the same on the EGO4D baseline's released precomputed detections
(``vq2d_detections``), no model and no GPU, e.g. with a published system's settings::

    python tools/eval_vq2d.py detections=DIR data.root=DIR split=val output_dir=OUT published=ego4d_siamrcnn

``max_clips=N`` answers the first N clips only (a smoke test before a full run).
Both print the metrics, then the same metrics as ONE JSON object on the last line of
stdout, and write metrics.json and per-query results to output_dir. Each mode is one
library function.
"""
from __future__ import annotations

from omegaconf import DictConfig

from episodic.cli import run_one_mode, tool_main
from vq2d.evaluation.scoring import format_metrics, score_from_config


def _checkpoint_mode(cfg: DictConfig) -> dict:
    from vq2d.inference.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(cfg)


MODES = {"predictions": score_from_config, "checkpoint": _checkpoint_mode, "detections": _checkpoint_mode}


@tool_main("../configs/vq2d", "eval")
def main(cfg: DictConfig) -> None:
    run_one_mode(cfg, MODES, format_metrics)


if __name__ == "__main__":
    main()
