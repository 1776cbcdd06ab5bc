"""Ego4D NLQ metric (docs/nlq.md#metrics), pure numpy.

Recall@k at IoU > t (strict) for k in (1, 5), t in (0.3, 0.5): a prediction counts when any
of its first k windows has IoU > t with the GT window; IoU = intersection / (max end - min
start); mIoU is the mean IoU of the top-1 window. All are averaged over the SUBMITTED
predictions that match a GT query (like the official ``evaluate_ego4d_nlq.py``; a
duplicated prediction counts twice) and reported in percent.

MR@k (the NaQ paper's and the Ego4D 2023 challenge's headline number) is the mean of
R@k_IoU0.3 and R@k_IoU0.5, reported for every k when both thresholds are scored. Other k
(e.g. 3) and thresholds (e.g. 0.01) are options. :func:`evaluate_nlq_by_group` scores the
same predictions per query template or per object set (NaQ's long-tail analysis, see
:func:`object_set_groups`).

Differences from the official script, which asserts / crashes instead: predictions of
unknown queries (or queries without a GT window) are skipped with a warning; a window of
zero union (both windows the same point) has IoU 0, not NaN; no prediction at all gives 0.
"""
from __future__ import annotations

import string
from typing import Any, Iterable, Mapping

import numpy as np

from episodic.errors import DataError
from nlq.data.annotations import NLQAnnotationFile, NLQKey, parse_nlq_annotations

THRESHOLDS = (0.3, 0.5)
TOPK = (1, 5)
ALL_THRESHOLDS = (0.01, 0.3, 0.5)  # the options the papers report
ALL_TOPK = (1, 3, 5)
MR_THRESHOLDS = (0.3, 0.5)  # MR@k = mean of R@k over these IoU thresholds
# NaQ's object-related templates: queries whose slot_x names an object (evaluate_ego4d_nlq.py)
OBJECT_TEMPLATES = (
    "Objects: How many X’s? (quantity question)", "Objects: In what location did I see object X ?",
    "Objects: State of an object", "Objects: What X did I Y?", "Objects: What X is Y?",
    "Objects: What did I put in X?", "Objects: Where is my object X?",
    "Objects: Where is object X before / after event Y?", "Objects: Where is object X?",
    "Place: Where did I put X?")
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
    """``R@{k}_IoU{t}`` for every k then t (``R@1_IoU0.3, R@1_IoU0.5, R@5_IoU0.3, ...``), mIoU,
    then ``MR@{k}`` for every k when both :data:`MR_THRESHOLDS` are among ``thresholds``."""
    thresholds, topk = tuple(float(t) for t in thresholds), tuple(int(k) for k in topk)
    mean = [f"MR@{k}" for k in topk] if all(t in thresholds for t in MR_THRESHOLDS) else []
    return [f"R@{k}_IoU{t:g}" for k in topk for t in thresholds] + ["mIoU"] + mean


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

    Returns ``{"R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU", "MR@1", "MR@5"}``
    (percent, for the default thresholds / topk; MR@k when 0.3 and 0.5 are both scored) plus ``num_evaluated`` (predictions scored) and
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
    if all(t in thresholds for t in MR_THRESHOLDS):
        for k in topk:
            metrics[f"MR@{k}"] = float(np.mean([metrics[f"R@{k}_IoU{t:g}"] for t in MR_THRESHOLDS]))
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



# Breakdowns ---------------------------------------------------------------------------------
def _language_queries(ground_truth: NLQAnnotationFile | Mapping):
    """(key, language query) of every language query of the file."""
    if not isinstance(ground_truth, NLQAnnotationFile):
        ground_truth = parse_nlq_annotations(dict(ground_truth), "<ground truth>")
    for _, clip in ground_truth.clips():
        for ann in clip.annotations:
            for idx, lq in enumerate(ann.language_queries):
                yield NLQKey(clip.clip_uid, ann.annotation_uid, idx), lq


def template_groups(ground_truth: NLQAnnotationFile | Mapping) -> dict[NLQKey, str]:
    """Query key -> its ``template`` (queries without one are left out)."""
    return {key: lq.template for key, lq in _language_queries(ground_truth) if lq.template}


def normalize_object(name: str) -> str:
    """NaQ's object-name normalisation: strip, drop punctuation, lower-case."""
    return name.strip().translate(str.maketrans("", "", string.punctuation)).lower()


def object_set_groups(ground_truth: NLQAnnotationFile | Mapping,
                      object_sets: Mapping[str, Iterable[str]]) -> dict[NLQKey, str]:
    """Query key -> the name of the first object set holding its object (NaQ's long-tail
    analysis: e.g. low / mid / high-shot objects by their training frequency).

    Only queries of :data:`OBJECT_TEMPLATES` with a ``slot_x`` count; the object is
    ``normalize_object(slot_x)`` and so are the sets' names.
    """
    sets = {name: {normalize_object(o) for o in objects} for name, objects in object_sets.items()}
    out = {}
    for key, lq in _language_queries(ground_truth):
        slot = lq.extra.get("slot_x")
        if lq.template not in OBJECT_TEMPLATES or not isinstance(slot, str):
            continue
        obj = normalize_object(slot)
        for name, objects in sets.items():
            if obj in objects:
                out[key] = name
                break
    return out


def evaluate_nlq_by_group(predictions: list[dict], ground_truth: NLQAnnotationFile | Mapping,
                          groups: Mapping[NLQKey, str], thresholds: Iterable[float] = THRESHOLDS,
                          topk: Iterable[int] = TOPK) -> dict[str, dict]:
    """:func:`evaluate_nlq` of the predictions of each group (``groups``: query key -> group
    name, e.g. :func:`template_groups`); predictions of queries in no group are left out.
    Returns group -> metrics (``num_evaluated``: that group's scored predictions), groups in
    order of decreasing size."""
    if not isinstance(ground_truth, NLQAnnotationFile):
        ground_truth = parse_nlq_annotations(dict(ground_truth), "<ground truth>")
    by_group: dict[str, list[dict]] = {}
    for i, pred in enumerate(predictions):
        group = groups.get(_prediction_key(pred, i))
        if group is not None:
            by_group.setdefault(group, []).append(pred)
    out = {}
    for group, preds in sorted(by_group.items(), key=lambda item: -len(item[1])):
        metrics = evaluate_nlq(preds, ground_truth, thresholds, topk)
        metrics.pop("num_gt")
        out[group] = metrics
    return out
