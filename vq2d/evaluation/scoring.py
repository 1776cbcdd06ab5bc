"""Score a VQ2D predictions file (challenge format) against an annotation file, exactly as
the official ``evaluate_vq.py`` does on every file it accepts (docs/vq2d.md#metrics).

STYLE 5: predictions are always written to a file first and that file is scored; scoring
mode and checkpoint mode both call :func:`score_submission`, so the ground-truth rules
(:mod:`vq2d.evaluation.ground_truth`) are the same in both. Outputs, all written
atomically into ``output_dir`` (default: the predictions file's folder):

* ``metrics.json``: the metrics of :func:`vq2d.evaluation.metrics.summarize`, then
  ``num_dropped`` / ``dropped_queries`` (name -> reason: GT the official code would
  fail on or leave out), ``num_problems`` (problems found in the predictions file),
  ``num_unreadable`` / ``unreadable_queries`` (queries scored empty because their
  prediction could not be read, e.g. a non-contiguous track), ``warnings`` (counted
  suspicious boxes) and the breakdowns ``by_size`` and ``by_length``
  (:mod:`vq2d.evaluation.breakdown`);
* ``per_query.csv``: one row per scored query;
* ``problems.txt`` / ``warnings.txt``: every problem and warning, each naming its query.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from episodic.config import save_config
from episodic.errors import DataError
from episodic.io import atomic_open, atomic_write_json, atomic_write_text, read_json
from vq2d.data.annotations import QueryKey, VQAnnotationFile, parse_vq_annotations
from vq2d.evaluation.box_checks import AFTER_QUERY_FRAME, OUTSIDE_FRAME, box_warnings
from vq2d.evaluation.breakdown import LENGTH_RANGES, SIZE_RANGES, grouped_metrics, length_group, size_group
from vq2d.evaluation.ground_truth import GroundTruth, official_ground_truth, query_name
from vq2d.evaluation.metrics import QueryResult, per_query_results, summarize
from vq2d.evaluation.predictions import SubmissionReader
from vq2d.evaluation.tracks import track_arrays

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_QUERY_FILE = "per_query.csv"
PROBLEMS_FILE = "problems.txt"
WARNINGS_FILE = "warnings.txt"
CONFIG_FILE = "eval_vq2d_config.yaml"  # not config.yaml: output_dir may be a training run's folder
MAX_LOGGED_PROBLEMS = 20
MAX_NAMED = 50  # unreadable queries named in metrics.json (all are in problems.txt)
BOX_WARNING_KINDS = (AFTER_QUERY_FRAME, OUTSIDE_FRAME)


@dataclass
class Scores:
    """Everything scoring a submission finds. metrics: see module docstring; results:
    QueryKey -> QueryResult of the scored queries (file order); problems / warnings: one
    message each; box_warnings: QueryKey -> {kind: boxes}; gt: the ground truth read."""

    metrics: dict
    results: dict[QueryKey, QueryResult]
    problems: list[str]
    warnings: list[str]
    box_warnings: dict[QueryKey, dict[str, int]]
    gt: GroundTruth


def load_annotations_for_scoring(path: str | os.PathLike) -> tuple[VQAnnotationFile, dict]:
    """(the annotation file, loaded leniently: a malformed query set never aborts scoring;
    the raw decoded JSON, which the ground truth is read from)."""
    raw = read_json(path)
    return parse_vq_annotations(raw, str(path), strict=False), raw


def _warning_summary(box_warn: Mapping[QueryKey, Mapping[str, int]], file_warnings: int) -> dict:
    out = {}
    for kind in BOX_WARNING_KINDS:
        hits = [w[kind] for w in box_warn.values() if kind in w]
        out[kind] = {"boxes": int(sum(hits)), "queries": len(hits)}
    out["file"] = file_warnings
    return out


def score_submission(sub: Any, annotations: VQAnnotationFile, raw: Mapping) -> Scores:
    """Score a decoded submission against ``annotations`` (``raw``: the same file's
    decoded JSON). Dropped GT queries are left out of every metric and named."""
    gt = official_ground_truth(raw, annotations.path or "<annotations>")
    reader = SubmissionReader(annotations, gt.valid)
    reader.read(sub)
    problems, warnings = reader.problems, reader.warnings
    preds = {k: reader.tracks[k] for k in gt.tracks}
    results = per_query_results(preds, gt.tracks)
    box_warn = {}
    for key, track in preds.items():
        frames, boxes = track_arrays(track.boxes, allow_repeats=True)
        found = box_warnings(np.column_stack([frames, boxes]), gt.query_frames[key], gt.frame_sizes[key])
        if found:
            box_warn[key] = found
            warnings.append(f"query {query_name(key)}: " + ", ".join(f"{n} {k}" for k, n in found.items()))
    metrics = summarize(results)
    metrics["num_dropped"] = len(gt.dropped)
    metrics["dropped_queries"] = dict(gt.dropped)
    metrics["num_problems"] = len(problems)
    unreadable = list(dict.fromkeys(k for k in reader.unreadable if k in gt.tracks))
    metrics["num_unreadable"] = len(unreadable)
    metrics["unreadable_queries"] = [query_name(k) for k in unreadable[:MAX_NAMED]] + (
        [f"... and {len(unreadable) - MAX_NAMED} more (see {PROBLEMS_FILE})"] if len(unreadable) > MAX_NAMED else [])
    metrics["warnings"] = _warning_summary(box_warn, len(warnings) - len(box_warn))
    metrics["by_size"] = grouped_metrics(results, {k: size_group(gt.areas[k]) for k in results},
                                         tuple(SIZE_RANGES))
    metrics["by_length"] = grouped_metrics(results, {k: length_group(len(gt.tracks[k])) for k in results},
                                           tuple(LENGTH_RANGES))
    return Scores(metrics, results, problems, warnings, box_warn, gt)


def write_per_query(path: str | os.PathLike, scores: Scores,
                    extra: Mapping[QueryKey, Mapping[str, Any]] | None = None) -> None:
    """One CSV row per scored query: name, clip_uid, annotation_index, query_set, tiou,
    stiou, recovered_frames, gt_frames, score, empty, gt_area, size, length, the box
    warning counts, then the columns of ``extra`` (QueryKey -> {column: value}, e.g. the
    timings of checkpoint mode; the first row's keys name the columns)."""
    extra = extra or {}
    extra_cols = list(next(iter(extra.values()), {}))
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "clip_uid", "annotation_index", "query_set", "tiou", "stiou",
                         "recovered_frames", "gt_frames", "score", "empty", "gt_area", "size", "length",
                         *BOX_WARNING_KINDS, *extra_cols])
        for key, r in scores.results.items():
            warn = scores.box_warnings.get(key, {})
            more = extra.get(key, {})
            writer.writerow([query_name(key), key.clip_uid, key.annotation_index, key.query_set,
                             f"{r.tiou:.6f}", f"{r.stiou:.6f}", r.recovered_frames, r.gt_frames, repr(r.score),
                             int(r.empty), f"{scores.gt.areas[key]:g}", size_group(scores.gt.areas[key]),
                             length_group(r.gt_frames), *(warn.get(k, 0) for k in BOX_WARNING_KINDS),
                             *(more.get(c, "") for c in extra_cols)])


