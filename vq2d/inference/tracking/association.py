"""Detection-association tracker (the default, docs/vq2d.md#tracking): follows the target through the
detections the detection pass already cached, so it costs nothing but a few IoUs.

On each next frame, the candidates are that frame's cached detections overlapping the
previous box with IoU >= ``min_iou``; the best is the one with the highest
``iou_weight * IoU + (1 - iou_weight) * score``. The target is lost at the first frame
without a candidate or whose best candidate scores below ``min_score``.
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
    """

    needs_images = False

    def __init__(self, *, detections, min_iou: float = 0.01, min_score: float = 0.2, iou_weight: float = 0.5):
        if detections is None:
            raise ValueError("the association tracker needs the query's cached detections")
        if not 0.0 <= iou_weight <= 1.0:
            raise ValueError(f"iou_weight must be in [0, 1], got {iou_weight}")
        self.detections = detections
        self.min_iou = float(min_iou)
        self.min_score = float(min_score)
        self.iou_weight = float(iou_weight)
        self.box: np.ndarray | None = None

    def start(self, frame: int, box: Box, image=None) -> None:
        self.box = np.asarray(box, dtype=np.float64)

    def step(self, frame: int, image=None) -> Box | None:
        boxes, scores = self.detections.frame(frame)
        if len(scores) == 0:
            return None
        ious = box_iou_one_to_many(self.box, boxes.astype(np.float64))
        ok = ious >= self.min_iou
        if not ok.any():
            return None
        quality = np.where(ok, self.iou_weight * ious + (1.0 - self.iou_weight) * scores, -np.inf)
        best = int(np.argmax(quality))
        if scores[best] < self.min_score:
            return None
        self.box = boxes[best].astype(np.float64)
        return self.box
