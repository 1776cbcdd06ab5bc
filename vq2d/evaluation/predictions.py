"""Read a VQ2D challenge predictions (submission) file against its annotation file.

The format (docs/vq2d.md#submission)::

    {"version", "challenge": "ego4d_vq2d_challenge", "results": {"videos": [{"video_uid",
      "clips": [{"clip_uid", "predictions": [{"annotation_uid"?, "query_sets": {"1":
        {"bboxes": [{"fno", "x1", "y1", "x2", "y2"}, ...], "score": float}}}]}]}]}}

Videos, clips and annotations are matched by ORDER, as the challenge server does; an
``annotation_uid`` present on both sides must agree. Boxes are read as the official
``BBox.from_json`` reads them: any numbers (float, negative, beyond the frame) taken as
they are, sorted by frame. Bad input never stops the reading: every problem becomes one
message naming the place in the file and the query (its name, clip_uid, annotation index,
query set), the query concerned is scored as an empty track, and the rest continue. A
video, clip or annotation found out of place is still matched by its uid (and reported).
Things the official scorer accepts but that are likely mistakes (a flipped box, a frame
given twice, a NaN score) are warnings, and scored as the official code scores them. The
same messages are the validator's verdict (:func:`vq2d.evaluation.validate.validate_submission`).

Where this reader and the official scorer differ (the official code raises on all of
these, or cannot read them): a track whose frames are not contiguous, a box with a
missing field, a coordinate that is not a finite number, a frame number that is not a
whole number, a missing or non-numeric score, a missing query set are each reported by
name and that query is scored as an empty track (score 0.0).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

import numpy as np

from episodic.io import read_json
from vq2d.data.annotations import QueryKey, VQAnnotation, VQAnnotationFile, VQClip
from vq2d.evaluation.tracks import PredictedTrack

CHALLENGE = "ego4d_vq2d_challenge"
BOX_FIELDS = ("fno", "x1", "y1", "x2", "y2")
MAX_PROBLEMS_PER_TRACK = 3


def is_finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def is_number(value: Any) -> bool:
    """True for an int or float (not a bool), NaN and infinities included."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _box_problems(box: Any, where: str) -> list[str]:
    if not isinstance(box, dict):
        return [f"{where}: expected an object with {', '.join(BOX_FIELDS)}, got {type(box).__name__}"]
    out = []
    for name in BOX_FIELDS:
        if name not in box:
            out.append(f"{where}: missing field '{name}'")
        elif not is_finite_number(box[name]):
            out.append(f"{where}.{name}: must be a finite number, got {box[name]!r}")
        elif name == "fno" and box[name] != int(box[name]):
            out.append(f"{where}.fno: must be a whole frame number, got {box[name]!r}")
    return out