def _write_messages(out: Path, name: str, messages: list[str], what: str, source: str) -> None:
    if messages:
        logger.warning("%s: %d %s", source, len(messages), what)
        for m in messages[:MAX_LOGGED_PROBLEMS]:
            logger.warning("  %s", m)
        if len(messages) > MAX_LOGGED_PROBLEMS:
            logger.warning("  ... %d more in %s", len(messages) - MAX_LOGGED_PROBLEMS, out / name)
        atomic_write_text(out / name, "\n".join(messages) + "\n")
    else:
        (out / name).unlink(missing_ok=True)  # a stale list from an earlier run


def write_scores(out: Path, scores: Scores, source: str,
                 extra: Mapping[QueryKey, Mapping[str, Any]] | None = None) -> None:
    """problems.txt, warnings.txt, per_query.csv (``extra`` columns) and the log lines
    naming the dropped queries; metrics.json is the caller's (it may add keys)."""
    _write_messages(out, PROBLEMS_FILE, scores.problems,
                    "problems; the queries concerned are scored as empty tracks", source)
    _write_messages(out, WARNINGS_FILE, scores.warnings, "warnings (scored as they are)", source)
    for name, reason in scores.gt.dropped.items():
        logger.warning("query %s dropped from the count: %s", name, reason)
    write_per_query(out / PER_QUERY_FILE, scores, extra)


