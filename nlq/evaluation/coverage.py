"""How much of a split an NLQ predictions file covers, and how sound its windows are.

The official metric averages over the SUBMITTED predictions (:mod:`nlq.evaluation.metrics`
keeps that number exact), so a file answering only the easy half of a split, or one query
twice, scores as if it were complete. :func:`prediction_coverage` says so: ``num_queries``
(GT queries with text and a window: what a complete file answers), ``num_answered``
(distinct ones answered), ``num_duplicates`` (extra predictions of an answered query) and
``complete`` (every query answered exactly once). It also counts predictions whose windows
look wrong: a window that ends before it starts, fewer than 5 windows, a window outside
the clip ``[0, clip duration]``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from nlq.data.annotations import NLQAnnotationFile, NLQKey

NUM_WINDOWS = 5  # windows per prediction the challenge asks for (R@5)
TOLERANCE_SEC = 1e-3  # windows this far past the clip's ends still count as inside
MAX_EXAMPLES = 5


def _key(pred: Any) -> NLQKey | None:
    try:
        return NLQKey(str(pred["clip_uid"]), str(pred["annotation_uid"]), int(pred["query_idx"]))
    except (KeyError, TypeError, ValueError):
        return None


def _windows(pred: Mapping) -> list[tuple[float, float]]:
    out = []
    for window in pred.get("predicted_times") or []:
        try:
            out.append((float(window[0]), float(window[1])))
        except (TypeError, ValueError, IndexError):
            continue
    return out


def _names(keys: Sequence[NLQKey]) -> str:
    shown = ", ".join(f"({k.clip_uid}, {k.annotation_uid}, {k.query_idx})" for k in keys[:MAX_EXAMPLES])
    return shown + (f" and {len(keys) - MAX_EXAMPLES} more" if len(keys) > MAX_EXAMPLES else "")


def prediction_coverage(predictions: Sequence[Mapping], annotations: NLQAnnotationFile) -> tuple[dict, list[str]]:
    """(counts, warning lines) of ``predictions`` (challenge ``results`` entries) against the
    split. Counts: ``num_queries``, ``num_answered``, ``num_duplicates``, ``complete`` and the
    numbers of predictions with a window ending before it starts
    (``num_windows_start_after_end``), fewer than 5 windows (``num_fewer_than_5_windows``)
    or a window outside the clip (``num_windows_outside_clip``)."""
    expected = {q.key for q in annotations.queries() if q.window is not None}
    durations = {clip.clip_uid: clip.duration for _, clip in annotations.clips()}
    seen: dict[NLQKey, int] = {}
    reversed_, few, outside = [], [], []
    for pred in predictions:
        key = _key(pred)
        if key is None:
            continue
        if key in expected:
            seen[key] = seen.get(key, 0) + 1
        windows = _windows(pred)
        if any(s > e for s, e in windows):
            reversed_.append(key)
        if len(windows) < NUM_WINDOWS:
            few.append(key)
        duration = durations.get(key.clip_uid)
        if duration is not None and any(min(s, e) < -TOLERANCE_SEC or max(s, e) > duration + TOLERANCE_SEC
                                        for s, e in windows):
            outside.append(key)
    duplicates = sum(n - 1 for n in seen.values())
    counts = {"num_queries": len(expected), "num_answered": len(seen), "num_duplicates": duplicates,
              "complete": len(seen) == len(expected) and duplicates == 0,
              "num_windows_start_after_end": len(reversed_), "num_fewer_than_5_windows": len(few),
              "num_windows_outside_clip": len(outside)}
    warnings = []  # missing and duplicated queries are named by evaluate_nlq's warnings
    if reversed_:
        warnings.append(f"{len(reversed_)} predictions have a window ending before it starts: {_names(reversed_)}")
    if few:
        warnings.append(f"{len(few)} predictions have fewer than {NUM_WINDOWS} windows (R@{NUM_WINDOWS} "
                        f"counts only what is there): {_names(few)}")
    if outside:
        warnings.append(f"{len(outside)} predictions have a window outside the clip: {_names(outside)}")
    return counts, warnings


def coverage_line(metrics: Mapping) -> str | None:
    """The summary line of an incomplete predictions file (None when complete or unknown)."""
    if "complete" not in metrics or metrics["complete"]:
        return None
    return (f"INCOMPLETE predictions: {metrics['num_answered']} of {metrics['num_queries']} queries answered, "
            f"{metrics['num_duplicates']} duplicates; metrics average over the {metrics.get('num_evaluated', '?')} "
            f"submitted predictions (complete: false)")
