"""OpenCV pixel trackers (opencv-contrib): CSRT and KCF, with a lost-target criterion.

The target is lost at the first frame where OpenCV's ``update`` fails (CSRT: peak-to-
sidelobe ratio below ``psr_threshold``; KCF: weak response), where the box shrinks below
``min_size_px``, where less than ``min_visible`` of it lies inside the image, or where its
area changes by more than a factor ``max_area_change`` from the starting box.
"""
from __future__ import annotations

import cv2
import numpy as np

from vq2d.inference.tracking.base import Box, Tracker, register_tracker


def _xywh_in_image(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """xyxy float box -> integer (x, y, w, h) clipped to the image, at least 1 x 1."""
    x1 = int(np.clip(np.floor(box[0]), 0, width - 1))
    y1 = int(np.clip(np.floor(box[1]), 0, height - 1))
    x2 = int(np.clip(np.ceil(box[2]), x1 + 1, width))
    y2 = int(np.clip(np.ceil(box[3]), y1 + 1, height))
    return x1, y1, x2 - x1, y2 - y1


def visible_fraction(box: np.ndarray, width: int, height: int) -> float:
    """Share of the area of ``box`` (xyxy) inside a ``width`` x ``height`` image."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        return 0.0
    w = max(min(box[2], width) - max(box[0], 0.0), 0.0)
    h = max(min(box[3], height) - max(box[1], 0.0), 0.0)
    return float(w * h / area)


class OpenCVTracker(Tracker):
    """Args:
        detections: ignored (pixel trackers read frames).
        min_size_px: lost when the box is narrower or lower than this.
        min_visible: lost when less than this share of the box is inside the image.
        max_area_change: lost when the box area grows or shrinks by more than this factor
            from the starting box.
    """

    needs_images = True

    def __init__(self, *, detections=None, min_size_px: float = 4.0, min_visible: float = 0.5,
                 max_area_change: float = 4.0):
        self.min_size_px = float(min_size_px)
        self.min_visible = float(min_visible)
        self.max_area_change = float(max_area_change)
        self._tracker = None
        self._start_area = 0.0

    def _create(self):
        raise NotImplementedError

    def start(self, frame: int, box: Box, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        rect = _xywh_in_image(np.asarray(box, dtype=np.float64), w, h)
        self._start_area = float(rect[2] * rect[3])
        self._tracker = self._create()
        self._tracker.init(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), rect)

    def step(self, frame: int, image: np.ndarray) -> Box | None:
        ok, (x, y, bw, bh) = self._tracker.update(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok or bw < self.min_size_px or bh < self.min_size_px:
            return None
        box = np.array([x, y, x + bw, y + bh], dtype=np.float64)
        h, w = image.shape[:2]
        if visible_fraction(box, w, h) < self.min_visible:
            return None
        ratio = (bw * bh) / max(self._start_area, 1.0)
        if ratio > self.max_area_change or ratio < 1.0 / self.max_area_change:
            return None
        return box


@register_tracker("csrt")
class CSRTTracker(OpenCVTracker):
    """CSRT (discriminative correlation filter with channel and spatial reliability).

    psr_threshold: OpenCV's failure threshold on the peak-to-sidelobe ratio (None: its default).
    """

    def __init__(self, *, psr_threshold: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.psr_threshold = psr_threshold

    def _create(self):
        params = cv2.TrackerCSRT_Params()
        if self.psr_threshold is not None:
            params.psr_threshold = float(self.psr_threshold)
        return cv2.TrackerCSRT.create(params)


@register_tracker("kcf")
class KCFTracker(OpenCVTracker):
    """KCF (kernelized correlation filter). detect_thresh: OpenCV's response threshold
    below which ``update`` fails (None: its default)."""

    def __init__(self, *, detect_thresh: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.detect_thresh = detect_thresh

    def _create(self):
        params = cv2.TrackerKCF_Params()
        if self.detect_thresh is not None:
            params.detect_thresh = float(self.detect_thresh)
        return cv2.TrackerKCF.create(params)
