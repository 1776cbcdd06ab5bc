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
from episodic.io import atomic_write_json, atomic_write_text, read_json
from nlq.data.annotations import load_nlq_annotations
from nlq.evaluation.coverage import coverage_line, prediction_coverage
from nlq.evaluation.metrics import (THRESHOLDS, TOPK, evaluate_nlq, evaluate_nlq_by_group, object_set_groups,
                                    template_groups)
from nlq.evaluation.submission import read_predictions

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "eval_nlq_config.yaml"  # not config.yaml: output_dir may be a training run's folder
BREAKDOWNS = ("template", "object")  # per query template | per object set (needs object_sets)


def read_object_sets(path: str | os.PathLike) -> dict[str, list[str]]:
    """A JSON file ``{set name: [object names]}`` (e.g. NaQ's low / mid / high-shot objects)."""
    sets = read_json(path)
    if not isinstance(sets, dict) or not all(isinstance(v, list) and all(isinstance(o, str) for o in v)
                                             for v in sets.values()):
        raise DataError(f"{path}: object sets must be a JSON object {{set name: [object names]}}")
    return sets


def _log_breakdown(name: str, results: Mapping[str, dict], topk) -> None:
    for group, m in results.items():
        recalls = " ".join(f"MR@{k} {m[f'MR@{k}']:.2f}" for k in topk if f"MR@{k}" in m)
        logger.info("%s %-55.55s n=%-5d R@1_IoU0.3 %.2f %s", name, group, m["num_evaluated"], m.get("R@1_IoU0.3", 0.0),
                    recalls)


def score_predictions_file(annotations_path: str | os.PathLike, predictions_path: str | os.PathLike,
                           output_dir: str | os.PathLike | None = None, thresholds=THRESHOLDS, topk=TOPK,
                           breakdown=(), object_sets: str | os.PathLike | None = None,
                           extra: Mapping[str, Any] | None = None) -> dict:
    """Load both files, score (:func:`nlq.evaluation.metrics.evaluate_nlq`), log the
    warnings, write ``metrics.json`` and return the metrics (R@k_IoUt, MR@k and mIoU in
    percent, num_evaluated, num_gt) and how much of the split the file covers
    (:func:`nlq.evaluation.coverage.prediction_coverage`: num_queries, num_answered,
    num_duplicates, complete, counts of suspicious windows). ``breakdown``: any of :data:`BREAKDOWNS`; their
    per-group metrics go to metrics.json (``by_template``, ``by_object_set``) and the log,
    not into the returned dict. ``extra``: more keys for both (checkpoint mode's failures).
    A missing or malformed file raises DataError."""
    unknown = sorted(set(breakdown) - set(BREAKDOWNS))
    if unknown:
        raise DataError(f"unknown breakdown(s) {unknown}; known: {list(BREAKDOWNS)}")
    if "object" in breakdown and object_sets is None:
        raise DataError("breakdown 'object' needs object_sets=<JSON file {set name: [objects]}>")
    annotations = load_nlq_annotations(annotations_path)
    predictions = read_predictions(predictions_path)
    metrics, warnings = evaluate_nlq(predictions, annotations, thresholds, topk, return_warnings=True)
    counts, window_warnings = prediction_coverage(predictions, annotations)
    metrics = {**metrics, **counts, **(extra or {})}
    warnings = [*warnings, *window_warnings]
    for warning in warnings:
        logger.warning("%s: %s", predictions_path, warning)
    groups = {}
    if "template" in breakdown:
        groups["by_template"] = evaluate_nlq_by_group(predictions, annotations, template_groups(annotations),
                                                      thresholds, topk)
    if "object" in breakdown:
        groups["by_object_set"] = evaluate_nlq_by_group(
            predictions, annotations, object_set_groups(annotations, read_object_sets(object_sets)), thresholds, topk)
    for name, results in groups.items():
        _log_breakdown(name, results, topk)
    out = Path(output_dir) if output_dir is not None else Path(predictions_path).resolve().parent
    atomic_write_json(out / METRICS_FILE, {**metrics, **groups, "warnings": warnings,
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


def score_options(cfg: Any) -> dict:
    """The scoring options of an eval config: thresholds, topk, breakdown, object_sets."""
    return {"thresholds": tuple(float(t) for t in cfg.get("thresholds", THRESHOLDS)),
            "topk": tuple(int(k) for k in cfg.get("topk", TOPK)),
            "breakdown": tuple(cfg.get("breakdown") or ()), "object_sets": cfg.get("object_sets")}


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
    metrics = score_predictions_file(annotations, cfg.predictions, output_dir, **score_options(cfg))
    atomic_write_text(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    return metrics
