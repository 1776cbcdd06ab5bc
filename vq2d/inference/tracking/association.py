"""Detection-association tracker (the default, docs/vq2d.md#tracking): follows the target through the
detections the detection pass already cached, so it costs nothing but a few IoUs.

On each next frame, the candidates are that frame's cached detections overlapping the
previous box with IoU >= ``min_iou`` or whose centre lies within ``max_center_shift`` box
sizes (the previous box's sqrt(width * height)) of the previous box's centre; the best is the
one with the highest ``iou_weight * IoU + (1 - iou_weight) * score``. The target is lost at
the first frame without a candidate or whose best candidate scores below ``min_score``.

At 5 fps targets jump: of the consecutive response-track boxes of the real VQ2D v1 val
sample, 85.5 % move their centre by at most one box size, 93.9 % by at most two
(docs/vq2d.md#tracking).
"""
from __future__ import annotations

import numpy as np

from vq2d.evaluation.metrics import box_iou_one_to_many
from vq2d.inference.tracking.base import Box, Tracker, register_tracker


@register_tracker("association")
class AssociationTracker(Tracker):
    """Args:
        detections: the query's QueryDetections (``frame(t) -> (boxes [n, 4], scores [n])``).
        min_iou: a candidate must overlap the previous box at least this much.
        min_score: the chosen candidate must score at least this much.
        iou_weight: weight of IoU against score when choosing among candidates (0..1).
        max_center_shift: a candidate whose centre is at most this many box sizes from the
            previous box's centre is one too, overlapping or not (None: the IoU gate only).
    """

    needs_images = False

    def __init__(self, *, detections, min_iou: float = 0.01, min_score: float = 0.2, iou_weight: float = 0.5,
                 max_center_shift: float | None = 2.0):
        if detections is None:
            raise ValueError("the association tracker needs the query's cached detections")
        if not 0.0 <= iou_weight <= 1.0:
            raise ValueError(f"iou_weight must be in [0, 1], got {iou_weight}")
        if max_center_shift is not None and not max_center_shift >= 0:
            raise ValueError(f"max_center_shift must be >= 0 or None, got {max_center_shift}")
        self.detections = detections
        self.min_iou = float(min_iou)
        self.min_score = float(min_score)
        self.iou_weight = float(iou_weight)
        self.max_center_shift = None if max_center_shift is None else float(max_center_shift)
        self.box: np.ndarray | None = None

    def start(self, frame: int, box: Box, image=None) -> None:
        self.box = np.asarray(box, dtype=np.float64)

    def step(self, frame: int, image=None) -> Box | None:
        boxes, scores = self.detections.frame(frame)
        if len(scores) == 0:
            return None
        candidates = boxes.astype(np.float64)
        ious = box_iou_one_to_many(self.box, candidates)
        ok = ious >= self.min_iou
        if self.max_center_shift is not None:
            ok |= center_shifts(self.box, candidates) <= self.max_center_shift
        if not ok.any():
            return None
        quality = np.where(ok, self.iou_weight * ious + (1.0 - self.iou_weight) * scores, -np.inf)
        best = int(np.argmax(quality))
        if scores[best] < self.min_score:
            return None
        self.box = boxes[best].astype(np.float64)
        return self.box


def center_shifts(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance of each of ``boxes [N, 4]``'s centres from ``box [4]``'s, in units of
    ``box``'s size sqrt(width * height) (at least 1 px) -> ``[N]``."""
    size = np.sqrt(max(float((box[2] - box[0]) * (box[3] - box[1])), 1.0))
    center = (box[:2] + box[2:]) / 2.0
    return np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2.0 - center, axis=1) / size
