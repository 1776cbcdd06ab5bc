"""A training-free VQ2D baseline: multi-scale template matching of the visual crop
(docs/vq2d.md#template-matcher-baseline).

For one query:

1. the template is the annotated visual-crop box cut from its frame (no context, no
   padding: :func:`vq2d.data.crops.crop_region` with ``context=0``), in grayscale;
2. on every frame before the query frame, OpenCV ``matchTemplate`` with normalised
   cross-correlation (``TM_CCOEFF_NORMED``) of the template resized by each of ``scales``
   (default ``np.linspace(0.6, 1.5, 5)``); the frame's score is the best value over
   positions and scales, its box the template's footprint there;
3. the peak is the LATEST local maximum of the per-frame scores (over frame index) whose
   score is at least ``peak_ratio`` (0.85) times the clip's best score;
4. the track is grown from the peak backwards and forwards while the frame's score is
   above ``track_ratio`` (0.7) times the peak's and its box overlaps the previous one
   (IoU > 0); the track's score is the peak's.

Frames are ``[H, W]`` uint8 grayscale at the size the annotation's boxes refer to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from episodic.errors import DataError
from vq2d.data.crops import crop_region
from vq2d.evaluation.metrics import box_iou_one_to_many

DEFAULT_SCALES = tuple(float(s) for s in np.linspace(0.6, 1.5, 5))


def to_gray(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (or an already gray ``[H, W]``) -> ``[H, W]`` uint8."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def cut_template(image: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
    """The grayscale template ``[h, w]`` uint8: the box's pixels (clipped to the image) of
    ``image`` (``[H, W, 3]`` RGB or ``[H, W]`` gray). DataError when the box lies outside
    the image or the patch is flat (a flat template matches every flat region with 1.0)."""
    x1, y1, x2, y2 = crop_region(box_xyxy, image.shape[:2], context=0)
    template = to_gray(image)[y1:y2, x1:x2]
    if int(template.max()) == int(template.min()):
        raise DataError(f"visual crop box {tuple(round(float(v), 1) for v in box_xyxy)} holds a flat "
                        f"{x2 - x1}x{y2 - y1} patch (value {int(template.min())}): nothing to match")
    return np.ascontiguousarray(template)


@dataclass
class MatchResult:
    """The answer for one query.

    track: rows ``[frame, x1, y1, x2, y2]`` on contiguous frames (empty: no frame searched).
    score: the peak frame's matching score (normalised cross-correlation, -1..1).
    peak_frame: the chosen frame (None when no frame was searched).
    scores: ``[T]`` float64 best score per searched frame; boxes: ``[T, 4]`` its box (xyxy).
    """

    track: list = field(default_factory=list)
    score: float = 0.0
    peak_frame: int | None = None
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass(frozen=True)
class TemplateMatcher:
    """The matcher of the module docstring.

    Args:
        scales: template scale factors (relative to the visual-crop box's size).
        peak_ratio: a local maximum is a peak candidate when its score >= peak_ratio * the best score.
        track_ratio: the track goes on while a frame's score > track_ratio * the peak's score.
    """

    scales: tuple[float, ...] = DEFAULT_SCALES
    peak_ratio: float = 0.85
    track_ratio: float = 0.7

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive factors, got {list(self.scales)}")
        for name in ("peak_ratio", "track_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TemplateMatcher":
        """From the ``matcher`` group of configs/vq2d/template_match.yaml."""
        cfg = dict(cfg)
        return cls(scales=tuple(cfg.pop("scales", DEFAULT_SCALES)), **cfg)

    def scaled_templates(self, template: np.ndarray, frame_hw: tuple[int, int]) -> list[np.ndarray]:
        """The template resized by each scale (``[h*s, w*s]``, at least 1 px), those that fit
        in a ``frame_hw`` frame only. DataError when none fits."""
        h, w = template.shape
        out = []
        for s in self.scales:
            size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
            if size[0] <= frame_hw[1] and size[1] <= frame_hw[0]:
                interpolation = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
                out.append(cv2.resize(template, size, interpolation=interpolation))
        if not out:
            raise DataError(f"the {w}x{h} template is larger than the {frame_hw[1]}x{frame_hw[0]} frame "
                            f"at every scale {list(self.scales)}")
        return out

    @staticmethod
    def match_frame(frame: np.ndarray, templates: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        """Best normalised cross-correlation of ``templates`` (``[h_s, w_s]`` uint8 each) on
        ``frame`` (``[H, W]`` uint8) -> (score, box ``[4]`` xyxy float64)."""
        best, box = -np.inf, np.zeros(4)
        for t in templates:
            response = cv2.matchTemplate(frame, t, cv2.TM_CCOEFF_NORMED)
            np.nan_to_num(response, copy=False, nan=-1.0, posinf=-1.0, neginf=-1.0)
            _, value, _, (x, y) = cv2.minMaxLoc(response)
            if value > best:
                best, box = float(value), np.array([x, y, x + t.shape[1], y + t.shape[0]], np.float64)
        return best, box

    def find_peak(self, scores: np.ndarray) -> int:
        """Index of the latest local maximum of ``scores`` (``[T]``, T >= 1) whose score is
        >= ``peak_ratio`` * the best; the best frame itself when the best score is <= 0."""
        scores = np.asarray(scores, np.float64)
        best = float(scores.max())
        if best <= 0:
            return int(np.argmax(scores))
        padded = np.concatenate([[-np.inf], scores, [-np.inf]])
        local_max = (scores >= padded[:-2]) & (scores >= padded[2:])
        candidates = np.flatnonzero(local_max & (scores >= self.peak_ratio * best))
        return int(candidates[-1])

    def grow_track(self, scores: np.ndarray, boxes: np.ndarray, peak: int) -> tuple[int, int]:
        """(first, last) frame of the track grown from ``peak`` (see module docstring)."""
        threshold = self.track_ratio * float(scores[peak])

        def keeps(f: int, neighbour: int) -> bool:
            return scores[f] > threshold and box_iou_one_to_many(boxes[f], boxes[neighbour][None])[0] > 0

        first, last = peak, peak
        while first > 0 and keeps(first - 1, first):
            first -= 1
        while last < len(scores) - 1 and keeps(last + 1, last):
            last += 1
        return first, last

    def answer(self, scores: np.ndarray, boxes: np.ndarray) -> MatchResult:
        """Peak and track from the per-frame ``scores [T]`` and ``boxes [T, 4]``."""
        scores, boxes = np.asarray(scores, np.float64), np.asarray(boxes, np.float64)
        if scores.size == 0:
            return MatchResult()
        peak = self.find_peak(scores)
        first, last = self.grow_track(scores, boxes, peak)
        track = [[f, *(float(v) for v in boxes[f])] for f in range(first, last + 1)]
        return MatchResult(track=track, score=float(scores[peak]), peak_frame=peak, scores=scores, boxes=boxes)

    def match(self, template: np.ndarray, frames: Sequence[np.ndarray]) -> MatchResult:
        """The whole matcher on ``frames`` (``[H, W]`` gray or ``[H, W, 3]`` RGB, frame 0 first:
        the frames before the query frame) with ``template`` (``[h, w]`` uint8, :func:`cut_template`)."""
        scores, boxes = np.zeros(len(frames)), np.zeros((len(frames), 4))
        templates = None
        for t, image in enumerate(frames):
            gray = to_gray(image)
            if templates is None:
                templates = self.scaled_templates(template, gray.shape)
            scores[t], boxes[t] = self.match_frame(gray, templates)
        return self.answer(scores, boxes)
