"""Score an NLQ predictions file (challenge format) against an annotation file.

STYLE 5: predictions are written to a file first and that file is scored. Writes
``metrics.json`` (the metrics, the warnings and both paths) atomically into ``output_dir``
(default: the predictions file's folder).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from episodic.errors import DataError
from episodic.io import atomic_write_json, atomic_write_text
from nlq.data.annotations import load_nlq_annotations
from nlq.evaluation.coverage import coverage_line, prediction_coverage
from nlq.evaluation.metrics import evaluate_nlq
from nlq.evaluation.submission import read_predictions

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "eval_nlq_config.yaml"  # not config.yaml: output_dir may be a training run's folder


def score_predictions_file(annotations_path: str | os.PathLike, predictions_path: str | os.PathLike,
                           output_dir: str | os.PathLike | None = None) -> dict:
    """Load both files, score (:func:`nlq.evaluation.metrics.evaluate_nlq`), log the
    warnings, write ``metrics.json`` and return the metrics (R@k_IoUt and mIoU in percent,
    num_evaluated, num_gt) and how much of the split the file covers
    (:func:`nlq.evaluation.coverage.prediction_coverage`: num_queries, num_answered,
    num_duplicates, complete, counts of suspicious windows). A missing or malformed file
    raises DataError."""
    annotations = load_nlq_annotations(annotations_path)
    predictions = read_predictions(predictions_path)
    metrics, warnings = evaluate_nlq(predictions, annotations, return_warnings=True)
    counts, window_warnings = prediction_coverage(predictions, annotations)
    metrics = {**metrics, **counts}
    warnings = [*warnings, *window_warnings]
    for warning in warnings:
        logger.warning("%s: %s", predictions_path, warning)
    out = Path(output_dir) if output_dir is not None else Path(predictions_path).resolve().parent
    atomic_write_json(out / METRICS_FILE, {**metrics, "warnings": warnings,
                                           "annotations": str(annotations_path),
                                           "predictions": str(predictions_path)}, indent=2)
    logger.info("wrote %s", out / METRICS_FILE)
    return metrics


def format_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Human-readable lines, one per metric; first a line saying so when the predictions
    file does not answer every query of the split exactly once."""
    incomplete = coverage_line(metrics)
    lines = [incomplete] if incomplete else []
    for key, value in metrics.items():
        if isinstance(value, bool):
            lines.append(f"{key:<14s} {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key:<14s} {value:d}")
        else:
            lines.append(f"{key:<14s} {value:8.2f} %")
    return lines


def default_annotations_path(data_root: str | os.PathLike, split: str) -> Path:
    """The Ego4D download layout: ``ROOT/v2/annotations/nlq_<split>.json`` (docs/data.md)."""
    return Path(data_root) / "v2" / "annotations" / f"nlq_{split}.json"


def score_from_config(cfg: Any) -> dict:
    """Scoring mode of ``tools/eval_nlq.py``: ``predictions`` (required), ``annotations``
    (default: :func:`default_annotations_path` of ``data.root`` and ``split``),
    ``output_dir`` (default: the predictions file's folder). The config is saved beside
    the metrics as ``eval_nlq_config.yaml``."""
    from omegaconf import OmegaConf

    if cfg.predictions is None:
        raise DataError("scoring needs predictions=<challenge-format predictions file>")
    annotations = cfg.annotations or default_annotations_path(cfg.data.root, cfg.split)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.predictions).resolve().parent
    metrics = score_predictions_file(annotations, cfg.predictions, output_dir)
    atomic_write_text(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    return metrics
