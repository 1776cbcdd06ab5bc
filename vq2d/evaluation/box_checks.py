"""Warnings about predicted boxes the scorer takes as they are but that are likely
mistakes (docs/vq2d.md#metrics): boxes on frames at or after the query frame (the object
must be found BEFORE it) and boxes far outside the frame. They are counted and named,
never changed: the official code scores them as they are, and so does this toolkit.
"""
from __future__ import annotations

import numpy as np

AFTER_QUERY_FRAME = "boxes_after_query_frame"
OUTSIDE_FRAME = "boxes_outside_frame"
OUTSIDE_MARGIN = 0.5  # a corner more than this fraction of the frame size beyond an edge


def outside_frame(boxes: np.ndarray, width: float, height: float, margin: float = OUTSIDE_MARGIN) -> np.ndarray:
    """``boxes: [N, 4]`` (x1, y1, x2, y2) -> ``[N]`` bool: the box has no area inside the
    ``width x height`` frame, or a corner lies more than ``margin`` times the frame size
    beyond an edge."""
    x1, y1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.minimum(boxes[:, 1], boxes[:, 3])
    x2, y2 = np.maximum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 1], boxes[:, 3])
    no_overlap = (x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height)
    far = ((x1 < -margin * width) | (y1 < -margin * height) | (x2 > (1 + margin) * width)
           | (y2 > (1 + margin) * height))
    return no_overlap | far


def box_warnings(rows: np.ndarray, query_frame: int | None,
                 frame_size: tuple[float, float] | None) -> dict[str, int]:
    """``rows: [N, 5]`` (frame, x1, y1, x2, y2) of one predicted track -> {kind: number of
    boxes} for the kinds that occur (unknown query frame or frame size: not checked)."""
    out = {}
    if len(rows) and query_frame is not None:
        n = int(np.count_nonzero(rows[:, 0] >= query_frame))
        if n:
            out[AFTER_QUERY_FRAME] = n
    if len(rows) and frame_size is not None:
        n = int(np.count_nonzero(outside_frame(rows[:, 1:5], *frame_size)))
        if n:
            out[OUTSIDE_FRAME] = n
    return out
