"""VQ2D metrics: tAP, stAP, success, recovery, search efficiency (docs/vq2d.md#metrics).

Pure numpy over plain data, equal to the official Ego4D VQ2D evaluation
(EGO4D/episodic-memory ``VQ2D/vq2d/metrics``) on every track it accepts:

* Boxes are taken as they are: floats, negative, beyond the frame, even flipped
  (x2 < x1: a negative area, which the official volume sums as it is).
* Tracks are sorted by frame (stable). A frame given twice keeps the official reading: the
  volume sums every box, the last box of a frame is the one matched on that frame.
* tIoU on inclusive frame intervals ``[first, last]`` of the two tracks (an empty track is
  the interval ``[0, -1]``).
* stIoU: summed per-frame box intersections (summed one GT box after the other, as the
  official loop does) over (predicted volume + GT volume - intersection); a box's area is
  ``(x2 - x1) * (y2 - y1)`` (no +1).
* tAP / stAP: predictions ranked by score the way the official code ranks them
  (``np.argsort(scores)[::-1]``: ascending sort, then reversed, so among equal scores the
  later query comes first wherever numpy's sort keeps equal items in order; the scores
  keep their number type); TP unless IoU < threshold; npos = number of queries; VOC-2011
  all-point interpolated AP. Reported at 0.25 and as the mean over 0.25, 0.5, 0.75, 0.95.
* success: % of queries with stIoU >= 0.05.
* recovery: % of all GT boxes (pooled over queries) whose frame's predicted box has IoU
  >= 0.5 with the GT box.
* search efficiency: mean over queries of 100 * (1 - frames accessed / query frame).

Where the official code divides by zero (an stIoU or box IoU whose union is 0) it raises;
here that overlap is 0.0. An empty predicted track is allowed (IoU 0, a false positive at
its score); a missing prediction counts as an empty track with score 0.0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from vq2d.evaluation.tracks import PredictedTrack, track_arrays

AP_THRESHOLDS = (0.25, 0.5, 0.75, 0.95)
SUCCESS_STIOU = 0.05
RECOVERY_IOU = 0.5
METRIC_KEYS = ("stAP@0.25", "stAP", "tAP@0.25", "tAP", "success", "recovery")


# Per-query overlaps -------------------------------------------------------------------------
def _arrays(track: Any) -> tuple[np.ndarray, np.ndarray]:
    return track_arrays(track, allow_repeats=True)


def _frame_numbers(frames: Any) -> np.ndarray:
    """Frame numbers ``[N]`` of a track (any spelling) or of a plain sequence of ints."""
    if frames is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(frames, (PredictedTrack, Mapping)) or (
            len(frames) > 0 and hasattr(frames[0], "frame_number")):
        return _arrays(frames)[0]
    arr = np.asarray(frames)
    if arr.ndim == 2:
        return _arrays(arr)[0]
    return arr.astype(np.int64).reshape(-1)


def temporal_iou(pred_frames: Any, gt_frames: Any) -> float:
    """IoU of the inclusive intervals ``[min, max]`` spanned by two sets of frames.

    Each argument is a track (see :mod:`vq2d.evaluation.tracks`) or a sequence of frame
    numbers (``(start, end)`` works too). Empty -> 0.0."""
    p, g = _frame_numbers(pred_frames), _frame_numbers(gt_frames)
    if p.size == 0 or g.size == 0:
        return 0.0
    ps, pe, gs, ge = int(p.min()), int(p.max()), int(g.min()), int(g.max())
    inter = max(min(pe, ge) - max(ps, gs) + 1, 0)
    union = (pe - ps + 1) + (ge - gs + 1) - inter
    return inter / union


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """``boxes: [N, 4]`` (x1, y1, x2, y2) -> areas ``[N]``, ``(x2 - x1) * (y2 - y1)``
    (negative for a flipped box, as the official area)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise intersection areas of ``a: [N, 4]`` and ``b: [N, 4]`` -> ``[N]``."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    return w * h


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box: [4]`` with each of ``boxes: [N, 4]`` (xyxy) -> ``[N]``; 0 where the union is 0."""
    box = np.asarray(box, dtype=np.float64).reshape(1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter = box_intersections(np.broadcast_to(box, boxes.shape), boxes)
    union = box_areas(box) + box_areas(boxes) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def sequential_sum(values: np.ndarray) -> float:
    """Left-to-right sum of ``values: [N]`` (the official Python loop's rounding; numpy's
    ``sum`` adds pairwise)."""
    return float(np.cumsum(values)[-1]) if len(values) else 0.0


def _last_box_per_frame(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For frames ``[N]`` sorted ascending: (distinct frames ``[U]``, index ``[U]`` of the
    last row of each) -- the box a ``{fno: box}`` dict keeps."""
    distinct, first_from_end = np.unique(frames[::-1], return_index=True)
    return distinct, len(frames) - 1 - first_from_end


