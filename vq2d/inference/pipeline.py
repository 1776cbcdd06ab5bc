"""One clip -> a response track per query: detection pass (cached per query), peak
detection, bidirectional tracking (docs/vq2d.md#detection-pass, docs/vq2d.md#peaks and docs/vq2d.md#tracking).

A query that cannot be answered (bad crop, query frame past the end of the clip, a tracker
failure) and every query of a clip that cannot be read get a :class:`QueryOutcome` with an
``error`` and no track: they are scored as empty tracks and the run goes on.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vq2d.data.annotations import VQQuery
from vq2d.evaluation.tracks import PredictedTrack
from vq2d.inference.detection_pass import DetectionPass, QueryDetections
from vq2d.inference.frame_source import ClipFrames
from vq2d.inference.peaks import PeakParams, find_latest_peak
from vq2d.inference.tracking import make_tracker, track_bidirectional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingSettings:
    """The ``tracking`` group of configs/vq2d/eval.yaml.

    name: a registered tracker (vq2d.inference.tracking.TRACKERS).
    params: keyword arguments of that tracker.
    max_length: frames tracked at most in each direction (None: no cap).
    chunk_size: frames read at a time by pixel trackers.
    """

    name: str = "association"
    params: dict = field(default_factory=dict)
    max_length: int | None = None
    chunk_size: int = 32

    @classmethod
    def from_config(cls, cfg: Mapping) -> "TrackingSettings":
        """``cfg["params"]`` holds one block per tracker; the chosen tracker's is used."""
        cfg = dict(cfg)
        per_tracker = dict(cfg.pop("params", None) or {})
        params = {k: v for k, v in dict(per_tracker.get(cfg.get("name", cls.name)) or {}).items()}
        return cls(params=params, **cfg)


@dataclass
class QueryOutcome:
    """What the pipeline answered for one query (JSON-able; one entry of per_query.json).

    track: rows ``[fno, x1, y1, x2, y2]`` on contiguous frames (empty: no answer).
    score: the track's confidence (top detection score at the peak frame).
    peak_frame / peak_score: the chosen frame and its smoothed score; fallback: no peak was
    found. frames_accessed: frames the detector looked at. error: why there is no answer.
    """

    name: str
    clip_uid: str
    annotation_index: int
    query_set: str
    query_frame: int
    track: list = field(default_factory=list)
    score: float = 0.0
    peak_frame: int | None = None
    peak_score: float | None = None
    num_peaks: int = 0
    fallback: bool = False
    frames_accessed: int = 0
    error: str | None = None

    @classmethod
    def for_query(cls, query: VQQuery, **kwargs: Any) -> "QueryOutcome":
        return cls(name=query.name, clip_uid=query.clip_uid, annotation_index=query.annotation_index,
                   query_set=query.query_set, query_frame=query.query_frame, **kwargs)

    @classmethod
    def failed(cls, query: VQQuery, error: str) -> "QueryOutcome":
        return cls.for_query(query, error=error)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "QueryOutcome":
        return cls(**d)

    def predicted_track(self) -> PredictedTrack:
        return PredictedTrack({int(r[0]): tuple(float(v) for v in r[1:5]) for r in self.track}, float(self.score))


def answer_query(query: VQQuery, detections: QueryDetections, *, peaks: PeakParams, tracking: TrackingSettings,
                 images: ClipFrames | None = None) -> QueryOutcome:
    """Peak -> initial box -> bidirectional track, for one query with its detections."""
    if detections.num_frames == 0:  # query frame 0: nothing to search
        return QueryOutcome.for_query(query, fallback=True)
    peak = find_latest_peak(detections.score_curve(), peaks)
    box = detections.top_box(peak.frame)
    common = dict(peak_frame=peak.frame, peak_score=peak.smoothed_score, num_peaks=int(peak.peaks.size),
                  fallback=peak.fallback, frames_accessed=detections.num_frames)
    if box is None:  # no detection at all on the chosen frame
        return QueryOutcome.for_query(query, **common)
    score = float(detections.scores[peak.frame, 0])
    if peak.fallback:
        boxes = {peak.frame: tuple(float(v) for v in box)}
    else:
        boxes = track_bidirectional(lambda: make_tracker(tracking.name, tracking.params, detections),
                                    peak_frame=peak.frame, peak_box=box, query_frame=detections.num_frames,
                                    images=images, max_length=tracking.max_length, chunk_size=tracking.chunk_size)
    track = [[f, *boxes[f]] for f in sorted(boxes)]
    return QueryOutcome.for_query(query, track=track, score=score, **common)


def detection_path(detections_dir: str | os.PathLike, query: VQQuery) -> Path:
    """``<detections_dir>/<query name>.npz``."""
    return Path(detections_dir) / f"{query.name}.npz"


def load_cached_detections(path: Path, fingerprint: str) -> QueryDetections | None:
    """The cached detections at ``path`` when they were made with the same settings."""
    if not path.is_file():
        return None
    try:
        detections, found = QueryDetections.load(path)
    except Exception as e:  # noqa: BLE001 - an unreadable cache entry is recomputed
        logger.warning("%s: %s; recomputing", path, e)
        return None
    return detections if found == fingerprint else None


def process_clip(queries: Sequence[VQQuery], *, frames: ClipFrames, detector: DetectionPass, peaks: PeakParams,
                 tracking: TrackingSettings, detections_dir: str | os.PathLike, fingerprint: str = "",
                 reuse_detections: bool = True, progress=None) -> list[QueryOutcome]:
    """Answer every query of one clip (``queries`` all share ``frames``' clip).

    Detections are read from ``detections_dir`` when cached with the same ``fingerprint``
    (and ``reuse_detections``), else computed (all the missing queries of the clip in one
    pass) and cached there. ``progress``: optional callable(frames done)."""
    detections: dict[str, QueryDetections] = {}
    errors: dict[str, str] = {}
    pending = []
    for q in queries:
        cached = load_cached_detections(detection_path(detections_dir, q), fingerprint) if reuse_detections else None
        if cached is not None:
            detections[q.name] = cached
        else:
            pending.append(q)
    if pending:
        try:
            computed, errors = detector.run(frames, pending, progress=progress)
        except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the run
            logger.error("clip %s: detection pass failed: %s: %s", frames.clip_uid, type(e).__name__, e)
            computed, errors = {}, {q.name: f"{type(e).__name__}: {e}" for q in pending}
        for q in pending:
            if q.name in computed:
                computed[q.name].save(detection_path(detections_dir, q), fingerprint)
        detections.update(computed)
    outcomes = []
    for q in queries:
        if q.name not in detections:
            error = errors.get(q.name, "no detections")
            logger.warning("query %s: %s", q.name, error)
            outcomes.append(QueryOutcome.failed(q, error))
            continue
        try:
            outcomes.append(answer_query(q, detections[q.name], peaks=peaks, tracking=tracking, images=frames))
        except Exception as e:  # noqa: BLE001 - one failing query is scored empty
            logger.exception("query %s: answering failed", q.name)
            outcomes.append(QueryOutcome.failed(q, f"{type(e).__name__}: {e}"))
    return outcomes


def curve_arrays(detections: QueryDetections, peaks: PeakParams) -> dict[str, np.ndarray]:
    """Raw and smoothed score curves ``[T]`` and the kept peaks ``[P]`` (for plots)."""
    raw = detections.score_curve()
    result = find_latest_peak(raw, peaks)
    return {"raw": raw, "smoothed": result.smoothed, "peaks": result.peaks}
