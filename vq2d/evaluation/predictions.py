"""Read a VQ2D challenge predictions (submission) file against its annotation file.

The format (docs/vq2d.md#submission)::

    {"version", "challenge": "ego4d_vq2d_challenge", "results": {"videos": [{"video_uid",
      "clips": [{"clip_uid", "predictions": [{"annotation_uid"?, "query_sets": {"1":
        {"bboxes": [{"fno", "x1", "y1", "x2", "y2"}, ...], "score": float}}}]}]}]}}

Videos, clips and annotations are matched by ORDER, as the challenge server does; an
``annotation_uid`` present on both sides must agree. Bad input never stops the reading:
every problem becomes one message naming the place in the file and the query (clip_uid,
annotation index, query set), the query concerned is scored as an empty track, and the
rest continue. A video, clip or annotation found out of place is still matched by its uid
(and reported). The same messages are the validator's verdict
(:func:`vq2d.evaluation.validate.validate_submission`).
"""
from __future__ import annotations

import math
import os
from typing import Any

from episodic.io import read_json
from vq2d.data.annotations import QueryKey, QuerySet, VQAnnotation, VQAnnotationFile, VQClip
from vq2d.evaluation.tracks import PredictedTrack

CHALLENGE = "ego4d_vq2d_challenge"
BOX_FIELDS = ("fno", "x1", "y1", "x2", "y2")
MAX_PROBLEMS_PER_TRACK = 3


def is_finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _box_problems(box: Any, where: str) -> list[str]:
    if not isinstance(box, dict):
        return [f"{where}: expected an object with {', '.join(BOX_FIELDS)}, got {type(box).__name__}"]
    out = []
    for name in BOX_FIELDS:
        if name not in box:
            out.append(f"{where}: missing field '{name}'")
        elif not _is_int(box[name]):
            kind = "float" if isinstance(box[name], float) else type(box[name]).__name__
            out.append(f"{where}.{name}: must be an integer, got {kind} {box[name]!r}")
        elif box[name] < 0:
            out.append(f"{where}.{name}: must be >= 0, got {box[name]}")
    if out:
        return out
    if box["x2"] <= box["x1"]:
        out.append(f"{where}: x2 ({box['x2']}) must be > x1 ({box['x1']})")
    if box["y2"] <= box["y1"]:
        out.append(f"{where}: y2 ({box['y2']}) must be > y1 ({box['y1']})")
    return out


def parse_track(entry: Any, where: str) -> tuple[PredictedTrack | None, list[str]]:
    """One query set's prediction ``{"bboxes": [...], "score": s}`` -> (track, problems).

    The track is None when there is any problem: boxes must have integer ``fno >= 0`` and
    integer non-negative corners with ``x2 > x1`` and ``y2 > y1``, cover contiguous frames
    (in any order, no frame twice); the score must be a finite number. An empty ``bboxes``
    list is a valid answer."""
    if not isinstance(entry, dict):
        return None, [f"{where}: expected an object with 'bboxes' and 'score', got {type(entry).__name__}"]
    problems = []
    if "score" not in entry:
        problems.append(f"{where}: missing field 'score'")
    elif not is_finite_number(entry["score"]):
        problems.append(f"{where}.score: must be a finite number, got {entry['score']!r}")
    bboxes = entry.get("bboxes")
    if not isinstance(bboxes, list):
        problems.append(f"{where}.bboxes: expected a list, got "
                        f"{'nothing' if bboxes is None else type(bboxes).__name__}")
        return None, problems
    box_problems = []
    for i, box in enumerate(bboxes):
        box_problems += _box_problems(box, f"{where}.bboxes[{i}]")
    if not box_problems:
        frames = sorted(b["fno"] for b in bboxes)
        for prev, cur in zip(frames, frames[1:]):
            if cur == prev:
                box_problems.append(f"{where}.bboxes: frame {cur} has more than one box")
            elif cur != prev + 1:
                box_problems.append(f"{where}.bboxes: not contiguous, frame {cur} follows frame {prev}")
    if len(box_problems) > MAX_PROBLEMS_PER_TRACK:
        extra = len(box_problems) - MAX_PROBLEMS_PER_TRACK
        box_problems = box_problems[:MAX_PROBLEMS_PER_TRACK] + [
            f"{where}.bboxes: ... and {extra} more problems in this track"]
    problems += box_problems
    if problems:
        return None, problems
    boxes = {b["fno"]: (b["x1"], b["y1"], b["x2"], b["y2"]) for b in bboxes}
    return PredictedTrack(boxes, float(entry["score"])), []


def _query_label(clip_uid: str, annotation_index: int, query_set: str) -> str:
    return f'clip {clip_uid}, annotation {annotation_index}, query set "{query_set}"'


class _Reader:
    """Walks a submission alongside the annotation file, collecting tracks and problems."""

    def __init__(self, annotations: VQAnnotationFile):
        self.annotations = annotations
        self.tracks: dict[QueryKey, PredictedTrack] = {
            q.key: PredictedTrack.empty() for q in annotations.queries()}
        self.problems: list[str] = []

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
        n = sum(isinstance(qs, QuerySet) for ai in annotation_indices
                for qs in clip.annotations[ai].query_sets.values())
        if n:
            self.report(f"{where}: {reason}; the {n} query sets of clip {clip.clip_uid} "
                        f"there are scored empty")

    # The walk ----------------------------------------------------------------------------------
    def read(self, sub: Any) -> None:
        if not isinstance(sub, dict):
            self.report(f"top level: expected an object, got {type(sub).__name__}; every query is scored empty")
            return
        if sub.get("version") != self.annotations.version:
            self.report(f"version: expected {self.annotations.version!r} (the annotation file's), "
                        f"got {sub.get('version')!r}")
        if sub.get("challenge") != CHALLENGE:
            self.report(f"challenge: expected {CHALLENGE!r}, got {sub.get('challenge')!r}")
        results = sub.get("results")
        if not isinstance(results, dict):
            self.report("results: expected an object with 'videos'; every query is scored empty")
            return
        videos = self._list_field(results, "videos", "results")
        if videos is None:
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
        for key, qs in ann.query_sets.items():
            qwhere = f'{where}.query_sets["{key}"]'
            label = _query_label(clip.clip_uid, ai, key)
            if not isinstance(qs, QuerySet):  # invalid query set: only its shape is checked
                entry = pqs.get(key)
                if entry is not None and not (isinstance(entry, dict) and "bboxes" in entry and "score" in entry):
                    self.report(f"{qwhere} ({label}, invalid query set): expected an object with "
                                f"'bboxes' and 'score'")
                continue
            if key not in pqs:
                self.report(f"{qwhere} ({label}): missing; scored empty")
                continue
            track, problems = parse_track(pqs[key], qwhere)
            if track is None:
                for p in problems:
                    self.report(f"{p} ({label}; scored empty)")
            else:
                self.tracks[QueryKey(clip.clip_uid, ai, key)] = track


def read_submission(sub: Any, annotations: VQAnnotationFile) -> tuple[dict[QueryKey, PredictedTrack], list[str]]:
    """Match a decoded submission to ``annotations``.

    Returns ({QueryKey: PredictedTrack} for every valid query set of the annotation file,
    in file order, empty where there is no usable answer; the list of problems)."""
    reader = _Reader(annotations)
    reader.read(sub)
    return reader.tracks, reader.problems


def load_predictions(path: str | os.PathLike, annotations: VQAnnotationFile
                     ) -> tuple[dict[QueryKey, PredictedTrack], list[str]]:
    """:func:`read_submission` of a JSON file (malformed JSON raises DataError)."""
    return read_submission(read_json(path), annotations)
