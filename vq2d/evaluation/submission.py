"""Write VQ2D predictions in the challenge format (docs/vq2d.md#submission).

:func:`build_submission` mirrors the annotation file: the same videos, clips and
annotations, in the same order and number; every query set of every annotation gets an
entry (``{"bboxes": [], "score": 0.0}`` when there is no answer, as the official formatter
writes for invalid query sets too); ``annotation_uid`` is copied when the annotation has
one. Box corners are rounded to the nearest integer pixel, clipped at 0 and kept at least
one pixel wide and high, so the file always passes
:func:`vq2d.evaluation.validate.validate_submission`.
"""
from __future__ import annotations

import math
import os
from typing import Mapping

from episodic.errors import DataError
from episodic.io import atomic_write_json
from vq2d.data.annotations import QueryKey, QuerySet, VQAnnotationFile
from vq2d.evaluation.predictions import CHALLENGE, is_finite_number
from vq2d.evaluation.tracks import PredictedTrack, track_arrays


def _int_box(fno: int, x1: float, y1: float, x2: float, y2: float) -> dict:
    """Integer, non-negative corners with x2 > x1 and y2 > y1."""
    ix1, iy1 = max(int(round(x1)), 0), max(int(round(y1)), 0)
    ix2, iy2 = max(int(round(x2)), ix1 + 1), max(int(round(y2)), iy1 + 1)
    return {"fno": int(fno), "x1": ix1, "y1": iy1, "x2": ix2, "y2": iy2}


def track_entry(track: PredictedTrack | None) -> dict:
    """One query set's entry ``{"bboxes": [...], "score": float}``; None -> empty, 0.0.

    Raises ValueError on a non-finite score, a non-finite coordinate or frames that are
    not contiguous."""
    if track is None:
        return {"bboxes": [], "score": 0.0}
    if not is_finite_number(track.score):
        raise ValueError(f"score must be a finite number, got {track.score!r}")
    frames, boxes = track_arrays(track)
    if len(frames) and (frames[-1] - frames[0] + 1 != len(frames) or frames[0] < 0):
        raise ValueError(f"frames must be contiguous and >= 0, got {frames.tolist()}")
    if not all(math.isfinite(v) for v in boxes.reshape(-1)):
        raise ValueError("box coordinates must be finite")
    return {"bboxes": [_int_box(f, *b) for f, b in zip(frames.tolist(), boxes.tolist())],
            "score": float(track.score)}


def build_submission(annotations: VQAnnotationFile,
                     results: Mapping[QueryKey, PredictedTrack]) -> dict:
    """The challenge JSON (as a dict) for ``results``: QueryKey -> PredictedTrack.

    Raises DataError naming the queries when a result is for no valid query set of
    ``annotations`` or cannot be written (see :func:`track_entry`)."""
    valid = {q.key for q in annotations.queries()}
    errors = [f"{key}: no such valid query set in {annotations.path or 'the annotation file'}"
              for key in results if key not in valid]
    videos = []
    for video in annotations.videos:
        clips = []
        for clip in video.clips:
            preds = []
            for ai, ann in enumerate(clip.annotations):
                query_sets = {}
                for key, qs in ann.query_sets.items():
                    track = results.get(QueryKey(clip.clip_uid, ai, key)) if isinstance(qs, QuerySet) else None
                    try:
                        query_sets[key] = track_entry(track)
                    except ValueError as e:
                        errors.append(f'clip {clip.clip_uid}, annotation {ai}, query set "{key}": {e}')
                entry = {"annotation_uid": ann.annotation_uid} if ann.annotation_uid is not None else {}
                entry["query_sets"] = query_sets
                preds.append(entry)
            clips.append({"clip_uid": clip.clip_uid, "predictions": preds})
        videos.append({"video_uid": video.video_uid, "clips": clips})
    if errors:
        raise DataError(f"cannot build the VQ2D submission ({len(errors)} problems): " + "; ".join(errors[:10]))
    return {"version": annotations.version, "challenge": CHALLENGE, "results": {"videos": videos}}


def write_submission(path: str | os.PathLike, sub: dict) -> None:
    """Write the submission JSON atomically."""
    atomic_write_json(path, sub)
