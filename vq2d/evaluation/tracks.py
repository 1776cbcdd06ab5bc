"""Response tracks as plain data: the record a method answers a query with, and one
normalised array form that every metric works on.

A track is "a contiguous run of boxes, one per 5 fps clip frame" (docs/vq2d.md#tracking). The metrics
accept any of these spellings of it:

* a mapping ``{frame_number: (x1, y1, x2, y2)}``;
* an array-like ``[N, 5]`` of rows ``(frame_number, x1, y1, x2, y2)``;
* a sequence of annotation boxes (objects with ``.frame_number`` and ``.xyxy``, e.g.
  :class:`vq2d.data.annotations.BBox`);
* a :class:`PredictedTrack` (its ``boxes``).

Boxes are corner coordinates in original-resolution pixels; nothing here clips them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PredictedTrack:
    """A method's answer to one query: a response track and its confidence.

    ``boxes`` maps a clip frame number to ``(x1, y1, x2, y2)``; an empty mapping is an
    allowed answer ("not found") and scores IoU 0."""

    boxes: Mapping[int, Box] = field(default_factory=dict)
    score: float = 0.0

    @classmethod
    def empty(cls) -> "PredictedTrack":
        return cls({}, 0.0)

    @classmethod
    def from_bboxes(cls, bboxes, score: float) -> "PredictedTrack":
        """From annotation boxes (``.frame_number``, ``.xyxy``), e.g. a GT response track."""
        return cls({int(b.frame_number): tuple(float(v) for v in b.xyxy) for b in bboxes}, float(score))

    @property
    def is_empty(self) -> bool:
        return len(self.boxes) == 0

    @property
    def temporal_extent(self) -> tuple[int, int] | None:
        """``(first, last)`` frame number, inclusive; None for an empty track."""
        if not self.boxes:
            return None
        return min(self.boxes), max(self.boxes)


def track_arrays(track: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalise any accepted track spelling (see module docstring).

    Returns ``frames: [N] int64`` sorted ascending and ``boxes: [N, 4] float64``
    (x1, y1, x2, y2) aligned with ``frames``. Raises ValueError on a repeated frame or a
    malformed row; an empty or None track gives ``[0]`` and ``[0, 4]`` arrays."""
    if isinstance(track, PredictedTrack):
        track = track.boxes
    if track is None:
        track = {}
    if isinstance(track, Mapping):
        frames = [int(f) for f in track]
        boxes = [tuple(track[f]) for f in track]
    elif len(track) > 0 and hasattr(track[0], "xyxy"):
        frames = [int(b.frame_number) for b in track]
        boxes = [tuple(b.xyxy) for b in track]
    else:
        rows = np.asarray(track, dtype=np.float64)
        if rows.size == 0:
            rows = rows.reshape(0, 5)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise ValueError(f"a track array must be [N, 5] (fno, x1, y1, x2, y2), got shape {rows.shape}")
        frames = [int(f) for f in rows[:, 0]]
        boxes = rows[:, 1:]
    frames_arr = np.asarray(frames, dtype=np.int64).reshape(-1)
    boxes_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(np.unique(frames_arr)) != len(frames_arr):
        raise ValueError("a track has more than one box on the same frame")
    order = np.argsort(frames_arr, kind="stable")
    return frames_arr[order], boxes_arr[order]

