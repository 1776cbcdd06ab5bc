"""The template matcher (:mod:`vq2d.baselines.template_matcher`) over a split, scored by the
toolkit's scorer exactly as ``tools/eval_vq2d.py`` scores a detector
(docs/vq2d.md#template-matcher-baseline)::

    python tools/template_match_vq2d.py data.root=data/synthetic split=val output_dir=OUT workers=2

Frames come from :class:`vq2d.inference.frame_source.ClipFrames` (the JPEG frame cache when
it holds every frame, else the clip's mp4), at the annotation's original size. Clips run on a
process pool (``workers``; 1 runs in this process). A query that cannot be answered (a bad
visual crop, a query frame past the end of the clip) and every query of a clip that cannot
be read get an error and no track: they are scored as empty tracks, counted and named in
metrics.json, and the tool exits 3 (``allow_failures=true``: 0).

Outputs in OUT, as checkpoint mode writes them (:func:`vq2d.inference.report.write_reports`):
``predictions.json`` (``submission.json`` for test_unannotated), ``metrics.json``,
``per_query.csv``, ``per_query.json``, ``log.txt`` and the merged config ``config.yaml``.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from episodic.config import save_config
from episodic.errors import DataError
from episodic.logging import progress, setup_logging
from vq2d.baselines.template_matcher import TemplateMatcher, cut_template, to_gray
from vq2d.data.annotations import VQQuery
from vq2d.inference.evaluate import load_split, resolve_data_paths
from vq2d.inference.frame_source import ClipFrames, frames_past_the_end, search_window
from vq2d.inference.pipeline import QueryOutcome, TimedFrames, _pass_shares
from vq2d.inference.pool import clip_frames, queries_by_clip
from vq2d.inference.report import write_reports

logger = logging.getLogger(__name__)


def answer_clip(queries: Sequence[VQQuery], frames: ClipFrames, matcher: TemplateMatcher) -> list[QueryOutcome]:
    """Answer every query of one clip (``queries`` all share ``frames``' clip): the search
    window (frames ``0 .. query_frame - 1``) is read once for all of them. Raises what
    reading the clip raises (DataError for a missing or unreadable clip); a query whose
    crop cannot be made or whose frames lie past the end of the clip gets an error.

    timings per query: ``read`` (its share of the clip's reading, by frames searched),
    ``detection`` (template matching), ``peaks`` (peak and track)."""
    errors = frames_past_the_end(queries, frames.num_frames)
    timed = TimedFrames(frames)
    crop_images = timed.read(sorted({q.visual_crop.frame_number for q in queries if q.name not in errors}))
    templates: dict[str, np.ndarray] = {}
    for q in queries:
        if q.name in errors:
            continue
        try:
            templates[q.name] = cut_template(crop_images[q.visual_crop.frame_number], q.visual_crop.xyxy)
        except DataError as e:
            errors[q.name] = f"query {q.name}: bad visual crop on frame {q.visual_crop.frame_number}: {e}"
    ready = [q for q in queries if q.name in templates]
    scores = {q.name: np.zeros(q.query_frame) for q in ready}
    boxes = {q.name: np.zeros((q.query_frame, 4)) for q in ready}
    scaled: dict[str, list[np.ndarray]] = {}
    match_s = dict.fromkeys(scores, 0.0)
    for t, image in search_window(timed, max([q.query_frame for q in ready] + [0]), crop_images):
        gray = to_gray(image)
        for q in ready:
            if t >= q.query_frame:
                continue
            start = time.perf_counter()
            if q.name not in scaled:
                scaled[q.name] = matcher.scaled_templates(templates[q.name], gray.shape)
            scores[q.name][t], boxes[q.name][t] = matcher.match_frame(gray, scaled[q.name])
            match_s[q.name] += time.perf_counter() - start
    shares = _pass_shares(ready, timed.seconds, timed.seconds)
    outcomes = []
    for q in queries:
        if q.name in errors:
            outcomes.append(QueryOutcome.failed(q, errors[q.name]))
            continue
        start = time.perf_counter()
        result = matcher.answer(scores[q.name], boxes[q.name])
        timings = {"read": shares[q.name]["read"], "detection": match_s[q.name],
                   "peaks": time.perf_counter() - start, "tracking": 0.0}
        found = result.peak_frame is not None  # False: query frame 0, nothing searched
        outcomes.append(QueryOutcome.for_query(
            q, track=result.track, score=result.score, peak_frame=result.peak_frame,
            peak_score=result.score if found else None, num_peaks=int(found), fallback=not found,
            frames_accessed=q.query_frame, timings=timings))
    return outcomes


def run_clip(settings: Mapping[str, Any], clip_uid: str, queries: Sequence[VQQuery],
             matcher: TemplateMatcher) -> list[QueryOutcome]:
    """:func:`answer_clip` on the clip's frames as ``settings`` say (clips_dir, cache_root);
    a clip that cannot be read fails each of its queries with the reason, never raises."""
    try:
        with clip_frames(settings, clip_uid, queries) as frames:
            return answer_clip(queries, frames, matcher)
    except Exception as e:  # noqa: BLE001 - one unreadable clip must not stop the run
        logger.error("clip %s: %s: %s", clip_uid, type(e).__name__, e)
        return [QueryOutcome.failed(q, f"{type(e).__name__}: {e}") for q in queries]


def _single_threaded_worker() -> None:
    cv2.setNumThreads(1)  # the pool's processes share the CPUs


def match_split(settings: Mapping[str, Any], queries: Sequence[VQQuery], matcher: TemplateMatcher,
                workers: int = 1) -> dict[str, QueryOutcome]:
    """Query name -> outcome for every query, clips on a pool of ``workers`` processes (1: in
    this process). A worker that dies fails the queries of its clips."""
    by_clip = queries_by_clip(queries)
    bar = progress(total=len(by_clip), desc="template matching", unit="clip")
    outcomes: dict[str, QueryOutcome] = {}
    if workers <= 1:
        for clip_uid, qs in by_clip.items():
            outcomes.update((o.name, o) for o in run_clip(settings, clip_uid, qs, matcher))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded_worker) as pool:
            futures = {pool.submit(run_clip, settings, clip_uid, qs, matcher): clip_uid
                       for clip_uid, qs in by_clip.items()}
            for future in as_completed(futures):
                clip_uid = futures[future]
                try:
                    found = future.result()
                except Exception as e:  # noqa: BLE001 - a dead worker fails its clip, not the run
                    logger.error("clip %s: worker failed: %s: %s", clip_uid, type(e).__name__, e)
                    found = [QueryOutcome.failed(q, f"worker failed: {type(e).__name__}: {e}")
                             for q in by_clip[clip_uid]]
                outcomes.update((o.name, o) for o in found)
                bar.update(1)
    bar.close()
    return outcomes


def evaluate_template_matcher(cfg: Any) -> dict:
    """The whole run of ``tools/template_match_vq2d.py`` (configs/vq2d/template_match.yaml;
    see module docstring); returns the metrics (also in OUT/metrics.json)."""
    if not cfg.output_dir:
        raise DataError("the template matcher needs output_dir=<folder for predictions and metrics>")
    workers = int(cfg.workers)
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    max_clips = cfg.get("max_clips")
    if max_clips is not None and int(max_clips) < 1:
        raise DataError(f"max_clips must be >= 1 (or null for all), got {max_clips}")
    try:
        matcher = TemplateMatcher.from_config(cfg.matcher)
    except (TypeError, ValueError) as e:
        raise DataError(f"bad matcher settings: {e}") from None
    settings = {**resolve_data_paths(cfg), "output_dir": str(Path(cfg.output_dir).resolve()),
                "max_clips": None if max_clips is None else int(max_clips), "workers": workers,
                "matcher": asdict(matcher), "plots": {"enabled": False}}
    out = Path(settings["output_dir"])
    setup_logging(out)
    save_config(cfg, out)
    annotations = load_split(settings["annotations"], settings["max_clips"])
    queries = annotations.queries()
    logger.info("%s: %d queries in %d clips; template matcher %s; %d worker(s)", settings["annotations"],
                len(queries), len({q.clip_uid for q in queries}), settings["matcher"], workers)
    start = time.perf_counter()
    outcomes = match_split(settings, queries, matcher, workers)
    metrics = write_reports(settings, annotations, outcomes)
    logger.info("template matcher: %d queries in %.1f s", len(queries), time.perf_counter() - start)
    return metrics