def _matched_rows(pred_frames: np.ndarray, gt_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each GT row: whether the prediction has a box on its frame ``[N_gt]`` bool and
    the index of the prediction's (last) box there ``[N_gt]`` (valid where matched)."""
    distinct, last = _last_box_per_frame(pred_frames)
    if distinct.size == 0:
        return np.zeros(len(gt_frames), dtype=bool), np.zeros(len(gt_frames), dtype=np.int64)
    pos = np.clip(np.searchsorted(distinct, gt_frames), 0, distinct.size - 1)
    return distinct[pos] == gt_frames, last[pos]


def spatiotemporal_iou(pred_track: Any, gt_track: Any) -> float:
    """Spatio-temporal IoU of two tracks (dict frame -> (x1, y1, x2, y2), ``[N, 5]``
    arrays, annotation boxes or :class:`PredictedTrack`). Empty -> 0.0; a zero union
    (the official code raises) -> 0.0."""
    pf, pb = _arrays(pred_track)
    gf, gb = _arrays(gt_track)
    matched, pi = _matched_rows(pf, gf)
    per_gt_box = np.zeros(len(gf), dtype=np.float64)
    per_gt_box[matched] = box_intersections(pb[pi[matched]], gb[matched])
    inter = sequential_sum(per_gt_box)
    union = sequential_sum(box_areas(pb)) + sequential_sum(box_areas(gb)) - inter
    return inter / union if union != 0 else 0.0


def frame_ious(pred_track: Any, gt_track: Any) -> np.ndarray:
    """Per-GT-frame box IoU ``[U]`` over the GT's distinct frames (ascending; the last
    GT box of a frame given twice); 0 where the prediction has no box on that frame or
    the union is 0."""
    pf, pb = _arrays(pred_track)
    gf, gb = _arrays(gt_track)
    frames, last = _last_box_per_frame(gf)
    gb = gb[last]
    matched, pi = _matched_rows(pf, frames)
    out = np.zeros(len(frames), dtype=np.float64)
    if matched.any():
        g, p = gb[matched], pb[pi[matched]]
        inter = box_intersections(g, p)
        union = box_areas(g) + box_areas(p) - inter
        out[matched] = np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
    return out


# Ranking ------------------------------------------------------------------------------------
def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 all-point interpolated AP of a ranked list (``precision, recall: [N]``).

    Precision is padded with 0 at both ends and recall with 0 and 1, made monotone from
    the right, and summed over the points where recall changes."""
    prec = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    rec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    changes = np.nonzero(rec[1:] != rec[:-1])[0] + 1
    return float(np.sum((rec[changes] - rec[changes - 1]) * prec[changes]))


def _score_array(scores: Sequence[float]) -> np.ndarray:
    """Scores ``[N]`` with the number type a pandas column of them gets (int64 when all are
    ints, else float64): the official ranking sorts that column, and numpy's sort may order
    equal scores differently for the two types."""
    arr = np.asarray(list(scores)).reshape(-1)
    if arr.dtype.kind not in "if":
        arr = arr.astype(np.float64)
    return arr


def average_precision(scores: Sequence[float], ious: Sequence[float], threshold: float,
                      npos: int) -> float:
    """AP of one prediction per query (``scores, ious: [N]``, in query order) at one IoU
    threshold, with ``npos`` ground-truth instances. No predictions or npos 0 -> 0.0."""
    scores = _score_array(scores)
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    if scores.shape != ious.shape:
        raise ValueError(f"scores {scores.shape} and ious {ious.shape} differ in length")
    if scores.size == 0 or npos <= 0:
        return 0.0
    order = np.argsort(scores)[::-1]  # the official ranking, ties included
    tp = (~(ious[order] < threshold)).astype(np.float64)  # the official test: not below
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    return interpolated_ap(tp_cum / (tp_cum + fp_cum), tp_cum / float(npos))


# Whole evaluation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryResult:
    """The overlaps of one query's prediction with its GT track."""

    tiou: float
    stiou: float
    recovered_frames: int  # GT frames whose predicted box has IoU >= RECOVERY_IOU
    gt_frames: int  # GT boxes (the official track length)
    score: float  # as given (int or float; NaN ranks first, as in the official ranking)
    empty: bool  # the prediction had no boxes (or was missing)


def as_prediction(pred: Any) -> PredictedTrack:
    """A :class:`PredictedTrack` from one, from ``(track, score)``, or None (missing ->
    empty with score 0.0)."""
    if pred is None:
        return PredictedTrack.empty()
    if isinstance(pred, PredictedTrack):
        return pred
    track, score = pred
    return PredictedTrack(track, score)


def query_result(pred: Any, gt_track: Any) -> QueryResult:
    """Overlaps of one prediction (see :func:`as_prediction`) with one GT track."""
    pred = as_prediction(pred)
    if isinstance(pred.score, bool) or not isinstance(pred.score, (int, float, np.number)):
        raise ValueError(f"prediction score must be a number, got {pred.score!r}")
    ious = frame_ious(pred.boxes, gt_track)
    return QueryResult(tiou=temporal_iou(pred.boxes, gt_track),
                       stiou=spatiotemporal_iou(pred.boxes, gt_track),
                       recovered_frames=int(np.count_nonzero(ious >= RECOVERY_IOU)),
                       gt_frames=len(_arrays(gt_track)[0]), score=pred.score,
                       empty=len(_arrays(pred.boxes)[0]) == 0)


def per_query_results(preds: Mapping[Hashable, Any],
                      gts: Mapping[Hashable, Any]) -> dict[Hashable, QueryResult]:
    """:class:`QueryResult` per GT key, in the order of ``gts``. A key missing from
    ``preds`` is scored as an empty track; a key of ``preds`` without GT is an error."""
    unknown = [k for k in preds if k not in gts]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions have no ground truth, e.g. {unknown[0]!r}")
    out = {}
    for key, gt in gts.items():
        if gt is None or len(_arrays(gt)[0]) == 0:
            raise ValueError(f"query {key!r} has no ground-truth response track")
        out[key] = query_result(preds.get(key), gt)
    return out


def search_efficiency(query_frames: Mapping[Hashable, int],
                      frames_accessed: Mapping[Hashable, int], keys: Sequence[Hashable]) -> float:
    """Mean over ``keys`` of 100 * (1 - frames accessed / query frame). A query missing
    from ``frames_accessed`` counts as having looked at every frame before its query frame."""
    if not keys:
        return 0.0
    values = []
    for key in keys:
        qf = query_frames[key]
        if qf <= 0:
            raise ValueError(f"query {key!r}: query frame must be > 0 for search efficiency, got {qf}")
        values.append(100.0 * (1.0 - frames_accessed.get(key, qf) / qf))
    return float(np.mean(values))


def summarize(results: Mapping[Hashable, QueryResult]) -> dict[str, float]:
    """The official summary of per-query results (in query order): keys of METRIC_KEYS
    (AP in [0, 1], success and recovery in percent) plus ``num_queries``."""
    rs = list(results.values())
    n = len(rs)
    scores = [r.score for r in rs]
    st_aps = [average_precision(scores, [r.stiou for r in rs], t, n) for t in AP_THRESHOLDS]
    t_aps = [average_precision(scores, [r.tiou for r in rs], t, n) for t in AP_THRESHOLDS]
    out: dict[str, float] = {"stAP@0.25": st_aps[0], "stAP": float(np.mean(st_aps)),
                             "tAP@0.25": t_aps[0], "tAP": float(np.mean(t_aps))}
    # the official order of operations: mean, then * 100
    out["success"] = float(np.mean([r.stiou >= SUCCESS_STIOU for r in rs])) * 100.0 if n else 0.0
    gt_frames = sum(r.gt_frames for r in rs)
    out["recovery"] = 100.0 * sum(r.recovered_frames for r in rs) / gt_frames if gt_frames else 0.0
    out["num_queries"] = n
    return out


def evaluate_tracks(preds: Mapping[Hashable, Any], gts: Mapping[Hashable, Any],
                    query_frames: Mapping[Hashable, int] | None = None,
                    frames_accessed: Mapping[Hashable, int] | None = None) -> dict[str, float]:
    """Score predicted tracks against GT tracks.

    preds: key -> :class:`PredictedTrack` | ``(track, score)`` | None; missing keys are
    empty. gts: key -> GT track, in query (file) order, which decides ties in the ranking.
    query_frames / frames_accessed: key -> int; with frames_accessed the result also
    holds ``search_efficiency``. Returns ``stAP@0.25, stAP, tAP@0.25, tAP, success,
    recovery`` (+ ``search_efficiency``) and ``num_queries``."""
    out = summarize(per_query_results(preds, gts))
    if frames_accessed is not None:
        if query_frames is None:
            raise ValueError("search efficiency needs query_frames as well as frames_accessed")
        n = out.pop("num_queries")
        out["search_efficiency"] = search_efficiency(query_frames, frames_accessed, list(gts))
        out["num_queries"] = n
    return out
