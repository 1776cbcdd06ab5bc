"""The ground truth of a VQ2D annotation file as the official scorer reads it.

The official ``evaluate_vq.py`` takes every query set whose ``is_valid`` is true, builds
its response track from ``frame_number, x, y, x + width, y + height`` of each box (any
numbers), sorts it by frame and raises when the track is empty or its frames are not
contiguous; it then leaves out (silently) every query whose visual crop or largest GT box
has an area outside its "all" range ``[0, 1e5 ** 2)``. Here the same rules decide which
queries are scored, in both scoring and checkpoint mode; a query the official code would
fail on or leave out is DROPPED from the count: never silently, each one is named with
its reason (``dropped_queries`` in metrics.json). This reads the raw JSON, not the
validating loader of :mod:`vq2d.data.annotations`, whose rules are stricter (positive
width, a track before the query frame) because training needs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from episodic.errors import DataError
from vq2d.data.annotations import QueryKey

OFFICIAL_AREA_RANGE = (0.0, 1e5 ** 2)  # the official "all" area range, [low, high)
BOX_KEYS = ("frame_number", "x", "y", "width", "height")


@dataclass
class GroundTruth:
    """What the scorer needs of an annotation file, query sets in file order.

    tracks: QueryKey -> GT rows ``[N, 5]`` (frame, x1, y1, x2, y2), sorted by frame, for
    the scored queries. query_frames: QueryKey -> query frame (None when missing).
    frame_sizes: QueryKey -> (width, height) of the original frames, or None.
    areas: QueryKey -> the official response-track area (its largest box, |w| * |h|).
    dropped: query name -> why it is not scored. valid: every query set the official
    code reads as valid (scored or dropped), the ones a submission must answer."""

    tracks: dict[QueryKey, np.ndarray] = field(default_factory=dict)
    query_frames: dict[QueryKey, int | None] = field(default_factory=dict)
    frame_sizes: dict[QueryKey, tuple[float, float] | None] = field(default_factory=dict)
    areas: dict[QueryKey, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    valid: list[QueryKey] = field(default_factory=list)


def query_name(key: QueryKey) -> str:
    """``<clip_uid>_<annotation_index>_<query_set>`` (as :attr:`VQQuery.name`)."""
    return f"{key.clip_uid}_{key.annotation_index}_{key.query_set}"


def _number(node: Any, name: str) -> float:
    value = node.get(name) if isinstance(node, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{name}' must be a finite number, got {value!r}")
    return value


def _corners(box: Any, what: str = "box") -> tuple[float, float, float, float, float]:
    """(frame, x1, y1, x2, y2) of an annotation box, computed as the official code does.
    The visual crop's frame number is only looked up (``what="visual_crop"``)."""
    if what == "visual_crop":
        if not isinstance(box, dict) or "frame_number" not in box:
            raise ValueError("visual_crop has no 'frame_number'")
        fno = 0
    else:
        fno = _number(box, "frame_number")
        if fno != int(fno):
            raise ValueError(f"frame_number must be a whole number, got {fno!r}")
    x, y = _number(box, "x"), _number(box, "y")
    return fno, x, y, x + _number(box, "width"), y + _number(box, "height")


def official_track(boxes: Any) -> np.ndarray:
    """GT rows ``[N, 5]`` of a raw ``response_track`` list, sorted by frame (stable).
    Raises ValueError where the official code raises (empty, not contiguous) or cannot
    compute (a missing or non-numeric field)."""
    if not isinstance(boxes, list) or not boxes:
        raise ValueError("empty or missing response track")
    rows = np.zeros((len(boxes), 5), dtype=np.float64)
    for i, box in enumerate(boxes):
        try:
            rows[i] = _corners(box)
        except ValueError as e:
            raise ValueError(f"response_track[{i}]: {e}") from None
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    first, last = int(rows[0, 0]), int(rows[-1, 0])
    if len(rows) != last - first + 1:
        raise ValueError(f"response track not contiguous: {len(rows)} boxes on frames {first}..{last}")
    return rows


def official_area(rows: np.ndarray) -> float:
    """The official response-track area: the largest ``|x2 - x1| * |y2 - y1|`` of its boxes."""
    return float(np.max(np.abs(rows[:, 3] - rows[:, 1]) * np.abs(rows[:, 4] - rows[:, 2])))


def _frame_size(qs: dict) -> tuple[float, float] | None:
    for box in [*(qs.get("response_track") or [])[:1], qs.get("visual_crop")]:
        if isinstance(box, dict):
            w, h = box.get("original_width"), box.get("original_height")
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
                return float(w), float(h)
    return None


def valid_query_sets(raw: Any) -> Iterator[tuple[QueryKey, dict]]:
    """(key, raw query set) of every query set the official code reads as valid (``is_valid``
    true; missing counts as true, as for the loader), in file order."""
    for video in raw.get("videos", []) if isinstance(raw, dict) else []:
        for clip in video.get("clips", []):
            for ai, ann in enumerate(clip.get("annotations", [])):
                for qkey, qs in (ann.get("query_sets") or {}).items():
                    if isinstance(qs, dict) and qs.get("is_valid", True):
                        yield QueryKey(clip["clip_uid"], ai, qkey), qs


def official_ground_truth(raw: Any, file: str = "<annotations>") -> GroundTruth:
    """Read the ground truth of a decoded annotation file (see module docstring). Raises
    DataError when no valid query set has a response track (an unannotated split)."""
    gt = GroundTruth()
    any_track = False
    for key, qs in valid_query_sets(raw):
        gt.valid.append(key)
        any_track = any_track or qs.get("response_track") is not None
        try:
            rows = official_track(qs.get("response_track"))
            _, vx1, vy1, vx2, vy2 = _corners(qs.get("visual_crop"), "visual_crop")
        except ValueError as e:
            gt.dropped[query_name(key)] = f"{e} (the official scorer raises)"
            continue
        areas = (abs(vx2 - vx1) * abs(vy2 - vy1), official_area(rows))
        low, high = OFFICIAL_AREA_RANGE
        if not all(low <= a < high for a in areas):
            gt.dropped[query_name(key)] = (f"visual crop / response track area {areas} outside "
                                           f"[{low:g}, {high:g}) (the official scorer leaves it out)")
            continue
        gt.tracks[key] = rows
        gt.areas[key] = areas[1]
        qf = qs.get("query_frame")
        gt.query_frames[key] = qf if isinstance(qf, int) and not isinstance(qf, bool) else None
        gt.frame_sizes[key] = _frame_size(qs)
    if gt.valid and not any_track:
        raise DataError(f"{file}: no query set has a response_track; only annotated splits (train/val) "
                        f"can be scored")
    return gt
