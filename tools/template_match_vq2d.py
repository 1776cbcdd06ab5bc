"""Answer a VQ2D split with the training-free template matcher and score it with the
toolkit's scorer (docs/vq2d.md#template-matcher-baseline)::

    python tools/template_match_vq2d.py data.root=data/synthetic split=val output_dir=OUT workers=2

Writes OUT/predictions.json (OUT/submission.json for split=test_unannotated), metrics.json,
per_query.csv, per_query.json and config.yaml; prints the metrics, then the same metrics as
ONE JSON object on the last line of stdout. Exit status 0, 1 (bad input) or 3 (some
queries failed; ``allow_failures=true`` exits 0).
"""
from __future__ import annotations

from omegaconf import DictConfig

from episodic.cli import report_metrics, tool_main
from vq2d.baselines.evaluate import evaluate_template_matcher
from vq2d.evaluation.scoring import format_metrics


@tool_main("../configs/vq2d", "template_match")
def main(cfg: DictConfig) -> None:
    report_metrics(evaluate_template_matcher(cfg), format_metrics, allow_failures=bool(cfg.allow_failures))


if __name__ == "__main__":
    main()
