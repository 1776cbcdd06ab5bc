"""Ego4D NLQ metric (docs/nlq.md#metrics), pure numpy.

Recall@k at IoU > t (strict) for k in (1, 5), t in (0.3, 0.5): a prediction counts when any
of its first k windows has IoU > t with the GT window; IoU = intersection / (max end - min
start); mIoU is the mean IoU of the top-1 window. All are averaged over the SUBMITTED
predictions that match a GT query (like the official ``evaluate_ego4d_nlq.py``; a
duplicated prediction counts twice) and reported in percent.

Differences from the official script, which asserts / crashes instead: predictions of
unknown queries (or queries without a GT window) are skipped with a warning; a window of
zero union (both windows the same point) has IoU 0, not NaN; no prediction at all gives 0.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from episodic.errors import DataError
from nlq.data.annotations import NLQAnnotationFile, NLQKey, parse_nlq_annotations

THRESHOLDS = (0.3, 0.5)
TOPK = (1, 5)
MAX_EXAMPLES = 5  # queries named in one warning line


def window_iou(pred: Any, gt: Any) -> np.ndarray:
    """IoU of windows ``pred`` [P, 2] (or [2]) with one GT window ``gt`` [2] -> [P] (or scalar).

    IoU = max(0, min(ends) - max(starts)) / (max(ends) - min(starts)); 0 when that is 0.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    inter = np.maximum(0.0, np.minimum(pred[..., 1], gt[1]) - np.maximum(pred[..., 0], gt[0]))
    union = np.maximum(pred[..., 1], gt[1]) - np.minimum(pred[..., 0], gt[0])
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou if iou.ndim else float(iou)


def metric_names(thresholds: Iterable[float] = THRESHOLDS, topk: Iterable[int] = TOPK) -> list[str]:
    """``R@{k}_IoU{t}`` for every k then t (``R@1_IoU0.3, R@1_IoU0.5, R@5_IoU0.3, ...``), then mIoU."""
    return [f"R@{k}_IoU{t:g}" for k in topk for t in thresholds] + ["mIoU"]


def _ground_truth_windows(ground_truth: NLQAnnotationFile | Mapping) -> tuple[dict, dict, int]:
    """(key -> GT window for every language query with one, key -> has text, num language queries)."""
    if not isinstance(ground_truth, NLQAnnotationFile):
        ground_truth = parse_nlq_annotations(dict(ground_truth), "<ground truth>")
    windows, texted = {}, {}
    for _, clip in ground_truth.clips():
        for ann in clip.annotations:
            for idx, lq in enumerate(ann.language_queries):
                key = NLQKey(clip.clip_uid, ann.annotation_uid, idx)
                texted[key] = lq.query is not None
                if lq.window is not None:
                    windows[key] = lq.window
    return windows, texted, ground_truth.num_language_queries()


def _prediction_key(pred: Any, i: int) -> NLQKey:
    if not isinstance(pred, Mapping):
        raise DataError(f"predictions[{i}]: expected an object, got {type(pred).__name__}")
    try:
        return NLQKey(str(pred["clip_uid"]), str(pred["annotation_uid"]), int(pred["query_idx"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"predictions[{i}]: needs clip_uid, annotation_uid and an integer query_idx ({e!r})") from None


def _prediction_windows(pred: Mapping, i: int, key: NLQKey) -> np.ndarray:
    """predicted_times as [K, 2] float; a malformed value is an error naming the prediction."""
    times = pred.get("predicted_times")
    try:
        arr = np.asarray(times if times is not None else [], dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or (arr.size and (arr.ndim != 2 or arr.shape[1] != 2)) or not np.all(np.isfinite(arr)):
        raise DataError(f"predictions[{i}] ({key.clip_uid}, {key.annotation_uid}, {key.query_idx}): "
                        f"predicted_times must be a list of [start, end] numbers (got {times!r:.80})")
    return arr.reshape(-1, 2)


def _warn(kind: str, keys: list, total: int | None = None) -> str:
    shown = ", ".join(f"({k[0]}, {k[1]}, {k[2]})" for k in keys[:MAX_EXAMPLES])
    more = f" and {len(keys) - MAX_EXAMPLES} more" if len(keys) > MAX_EXAMPLES else ""
    return f"{len(keys)}{f' of {total}' if total is not None else ''} {kind}: {shown}{more}"


def evaluate_nlq(predictions: list[dict], ground_truth: NLQAnnotationFile | Mapping,
                 thresholds: Iterable[float] = THRESHOLDS, topk: Iterable[int] = TOPK,
                 return_warnings: bool = False) -> dict | tuple[dict, list[str]]:
    """Score ``predictions`` (challenge ``results`` entries: clip_uid, annotation_uid,
    query_idx, predicted_times [[s, e], ...] best first) against GT windows.

    Returns ``{"R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU"}`` (percent,
    for the default thresholds / topk) plus ``num_evaluated`` (predictions scored) and
    ``num_gt`` (language queries in the GT file); with ``return_warnings`` also a list of
    warnings (missing, duplicated, unknown or unscorable predictions).
    """
    thresholds, topk = tuple(float(t) for t in thresholds), tuple(int(k) for k in topk)
    gt_windows, texted, num_gt = _ground_truth_windows(ground_truth)
    hits = np.zeros((len(topk), len(thresholds)))
    iou_sum, evaluated = 0.0, 0
    seen: dict[NLQKey, int] = {}
    unknown, no_window, empty = [], [], []
    for i, pred in enumerate(predictions):
        key = _prediction_key(pred, i)
        windows = _prediction_windows(pred, i, key)
        if key not in texted:
            unknown.append(key)
            continue
        if key not in gt_windows:
            no_window.append(key)
            continue
        seen[key] = seen.get(key, 0) + 1
        evaluated += 1
        if len(windows) == 0:
            empty.append(key)
            continue
        iou = window_iou(windows, gt_windows[key])  # [K], best first
        for a, k in enumerate(topk):
            best = iou[:k].max()
            for b, t in enumerate(thresholds):
                hits[a, b] += best > t
        iou_sum += iou[0]
    denominator = max(evaluated, 1)
    metrics = {f"R@{k}_IoU{t:g}": 100.0 * hits[a, b] / denominator
               for a, k in enumerate(topk) for b, t in enumerate(thresholds)}
    metrics["mIoU"] = 100.0 * iou_sum / denominator
    metrics = {name: float(v) for name, v in metrics.items()}
    metrics.update(num_evaluated=evaluated, num_gt=num_gt)
    if not return_warnings:
        return metrics
    warnings = []
    if evaluated == 0:
        warnings.append("no prediction matched a GT query: all metrics are 0")
    missing = [k for k, has_text in texted.items() if has_text and k in gt_windows and k not in seen]
    if missing:
        warnings.append(_warn("GT queries have no prediction (they do not count)", missing,
                              sum(1 for k in gt_windows if texted[k])))
    duplicated = [k for k, n in seen.items() if n > 1]
    if duplicated:
        warnings.append(_warn("queries predicted more than once (each prediction counts)", duplicated))
    if unknown:
        warnings.append(_warn("predictions for queries not in the GT file (skipped)", unknown))
    if no_window:
        warnings.append(_warn("predictions for queries without a GT window (skipped)", no_window))
    if empty:
        warnings.append(_warn("predictions with no window (scored as misses)", empty))
    return metrics, warnings

