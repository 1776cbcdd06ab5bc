"""Frame-level detection AP of the siamese detector (docs/vq2d.md#metrics), with pycocotools.

Every evaluated frame is one COCO "image" of a single category. A positive frame holds
its response box as the one ground-truth box; a negative frame (the object is absent)
holds none, so any detection on it is a false positive. COCO AP / AP50 / AP75 / AR@10 are
reported twice:

* ``positive``: positive frames only (the usual frame-level AP);
* ``positive_negative``: positive + negative frames (what the seed paper shows improving
  with negative-frame training);
* ``clean_positive`` / ``clean_positive_negative``: the same on the frames the clean filter
  keeps (``FrameDetections.clean``), the papers' ``visual_query_clean_val``, so the numbers
  sit beside the seed paper's Table 3 (docs/vq2d.md#training).

Pure function over plain data (numpy arrays), in percent (a perfect detector scores 100).
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np

METRICS = ("AP", "AP50", "AP75", "AR@10")
AP_PARTS = ("positive", "positive_negative", "clean_positive", "clean_positive_negative")
# indices of METRICS in COCOeval.stats (AP@[.5:.95], AP@.5, AP@.75, AR maxDets=10)
_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR@10": 7}


@dataclass
class FrameDetections:
    """The detections on one evaluated (frame, visual crop) pair.

    gt_boxes: ``[G, 4]`` xyxy (G = 1 for a positive frame, 0 for a negative frame).
    boxes: ``[K, 4]`` xyxy detections, same coordinates as ``gt_boxes``.
    scores: ``[K]`` detection scores (higher = more confident).
    name: readable id for logs (query and frame).
    clean: the frame passes the clean filter (negative frames: True).
    """

    gt_boxes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    name: str = ""
    clean: bool = True

    @property
    def is_positive(self) -> bool:
        return len(self.gt_boxes) > 0


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco_stats(frames: list[FrameDetections]) -> dict[str, float]:
    """COCO bbox metrics (percent) over ``frames``; NaN when no frame has a ground-truth box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(f.is_positive for f in frames):
        return dict.fromkeys(METRICS, math.nan)
    images, annotations, detections = [], [], []
    for image_id, frame in enumerate(frames, start=1):
        images.append({"id": image_id})
        for box in _xywh(frame.gt_boxes):
            # ids start at 1: COCOeval treats a detection matched to gt id 0 as unmatched
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        for box, score in zip(_xywh(frame.boxes), np.asarray(frame.scores, dtype=np.float64).reshape(-1)):
            detections.append({"image_id": image_id, "category_id": 1, "bbox": box.tolist(), "score": float(score)})
    if not detections:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: max(float(evaluator.stats[i]), 0.0) * 100.0 for name, i in _STATS_INDEX.items()}


def detection_ap(frames: list[FrameDetections]) -> dict:
    """Frame-level AP on positive frames and on positive + negative frames, all and clean.

    Returns ``{"positive": {AP, AP50, AP75, AR@10}, "positive_negative": {...},
    "clean_positive": {...}, "clean_positive_negative": {...}, "num_positive_frames",
    "num_clean_positive_frames", "num_negative_frames", "num_detections"}`` (metrics in
    percent, NaN when there is no positive frame).
    """
    positives = [f for f in frames if f.is_positive]
    clean = [f for f in frames if f.clean]
    return {
        "positive": _coco_stats(positives),
        "positive_negative": _coco_stats(list(frames)),
        "clean_positive": _coco_stats([f for f in clean if f.is_positive]),
        "clean_positive_negative": _coco_stats(clean),
        "num_positive_frames": len(positives),
        "num_clean_positive_frames": sum(f.is_positive for f in clean),
        "num_negative_frames": len(frames) - len(positives),
        "num_detections": int(sum(len(np.asarray(f.scores).reshape(-1)) for f in frames)),
    }


def format_detection_ap(result: dict) -> str:
    """One line per frame set, e.g. ``positive: AP 23.1 AP50 45.0 AP75 20.2 AR@10 50.3``."""
    lines = []
    for part in AP_PARTS:
        values = " ".join(f"{m} {result[part][m]:.2f}" for m in METRICS)
        lines.append(f"{part}: {values}")
    lines.append(f"({result['num_positive_frames']} positive ({result['num_clean_positive_frames']} clean), "
                 f"{result['num_negative_frames']} negative frames, "
                 f"{result['num_detections']} detections)")
    return "\n".join(lines)
