"""Score a VQ2D predictions file (challenge format) against an annotation file.

STYLE 5: predictions are always written to a file first and that file is scored. Outputs,
all written atomically into ``output_dir`` (default: the predictions file's folder):

* ``metrics.json``: the metrics of :func:`vq2d.evaluation.metrics.evaluate_tracks`;
* ``per_query.csv``: one row per valid query set (name, tIoU, stIoU, recovered frames,
  GT frames, score, empty);
* ``problems.txt``: what was wrong in the predictions file, when anything was (those
  queries are scored as empty tracks).
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from episodic.errors import DataError
from episodic.config import save_config
from episodic.io import atomic_open, atomic_write_json, atomic_write_text, read_json
from vq2d.data.annotations import VQAnnotationFile, VQQuery, load_vq_annotations
from vq2d.evaluation.metrics import QueryResult, per_query_results, summarize
from vq2d.evaluation.predictions import read_submission

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_QUERY_FILE = "per_query.csv"
PROBLEMS_FILE = "problems.txt"
CONFIG_FILE = "eval_vq2d_config.yaml"  # not config.yaml: output_dir may be a training run's folder
MAX_LOGGED_PROBLEMS = 20


def ground_truth_tracks(annotations: VQAnnotationFile) -> dict:
    """QueryKey -> GT response track (tuple of BBox), in file order. Raises DataError when
    a valid query set has no response track (e.g. a test_unannotated file)."""
    gts = {}
    for q in annotations.queries():
        if q.response_track is None:
            raise DataError(f"{annotations.path}: query {q.name} has no response_track; only "
                            f"annotated splits (train/val) can be scored")
        gts[q.key] = q.response_track
    return gts


def score_submission(sub: Any, annotations: VQAnnotationFile
                     ) -> tuple[dict, dict[Any, QueryResult], list[str]]:
    """Score a decoded submission. Returns (metrics, QueryKey -> QueryResult, problems)."""
    gts = ground_truth_tracks(annotations)
    tracks, problems = read_submission(sub, annotations)
    results = per_query_results(tracks, gts)
    return summarize(results), results, problems


def write_per_query(path: str | os.PathLike, queries: list[VQQuery],
                    results: Mapping[Any, QueryResult]) -> None:
    """One CSV row per query: name, clip_uid, annotation_index, query_set, tiou, stiou,
    recovered_frames, gt_frames, score, empty."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "clip_uid", "annotation_index", "query_set", "tiou", "stiou",
                         "recovered_frames", "gt_frames", "score", "empty"])
        for q in queries:
            r = results[q.key]
            writer.writerow([q.name, q.clip_uid, q.annotation_index, q.query_set, f"{r.tiou:.6f}",
                             f"{r.stiou:.6f}", r.recovered_frames, r.gt_frames, repr(r.score),
                             int(r.empty)])


def score_predictions_file(annotations_path: str | os.PathLike, predictions_path: str | os.PathLike,
                           output_dir: str | os.PathLike | None = None) -> dict:
    """Load both files, score, write the outputs (see module docstring) and return the
    metrics. Problems in the predictions file are logged and never stop the scoring; a
    missing or malformed file raises DataError."""
    annotations = load_vq_annotations(annotations_path)
    sub = read_json(predictions_path)
    metrics, results, problems = score_submission(sub, annotations)
    out = Path(output_dir) if output_dir is not None else Path(predictions_path).resolve().parent
    if problems:
        logger.warning("%s: %d problems; the queries concerned are scored as empty tracks",
                       predictions_path, len(problems))
        for p in problems[:MAX_LOGGED_PROBLEMS]:
            logger.warning("  %s", p)
        if len(problems) > MAX_LOGGED_PROBLEMS:
            logger.warning("  ... %d more in %s", len(problems) - MAX_LOGGED_PROBLEMS, out / PROBLEMS_FILE)
        atomic_write_text(out / PROBLEMS_FILE, "\n".join(problems) + "\n")
    else:
        (out / PROBLEMS_FILE).unlink(missing_ok=True)  # a stale list from an earlier run
    write_per_query(out / PER_QUERY_FILE, annotations.queries(), results)
    atomic_write_json(out / METRICS_FILE, metrics, indent=2)
    logger.info("wrote %s and %s", out / METRICS_FILE, out / PER_QUERY_FILE)
    return metrics


def format_metrics(metrics: Mapping[str, float]) -> list[str]:
    """Human-readable lines, one per metric (AP as a fraction, the rest in percent)."""
    lines = []
    for key, value in metrics.items():
        if key == "num_queries":
            lines.append(f"{key:<20s} {value:d}")
        else:
            unit = "" if "AP" in key else " %"
            lines.append(f"{key:<20s} {value:8.4f}{unit}")
    return lines


def default_annotations_path(data_root: str | os.PathLike, split: str) -> Path:
    """The Ego4D download layout: ``ROOT/v2/annotations/vq_<split>.json`` (docs/data.md)."""
    return Path(data_root) / "v2" / "annotations" / f"vq_{split}.json"


def score_from_config(cfg: Any) -> dict:
    """Scoring mode of ``tools/eval_vq2d.py``: config keys ``predictions`` (required),
    ``annotations`` (default: :func:`default_annotations_path` of ``data.root`` and
    ``split``), ``output_dir`` (default: the predictions file's folder). The config is
    saved beside the metrics as ``eval_vq2d_config.yaml``."""
    from omegaconf import OmegaConf

    if cfg.predictions is None:
        raise DataError("scoring needs predictions=<challenge-format predictions file>")
    annotations = cfg.annotations or default_annotations_path(cfg.data.root, cfg.split)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.predictions).resolve().parent
    metrics = score_predictions_file(annotations, cfg.predictions, output_dir)
    save_config(cfg, output_dir, name=CONFIG_FILE)
    return metrics

