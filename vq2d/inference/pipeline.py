"""One clip -> a response track per query: detection pass (cached per query), peak
detection, bidirectional tracking (docs/vq2d.md#detection-pass, docs/vq2d.md#peaks and docs/vq2d.md#tracking).

A query that cannot be answered (bad crop, query frame past the end of the clip, a tracker
failure) and every query of a clip that cannot be read get a :class:`QueryOutcome` with an
``error`` and no track: they are scored as empty tracks and the run goes on.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vq2d.data.annotations import VQQuery
from vq2d.evaluation.tracks import PredictedTrack
from vq2d.inference.cache_keys import changes, detection_part, query_label
from vq2d.inference.cache_keys import fingerprint as key_of
from vq2d.inference.detection_pass import DetectionPass, QueryDetections
from vq2d.inference.frame_source import ClipFrames
from vq2d.inference.peaks import PeakParams, best_outside, find_latest_peak
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
    score: the track's confidence (``peaks.track_score``: by default the top detection score at
        the peak frame minus half the best score outside the track).
    peak_frame / peak_score: the chosen frame and its smoothed score; fallback: no peak was
    found. frames_accessed: frames the detector looked at. error: why there is no answer.
    timings: seconds spent on this query's ``read`` / ``detection`` (its share of the clip's
    detection pass, by frames searched; 0 when the detections came from the cache),
    ``peaks`` and ``tracking`` (frames read while tracking included).
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
    timings: dict = field(default_factory=dict)  # seconds: read, detection, peaks, tracking

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
        return QueryOutcome.for_query(query, fallback=True, timings={"peaks": 0.0, "tracking": 0.0})
    start = time.perf_counter()
    curve = detections.score_curve()  # [T]
    peak = find_latest_peak(curve, peaks)
    box = detections.top_box(peak.frame)
    timings = {"peaks": time.perf_counter() - start, "tracking": 0.0}
    common = dict(peak_frame=peak.frame, peak_score=peak.smoothed_score, num_peaks=int(peak.peaks.size),
                  fallback=peak.fallback, frames_accessed=detections.num_frames, timings=timings)
    if box is None:  # no detection at all on the chosen frame
        return QueryOutcome.for_query(query, **common)
    start = time.perf_counter()
    if peak.fallback and peaks.fallback == "last_frame":  # the published systems: one box, no tracking
        boxes = {peak.frame: tuple(float(v) for v in box)}
    else:
        boxes = track_bidirectional(lambda: make_tracker(tracking.name, tracking.params, detections),
                                    peak_frame=peak.frame, peak_box=box, query_frame=detections.num_frames,
                                    images=images, max_length=tracking.max_length, chunk_size=tracking.chunk_size)
    timings["tracking"] = time.perf_counter() - start
    track = [[f, *boxes[f]] for f in sorted(boxes)]
    score = peaks.score_of(detections.scores[peak.frame, 0],
                           best_outside(curve, track[0][0], track[-1][0]))
    return QueryOutcome.for_query(query, track=track, score=score, **common)


class TimedFrames:
    """A :class:`ClipFrames` view that adds up the seconds spent reading frames
    (``seconds``); everything else is the wrapped object's."""

    def __init__(self, frames: ClipFrames):
        self._frames = frames
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._frames, name)

    def iter_frames(self, indices: Sequence[int]):
        start = time.perf_counter()
        it = iter(self._frames.iter_frames(indices))
        self.seconds += time.perf_counter() - start
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield item

    read = ClipFrames.read
    iter_ordered = ClipFrames.iter_ordered


def _pass_shares(queries: Sequence[VQQuery], read_s: float, total_s: float) -> dict[str, dict[str, float]]:
    """Each query's share (by frames searched) of a detection pass that took ``total_s``
    seconds, ``read_s`` of them reading frames: name -> {read, detection}."""
    weights = {q.name: max(q.query_frame, 1) for q in queries}
    whole = sum(weights.values()) or 1
    return {name: {"read": read_s * w / whole, "detection": max(total_s - read_s, 0.0) * w / whole}
            for name, w in weights.items()}