def parse_track(entry: Any, where: str) -> tuple[PredictedTrack | None, list[str], list[str]]:
    """One query set's prediction ``{"bboxes": [...], "score": s}`` -> (track, problems,
    warnings).

    The track (rows ``[N, 5]`` float64 sorted by frame, score as given) is None when there
    is any problem: every box needs ``fno, x1, y1, x2, y2`` as finite numbers (``fno`` a
    whole number), the frames sorted must be contiguous as the official ``ResponseTrack``
    checks (``len == last - first + 1``), the score must be a number. An empty ``bboxes``
    list is a valid answer. Warnings: a flipped or empty box (x2 <= x1 or y2 <= y1), a
    frame given twice, a NaN or infinite score."""
    if not isinstance(entry, dict):
        return None, [f"{where}: expected an object with 'bboxes' and 'score', got {type(entry).__name__}"], []
    problems, warnings = [], []
    if "score" not in entry:
        problems.append(f"{where}: missing field 'score'")
    elif not is_number(entry["score"]):
        problems.append(f"{where}.score: must be a number, got {entry['score']!r}")
    elif not math.isfinite(entry["score"]):
        warnings.append(f"{where}.score: {entry['score']!r} (ranked as numpy sorts it: NaN first)")
    bboxes = entry.get("bboxes")
    if not isinstance(bboxes, list):
        problems.append(f"{where}.bboxes: expected a list, got "
                        f"{'nothing' if bboxes is None else type(bboxes).__name__}")
        return None, problems, warnings
    box_problems = []
    for i, box in enumerate(bboxes):
        box_problems += _box_problems(box, f"{where}.bboxes[{i}]")
    rows = np.zeros((0, 5), dtype=np.float64)
    if not box_problems and bboxes:
        rows = np.array([[b[k] for k in BOX_FIELDS] for b in bboxes], dtype=np.float64)
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        first, last = int(rows[0, 0]), int(rows[-1, 0])
        if len(rows) != last - first + 1:
            box_problems.append(f"{where}.bboxes: frames not contiguous: {len(rows)} boxes on frames "
                                f"{first}..{last} (the official scorer raises on this track)")
        if len(np.unique(rows[:, 0])) != len(rows):
            warnings.append(f"{where}.bboxes: a frame has more than one box (the last one is matched)")
        flipped = int(np.count_nonzero((rows[:, 3] <= rows[:, 1]) | (rows[:, 4] <= rows[:, 2])))
        if flipped:
            warnings.append(f"{where}.bboxes: {flipped} boxes with x2 <= x1 or y2 <= y1 (negative or "
                            f"zero area, summed as they are)")
    if len(box_problems) > MAX_PROBLEMS_PER_TRACK:
        extra = len(box_problems) - MAX_PROBLEMS_PER_TRACK
        box_problems = box_problems[:MAX_PROBLEMS_PER_TRACK] + [
            f"{where}.bboxes: ... and {extra} more problems in this track"]
    problems += box_problems
    if problems:
        return None, problems, warnings
    return PredictedTrack(rows, entry["score"]), [], warnings


def _query_label(clip_uid: str, annotation_index: int, query_set: str) -> str:
    return f'query {clip_uid}_{annotation_index}_{query_set}: clip {clip_uid}, annotation ' \
           f'{annotation_index}, query set "{query_set}"'


