"""Peak detection on a query's score curve (docs/vq2d.md#peaks).

The curve ``s[t]`` (best detection score on frame t, t = 0 .. query_frame-1) is median
filtered (kernel 5), peaks are found with ``scipy.signal.find_peaks(distance=25, width=3,
prominence=0.2[, height])``, peaks whose smoothed score is below ``min_score`` are dropped
(when set), and the LATEST remaining peak is chosen: the object's most recent sighting,
not its most confident one. No peak (``fallback``): ``best_frame`` (the toolkit's default)
takes the frame of the curve's highest raw score (the latest such frame) and the track is
grown from it as from a peak; ``last_frame`` (the published systems) answers with the top
box of the last searched frame alone (a one-box track).

``pad_edges`` (the toolkit's default; the published systems: off) searches the smoothed
curve with its own minimum added once before frame 0 and once after the last searched
frame, so an end counts as a descent to the curve's lowest score (prominence is still
measured against the rest of the curve: a flat curve has no peak). Without it
``find_peaks`` never reports a maximum at either end of the curve, so a sighting that lasts
until the query frame (the most recent one possible) or that starts with the clip cannot be
found: the search falls back to another peak or to the last frame.

The track's confidence (``track_score``) is the toolkit's choice, not part of the peak
search; it ranks the answers of all queries for stAP/tAP: ``distinct`` (default) = the top
detection score at the chosen frame minus ``distinct_weight`` (0.5) times the best score on
the searched frames outside the response track, so an answer in a clip where something else
scores as high ranks below one that stands out; ``detection`` = the top detection score at
the chosen frame; ``constant`` = 1.0 for every track, as the published systems write it
(docs/vq2d.md#track-score, #published-settings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

TRACK_SCORES = ("distinct", "detection", "constant")
FALLBACKS = ("best_frame", "last_frame")

import numpy as np
from scipy.signal import find_peaks, medfilt


@dataclass(frozen=True)
class PeakParams:
    """Settings of :func:`find_latest_peak` (the ``peaks`` group of configs/vq2d/eval.yaml)."""

    kernel_size: int = 5  # median filter kernel (odd); 1 = no smoothing
    distance: int = 25  # min frames between peaks
    width: float = 3  # min peak width (frames)
    prominence: float = 0.2  # min peak prominence
    height: float | None = None  # min smoothed peak height for find_peaks (reference val: 0.6)
    min_score: float | None = None  # drop peaks whose smoothed score is lower (reference: 0.5 / 0.25)
    track_score: str = "distinct"  # distinct | detection: top score at the chosen frame | constant: 1.0 (the originals)
    distinct_weight: float = 0.5  # distinct: weight of the best score outside the track
    pad_edges: bool = True  # the curve's minimum added at both ends: sightings at its ends are peaks (originals: False)
    fallback: str = "best_frame"  # no peak: best_frame (highest raw score, tracked) | last_frame (one box, originals)

    def __post_init__(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"peaks.kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.track_score not in TRACK_SCORES:
            raise ValueError(f"peaks.track_score must be one of {TRACK_SCORES}, got {self.track_score!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"peaks.fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if not self.distinct_weight >= 0:
            raise ValueError(f"peaks.distinct_weight must be >= 0, got {self.distinct_weight}")

    def score_of(self, top_detection_score: float, best_elsewhere: float = 0.0) -> float:
        """The confidence written with a track whose chosen frame's top detection scores
        ``top_detection_score``; ``best_elsewhere``: the highest score of the curve on the
        searched frames outside the track (0.0 when there are none)."""
        if self.track_score == "constant":
            return 1.0
        if self.track_score == "distinct":
            return float(top_detection_score) - self.distinct_weight * float(best_elsewhere)
        return float(top_detection_score)

    @classmethod
    def from_config(cls, cfg: Mapping) -> "PeakParams":
        return cls(**dict(cfg))


@dataclass(frozen=True)
class PeakResult:
    """Where the track starts.

    frame: the chosen peak frame (when ``fallback``: the frame of the highest raw score,
        or the last searched frame with ``PeakParams.fallback="last_frame"``); None for an
        empty curve (no frame searched).
    fallback: True when no peak was found.
    peaks: every peak kept, ascending ``[P]``.
    smoothed: the median-filtered curve ``[T]``.
    """

    frame: int | None
    fallback: bool
    peaks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    smoothed: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def smoothed_score(self) -> float:
        """Smoothed curve at the chosen frame (0.0 when there is none)."""
        return float(self.smoothed[self.frame]) if self.frame is not None else 0.0


def smooth_curve(curve: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """Median filter ``[T] -> [T]`` (zero padded at both ends, as ``scipy.signal.medfilt``)."""
    curve = np.asarray(curve, dtype=np.float64).reshape(-1)
    if kernel_size <= 1 or curve.size == 0:
        return curve.copy()
    return medfilt(curve, kernel_size)


def find_latest_peak(curve: np.ndarray, params: PeakParams = PeakParams()) -> PeakResult:
    """Choose the latest peak of a score curve ``[T]`` (see module docstring)."""
    smoothed = smooth_curve(curve, params.kernel_size)
    if smoothed.size == 0:
        return PeakResult(None, True, np.zeros(0, np.int64), smoothed)
    pad = 1 if params.pad_edges else 0
    searched = np.pad(smoothed, pad, constant_values=smoothed.min())  # [T + 2 * pad]
    peaks, _ = find_peaks(searched, height=params.height, distance=params.distance, width=params.width,
                          prominence=params.prominence)
    peaks = peaks - pad
    if params.min_score is not None:
        peaks = peaks[smoothed[peaks] >= params.min_score]
    peaks = peaks.astype(np.int64)
    if peaks.size == 0:
        if params.fallback == "last_frame":
            return PeakResult(int(smoothed.size - 1), True, peaks, smoothed)
        raw = np.asarray(curve, dtype=np.float64).reshape(-1)
        return PeakResult(int(raw.size - 1 - np.argmax(raw[::-1])), True, peaks, smoothed)  # latest maximum
    return PeakResult(int(peaks[-1]), False, peaks, smoothed)


def best_outside(curve: np.ndarray, first: int, last: int) -> float:
    """Highest value of a score curve ``[T]`` outside frames ``first..last`` (inclusive);
    0.0 when the span covers every frame."""
    curve = np.asarray(curve, dtype=np.float64).reshape(-1)
    rest = np.concatenate([curve[:max(first, 0)], curve[last + 1:]])
    return float(rest.max()) if rest.size else 0.0