def detection_path(detections_dir: str | os.PathLike, query: VQQuery) -> Path:
    """``<detections_dir>/<query name>.npz``."""
    return Path(detections_dir) / f"{query.name}.npz"


def load_cached_detections(path: Path, fingerprint: str, inputs: Mapping | None = None,
                           label: str = "a query") -> QueryDetections | None:
    """The cached detections at ``path`` when they were made with the same inputs (same
    ``fingerprint``); otherwise None, and with ``inputs`` a line saying what changed."""
    if not path.is_file():
        return None
    try:
        detections, found = QueryDetections.load(path)
    except Exception as e:  # noqa: BLE001 - an unreadable cache entry is recomputed
        logger.warning("%s: %s; recomputing", path, e)
        return None
    if found == fingerprint:
        return detections
    if inputs is not None:
        reasons = changes(QueryDetections.load_inputs(path), inputs, label) or ["other inputs"]
        logger.info("%s: cached detections made with other inputs (%s); recomputing", path.name, "; ".join(reasons))
    return None


def process_clip(queries: Sequence[VQQuery], *, frames: ClipFrames, detector: DetectionPass, peaks: PeakParams,
                 tracking: TrackingSettings, detections_dir: str | os.PathLike, fingerprint: str = "",
                 reuse_detections: bool = True, progress=None, inputs: Mapping[str, Mapping] | None = None
                 ) -> list[QueryOutcome]:
    """Answer every query of one clip (``queries`` all share ``frames``' clip).

    Detections are read from ``detections_dir`` when cached with the same key (and
    ``reuse_detections``), else computed (all the missing queries of the clip in one pass)
    and cached there. The key of a query is the hash of its ``inputs[query name]``
    (:func:`vq2d.inference.cache_keys.answer_inputs`; its detection part), or
    ``fingerprint`` for every query when no ``inputs`` are given. ``progress``: optional
    callable(frames done)."""
    det_inputs = {name: detection_part(v) for name, v in inputs.items()} if inputs is not None else {}
    keys = {q.name: key_of(det_inputs[q.name]) if q.name in det_inputs else fingerprint for q in queries}
    detections: dict[str, QueryDetections] = {}
    errors: dict[str, str] = {}
    pending = []
    for q in queries:
        cached = load_cached_detections(detection_path(detections_dir, q), keys[q.name], det_inputs.get(q.name),
                                        query_label(q)) if reuse_detections else None
        if cached is not None:
            detections[q.name] = cached
        else:
            pending.append(q)
    shares = {q.name: {"read": 0.0, "detection": 0.0} for q in queries}
    if pending:
        timed, start = TimedFrames(frames), time.perf_counter()
        try:
            computed, errors = detector.run(timed, pending, progress=progress)
        except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the run
            logger.error("clip %s: detection pass failed: %s: %s", frames.clip_uid, type(e).__name__, e)
            computed, errors = {}, {q.name: f"{type(e).__name__}: {e}" for q in pending}
        shares.update(_pass_shares(pending, timed.seconds, time.perf_counter() - start))
        for q in pending:
            if q.name in computed:
                computed[q.name].save(detection_path(detections_dir, q), keys[q.name], det_inputs.get(q.name))
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
    for o in outcomes:
        o.timings = {**shares[o.name], "peaks": 0.0, "tracking": 0.0, **o.timings}
    return outcomes


def curve_arrays(detections: QueryDetections, peaks: PeakParams) -> dict[str, np.ndarray]:
    """Raw and smoothed score curves ``[T]`` and the kept peaks ``[P]`` (for plots)."""
    raw = detections.score_curve()
    result = find_latest_peak(raw, peaks)
    return {"raw": raw, "smoothed": result.smoothed, "peaks": result.peaks}
