"""What determines each cached result of the VQ2D evaluation, and why one is redone
(docs/architecture.md#caches).

Two caches live in the output folder of ``tools/eval_vq2d.py`` (checkpoint mode):

* ``detections/<query>.npz``: one query's detections. Keyed by :func:`detection_inputs`:
  the checkpoint's CONTENT (a hash of the file, not its name or time), the model config,
  the frame resizing (``detection.frame_height``, ``min_size``, ``max_size``), the clip's
  frames (the mp4's size and modification time, the frame-cache folder's modification
  time and file count, the fps and the original frame size) and the query's own inputs
  (query frame, visual crop frame and box). Not the response track: inference never reads it.
* ``clips/<clip_uid>.json``: a clip's answers. Each query's answer is keyed by
  :func:`answer_inputs`: its detection inputs plus the ``peaks`` and ``tracking`` settings.

The inputs themselves (not only their hash) are stored with each result, so a result that
no longer fits says which input changed (:func:`changes`), e.g. ``query 0_2's visual crop
changed``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from vq2d.data.annotations import VQQuery
from vq2d.inference.frame_source import original_size_of

DETECTION_SETTINGS = ("frame_height", "min_size", "max_size")  # detection settings that change detections

_REASONS = {
    "checkpoint": "the checkpoint's weights changed",
    "model": "the model config changed",
    "detection": "the detection settings (frame_height, min_size, max_size) changed",
    "clip_file": "the clip file changed",
    "frame_cache": "the clip's cached frames changed",
    "clip_fps": "the clip's fps changed",
    "original_size": "the clip's original frame size changed",
    "query_frame": "{query}'s query frame changed",
    "visual_crop": "{query}'s visual crop changed",
    "peaks": "the peak settings changed",
    "tracking": "the tracking settings changed",
}


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able ``obj``."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_content_id(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """A hash of a file's size and bytes (a checkpoint rewritten with the same weights keeps it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return f"{Path(path).stat().st_size}:{digest.hexdigest()[:24]}"


def _stamp(path: Path) -> list[int] | None:
    """[size, modification time in ns] of a file; None when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _folder_stamp(path: Path) -> list[int] | None:
    """[modification time in ns, number of entries] of a folder (frame-cache writes are atomic
    renames, so any added or rewritten frame changes the time); None when missing."""
    try:
        return [path.stat().st_mtime_ns, sum(1 for _ in os.scandir(path))]
    except OSError:
        return None


def clip_inputs(settings: Mapping, clip_uid: str, queries: Sequence[VQQuery]) -> dict:
    """What the frames of a clip depend on (the same for every query of the clip)."""
    cache_root = settings.get("cache_root")
    size = original_size_of(queries)
    return {"clip_file": _stamp(Path(settings["clips_dir"]) / f"{clip_uid}.mp4"),
            "frame_cache": _folder_stamp(Path(cache_root) / clip_uid) if cache_root else None,
            "clip_fps": float(queries[0].clip_fps),
            "original_size": list(size) if size else None}


def query_inputs(query: VQQuery) -> dict:
    """The query's own inputs to inference: query frame and visual crop (not the response track)."""
    crop = query.visual_crop
    return {"query_frame": int(query.query_frame),
            "visual_crop": {"frame_number": int(crop.frame_number),
                            "box": [float(crop.x), float(crop.y), float(crop.width), float(crop.height)],
                            "original_size": [crop.original_width, crop.original_height]}}


def detection_inputs(settings: Mapping, clip: Mapping, query: VQQuery) -> dict:
    """Everything a query's cached detections depend on (``clip``: :func:`clip_inputs`)."""
    det = settings["detection"]
    return {"checkpoint": settings["checkpoint_id"], "model": settings.get("model"),
            "detection": {k: det.get(k) for k in DETECTION_SETTINGS}, **clip, **query_inputs(query)}


def answer_inputs(settings: Mapping, clip: Mapping, query: VQQuery) -> dict:
    """Everything a query's answer (its track) depends on: its detections' inputs, the peak
    and tracking settings."""
    return {**detection_inputs(settings, clip, query), "peaks": settings["peaks"], "tracking": settings["tracking"]}


def detection_part(answer: Mapping) -> dict:
    """The :func:`detection_inputs` inside :func:`answer_inputs`."""
    return {k: v for k, v in answer.items() if k not in ("peaks", "tracking")}


def clip_answer_inputs(settings: Mapping, clip_uid: str, queries: Sequence[VQQuery]) -> dict[str, dict]:
    """{query name: :func:`answer_inputs`} for the queries of one clip."""
    clip = clip_inputs(settings, clip_uid, queries)
    return {q.name: answer_inputs(settings, clip, q) for q in queries}


def query_label(query: VQQuery) -> str:
    """How reasons name a query within its clip: ``query <annotation index>_<query set>``."""
    return f"query {query.annotation_index}_{query.query_set}"


def changes(old: Mapping | None, new: Mapping, query: str = "a query") -> list[str]:
    """Why a result made with inputs ``old`` does not fit inputs ``new``: one reason per
    input that differs (empty when none does)."""
    if not isinstance(old, Mapping):
        return ["its results were made by an older version (no inputs recorded)"]
    reasons = []
    for name in dict.fromkeys([*new, *old]):
        if _canonical(old.get(name)) != _canonical(new.get(name)):
            reasons.append(_REASONS.get(name, f"{name} changed").format(query=query))
    return reasons


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