def score_predictions_file(annotations_path: str | os.PathLike, predictions_path: str | os.PathLike,
                           output_dir: str | os.PathLike | None = None) -> dict:
    """Load both files, score, write the outputs (see module docstring) and return the
    metrics. Problems in the predictions file are logged and never stop the scoring; a
    missing or malformed file raises DataError."""
    annotations, raw = load_annotations_for_scoring(annotations_path)
    sub = read_json(predictions_path)
    scores = score_submission(sub, annotations, raw)
    out = Path(output_dir) if output_dir is not None else Path(predictions_path).resolve().parent
    write_scores(out, scores, str(predictions_path))
    atomic_write_json(out / METRICS_FILE, scores.metrics, indent=2)
    logger.info("wrote %s and %s", out / METRICS_FILE, out / PER_QUERY_FILE)
    return scores.metrics


def _metric_line(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{key:<20s} {value:d}"
    unit = "" if "AP" in key else " %"
    return f"{key:<20s} {value:8.4f}{unit}"


def format_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Human-readable lines: one per metric (AP as a fraction, the rest in percent), the
    dropped queries by name, the warning counts, one line per size / length group."""
    lines = []
    for key, value in metrics.items():
        if key == "dropped_queries":
            for name, reason in value.items():
                lines.append(f"  dropped {name}: {reason}")
        elif key == "warnings":
            lines.append("warnings             " + ", ".join(
                f"{k}: {v['boxes']} boxes in {v['queries']} queries" if isinstance(v, dict) else f"{k}: {v}"
                for k, v in value.items()))
        elif key in ("by_size", "by_length"):
            for group, m in value.items():
                lines.append(f"{key}/{group:<10s} " + "  ".join(
                    f"{k} {m[k]:.4f}" for k in ("stAP@0.25", "tAP@0.25", "success", "recovery"))
                    + f"  ({m['num_queries']} queries)")
        elif isinstance(value, Mapping):
            lines.append(f"{key:<20s} " + ", ".join(f"{k}: {v}" for k, v in value.items()))
        elif isinstance(value, (int, float)):
            lines.append(_metric_line(key, value))
        else:
            lines.append(f"{key:<20s} {value}")
    return lines


def default_annotations_path(data_root: str | os.PathLike, split: str) -> Path:
    """The Ego4D download layout: ``ROOT/v2/annotations/vq_<split>.json`` (docs/data.md#vq2d-annotations)."""
    return Path(data_root) / "v2" / "annotations" / f"vq_{split}.json"


def score_from_config(cfg: Any) -> dict:
    """Scoring mode of ``tools/eval_vq2d.py``: config keys ``predictions`` (required),
    ``annotations`` (default: :func:`default_annotations_path` of ``data.root`` and
    ``split``), ``output_dir`` (default: the predictions file's folder). The config is
    saved beside the metrics as ``eval_vq2d_config.yaml``."""
    if cfg.predictions is None:
        raise DataError("scoring needs predictions=<challenge-format predictions file>")
    annotations = cfg.annotations or default_annotations_path(cfg.data.root, cfg.split)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.predictions).resolve().parent
    metrics = score_predictions_file(annotations, cfg.predictions, output_dir)
    save_config(cfg, output_dir, name=CONFIG_FILE)
    return metrics