class SubmissionReader:
    """Walks a submission alongside the annotation file (:meth:`read`), collecting
    ``tracks``, ``problems``, ``warnings`` and the ``unreadable`` queries."""

    def __init__(self, annotations: VQAnnotationFile, keys: Iterable[QueryKey] | None = None):
        self.annotations = annotations
        keys = [q.key for q in annotations.queries()] if keys is None else keys
        self.tracks: dict[QueryKey, PredictedTrack] = {k: PredictedTrack.empty() for k in keys}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.unreadable: list[QueryKey] = []  # queries scored empty because of a problem

    def report(self, message: str) -> None:
        self.problems.append(message)

    # Matching by order (fallback: by uid) ----------------------------------------------------
    def _match(self, items: list, index: int, uid_field: str, uid: str | None, where: str,
               what: str, used: set[int], required: bool) -> tuple[int, dict] | None:
        """The entry of ``items`` answering annotation entry ``index``: the one at the same
        position when its ``uid_field`` agrees (or is absent), else the first unused one
        carrying ``uid``. ``required``: a missing ``uid_field`` is reported."""
        here = items[index] if index < len(items) else None
        if index not in used and isinstance(here, dict) and (uid is None or here.get(uid_field, uid) == uid):
            if required and uid_field not in here:
                self.report(f"{where}[{index}]: missing field '{uid_field}' (expected {uid})")
            used.add(index)
            return index, here
        for j, other in enumerate(items):
            if j not in used and isinstance(other, dict) and uid is not None and other.get(uid_field) == uid:
                self.report(f"{where}[{index}]: expected {what} {uid} here; found it at "
                            f"{where}[{j}] (entries must follow the annotation file's order)")
                used.add(j)
                return j, other
        if here is None:
            self.report(f"{where}: no entry for {what} {uid if uid is not None else index} "
                        f"(annotation file position {index})")
        elif not isinstance(here, dict):
            self.report(f"{where}[{index}]: expected an object, got {type(here).__name__}")
        else:
            self.report(f"{where}[{index}]: expected {what} {uid}, found {here.get(uid_field)!r}")
        return None

    def _list_field(self, node: dict, key: str, where: str) -> list | None:
        value = node.get(key)
        if not isinstance(value, list):
            self.report(f"{where}.{key}: expected a list, got "
                        f"{'nothing' if value is None else type(value).__name__}")
            return None
        return value

    def _count(self, items: list, expected: int, where: str, what: str) -> None:
        if len(items) != expected:
            self.report(f"{where}: {len(items)} {what}, the annotation file has {expected}")

    def _report_unused(self, items: list, used: set[int], where: str, uid_field: str) -> None:
        for j, item in enumerate(items):
            if j not in used:
                uid = item.get(uid_field) if isinstance(item, dict) else None
                label = f" ({uid_field} {uid})" if uid is not None else ""
                self.report(f"{where}[{j}]{label}: not in the annotation file; ignored")

    def _scored_empty(self, clip: VQClip, annotation_indices: range, where: str, reason: str) -> None:
        keys = [QueryKey(clip.clip_uid, ai, k) for ai in annotation_indices for k in clip.annotations[ai].query_sets]
        keys = [k for k in keys if k in self.tracks]
        self.unreadable += keys
        n = len(keys)
        if n:
            self.report(f"{where}: {reason}; the {n} query sets of clip {clip.clip_uid} "
                        f"there are scored empty")

    # The walk ----------------------------------------------------------------------------------
    def read(self, sub: Any) -> None:
        if not isinstance(sub, dict):
            self.report(f"top level: expected an object, got {type(sub).__name__}; every query is scored empty")
            self.unreadable = list(self.tracks)
            return
        if sub.get("version") != self.annotations.version:
            self.report(f"version: expected {self.annotations.version!r} (the annotation file's), "
                        f"got {sub.get('version')!r}")
        if sub.get("challenge") != CHALLENGE:
            self.report(f"challenge: expected {CHALLENGE!r}, got {sub.get('challenge')!r}")
        results = sub.get("results")
        if not isinstance(results, dict):
            self.report("results: expected an object with 'videos'; every query is scored empty")
            self.unreadable = list(self.tracks)
            return
        videos = self._list_field(results, "videos", "results")
        if videos is None:
            self.unreadable = list(self.tracks)
            return
        self._count(videos, len(self.annotations.videos), "results.videos", "videos")
        used: set[int] = set()
        for vi, video in enumerate(self.annotations.videos):
            match = self._match(videos, vi, "video_uid", video.video_uid, "results.videos", "video",
                                used, required=True)
            if match is not None:
                self._read_video(video.clips, match[1], f"results.videos[{match[0]}]")
                continue
            for clip in video.clips:
                self._scored_empty(clip, range(len(clip.annotations)), f"results.videos[{vi}]",
                                   f"no predictions for video {video.video_uid}")
        self._report_unused(videos, used, "results.videos", "video_uid")

    def _read_video(self, clips: list[VQClip], pv: dict, where: str) -> None:
        pclips = self._list_field(pv, "clips", where)
        if pclips is None:
            for clip in clips:
                self._scored_empty(clip, range(len(clip.annotations)), where, "no clips")
            return
        self._count(pclips, len(clips), f"{where}.clips", "clips")
        used: set[int] = set()
        for ci, clip in enumerate(clips):
            match = self._match(pclips, ci, "clip_uid", clip.clip_uid, f"{where}.clips", "clip", used,
                                required=True)
            if match is None:
                self._scored_empty(clip, range(len(clip.annotations)), f"{where}.clips[{ci}]",
                                   "no predictions for this clip")
            else:
                self._read_clip(clip, match[1], f"{where}.clips[{match[0]}]")
        self._report_unused(pclips, used, f"{where}.clips", "clip_uid")

    def _read_clip(self, clip: VQClip, pc: dict, where: str) -> None:
        preds = self._list_field(pc, "predictions", where)
        if preds is None:
            self._scored_empty(clip, range(len(clip.annotations)), where, "no predictions")
            return
        self._count(preds, len(clip.annotations), f"{where}.predictions", "annotations")
        used: set[int] = set()
        for ai, ann in enumerate(clip.annotations):
            match = self._match(preds, ai, "annotation_uid", ann.annotation_uid,
                                f"{where}.predictions", "annotation", used, required=False)
            if match is None:
                self._scored_empty(clip, range(ai, ai + 1), f"{where}.predictions[{ai}]",
                                   f"no prediction for annotation {ai}")
            else:
                self._read_annotation(clip, ai, ann, match[1], f"{where}.predictions[{match[0]}]")
        self._report_unused(preds, used, f"{where}.predictions", "annotation_uid")

    def _read_annotation(self, clip: VQClip, ai: int, ann: VQAnnotation, pa: dict, where: str) -> None:
        pqs = pa.get("query_sets")
        if not isinstance(pqs, dict):
            self.report(f"{where}.query_sets: expected an object keyed by query set, got "
                        f"{'nothing' if pqs is None else type(pqs).__name__}")
            self._scored_empty(clip, range(ai, ai + 1), where, "no query sets")
            return
        for key in pqs:
            if key not in ann.query_sets:
                self.report(f'{where}.query_sets["{key}"]: query set "{key}" is not in annotation {ai} '
                            f"of clip {clip.clip_uid}; ignored")
        for key in ann.query_sets:
            qwhere = f'{where}.query_sets["{key}"]'
            label = _query_label(clip.clip_uid, ai, key)
            if QueryKey(clip.clip_uid, ai, key) not in self.tracks:  # invalid: only its shape is checked
                entry = pqs.get(key)
                if entry is not None and not (isinstance(entry, dict) and "bboxes" in entry and "score" in entry):
                    self.report(f"{qwhere} ({label}, invalid query set): expected an object with "
                                f"'bboxes' and 'score'")
                continue
            if key not in pqs:
                self.report(f"{qwhere} ({label}): missing; scored empty")
                self.unreadable.append(QueryKey(clip.clip_uid, ai, key))
                continue
            track, problems, warnings = parse_track(pqs[key], qwhere)
            self.warnings += [f"{w} ({label})" for w in warnings]
            if track is None:
                for p in problems:
                    self.report(f"{p} ({label}; scored empty)")
                self.unreadable.append(QueryKey(clip.clip_uid, ai, key))
            else:
                self.tracks[QueryKey(clip.clip_uid, ai, key)] = track


def read_submission(sub: Any, annotations: VQAnnotationFile, keys: Iterable[QueryKey] | None = None
                    ) -> tuple[dict[QueryKey, PredictedTrack], list[str], list[str]]:
    """Match a decoded submission to ``annotations``.

    keys: the query sets that need an answer, in file order (default: the valid query sets
    of ``annotations``; the scorer passes the ones the official code reads as valid).
    Returns ({QueryKey: PredictedTrack} for every one of ``keys``, empty where there is no
    usable answer; the problems; the warnings)."""
    reader = SubmissionReader(annotations, keys)
    reader.read(sub)
    return reader.tracks, reader.problems, reader.warnings


def load_predictions(path: str | os.PathLike, annotations: VQAnnotationFile
                     ) -> tuple[dict[QueryKey, PredictedTrack], list[str], list[str]]:
    """:func:`read_submission` of a JSON file (malformed JSON raises DataError)."""
    return read_submission(read_json(path), annotations)
