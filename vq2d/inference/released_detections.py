"""The officially released precomputed VQ2D detections as a detection source (no model, no GPU).

The EGO4D baseline releases, per model, the detections of its detection pass
(``ego4d --datasets vq2d_detections``; EGO4D/episodic-memory ``VQ2D/extract_vq_detection_scores.py``
writes them): one file per query, ``<annotation_uid>_<query_set>.pt``, a ``torch.save`` of
``{"ret_bboxes": [[BBox, ...] per frame], "ret_scores": [[float, ...] per frame]}`` for the
frames ``0 .. query_frame-1`` of the query's search window, where ``BBox`` is the reference's
``vq2d.structures.BBox(fno, x1, y1, x2, y2)`` (integer pixels of the annotation's resolution).

:class:`ReleasedDetections` stands in for :class:`vq2d.inference.detection_pass.DetectionPass`
in the pipeline: ``tools/eval_vq2d.py detections=DIR ...`` reads those files into the
per-query detection cache (``OUT/detections/<query>.npz``) and runs peaks + tracking on them
(docs/vq2d.md#released-weights). A file that does not fit its query (another number of
frames, boxes of other frames) fails that query with a message naming the file.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from episodic.errors import DataError
from vq2d.data.annotations import VQQuery
from vq2d.inference.detection_pass import QueryDetections


class ReleasedBox:
    """What a pickled reference ``vq2d.structures.BBox`` is read as (the reference package is
    not needed): ``fno``, ``x1``, ``y1``, ``x2``, ``y2``."""

    fno: int
    x1: float
    y1: float
    x2: float
    y2: float


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name == "BBox" and module.endswith("structures"):
            return ReleasedBox
        return super().find_class(module, name)


_PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=lambda f, **kw: _Unpickler(f, **kw).load(),
                                __name__="released_detections_pickle")


def released_path(root: str | os.PathLike, query: VQQuery) -> Path:
    """``<root>/<annotation_uid>_<query_set>.pt``, the released file of ``query``."""
    return Path(root) / f"{query.annotation_uid}_{query.query_set}.pt"


def released_identity(root: str | os.PathLike) -> str:
    """A short id of a released detections folder for the cache fingerprints: its path and
    every ``.pt`` file's name, size and modification time (a file rewritten in place changes
    it, which the folder's own modification time would not)."""
    path = Path(root).resolve()
    stamps = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.glob("*.pt"))
    return "released:" + hashlib.sha1(f"{path}|{stamps}".encode()).hexdigest()[:16]


def _box(box, path: Path, frame: int) -> list[float]:
    if hasattr(box, "x1"):
        values = [box.x1, box.y1, box.x2, box.y2]
        fno = getattr(box, "fno", frame)
        if fno is not None and int(fno) != frame:
            raise DataError(f"{path}: entry {frame} of ret_bboxes holds a box of frame {fno}: "
                            "the file is not in the released layout (one list per searched frame, in order)")
        return [float(v) for v in values]
    values = list(box)
    if len(values) != 4:
        raise DataError(f"{path}: a box of frame {frame} is {box!r}; expected BBox(fno, x1, y1, x2, y2) or 4 numbers")
    return [float(v) for v in values]


def read_released_detections(path: str | os.PathLike, query: VQQuery) -> QueryDetections:
    """The released detections of ``query`` from its file -> :class:`QueryDetections` (boxes of
    each frame sorted by decreasing score). Raises DataError naming the file when it is not in
    the released layout or does not fit the query (its search window has ``query_frame``
    frames)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no released detections for query {query.name} "
                        f"(annotation_uid {query.annotation_uid}, query set {query.query_set})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a bad file
        raise DataError(f"{path}: cannot read as a released detections file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or "ret_bboxes" not in obj or "ret_scores" not in obj:
        found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: expected the released layout {{'ret_bboxes': [...], 'ret_scores': [...]}}, "
                        f"found {found}")
    bboxes, scores = list(obj["ret_bboxes"]), list(obj["ret_scores"])
    if len(bboxes) != query.query_frame or len(scores) != query.query_frame:
        raise DataError(f"{path}: detections of {len(bboxes)} frames, but query {query.name} searches "
                        f"{query.query_frame} frames (0..{query.query_frame - 1}): a file of another query or "
                        "another annotation version?")
    k = max([len(s) for s in scores] + [1])
    detections = QueryDetections.empty(query.query_frame, k)
    for t, (frame_boxes, frame_scores) in enumerate(zip(bboxes, scores)):
        if len(frame_boxes) != len(frame_scores):
            raise DataError(f"{path}: frame {t} has {len(frame_boxes)} boxes but {len(frame_scores)} scores")
        if not len(frame_scores):
            continue
        boxes = np.array([_box(b, path, t) for b in frame_boxes], dtype=np.float32).reshape(-1, 4)
        values = np.asarray(frame_scores, dtype=np.float32).reshape(-1)
        order = np.argsort(-values, kind="stable")
        detections.set_frame(t, boxes[order], values[order])
    return detections


def check_released_folder(root: str | os.PathLike, queries: Sequence[VQQuery]) -> int:
    """How many of ``queries`` have a file in ``root``; DataError when the folder is missing or
    holds none of them (the detections of another split or annotation file)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: released detections folder not found")
    found = sum(released_path(root, q).is_file() for q in queries)
    if queries and found == 0:
        example = released_path(root, queries[0]).name
        raise DataError(f"{root}: holds no detections for the queries of this annotation file (expected files "
                        f"named <annotation_uid>_<query_set>.pt, e.g. {example}); detections of another split?")
    return found


class ReleasedDetections:
    """A detection source reading the released files of ``root`` (the interface of
    :meth:`vq2d.inference.detection_pass.DetectionPass.run`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def run(self, frames, queries: Sequence[VQQuery], progress=None
            ) -> tuple[dict[str, QueryDetections], dict[str, str]]:
        """({query name: detections}, {query name: error}) for ``queries`` (``frames`` unused)."""
        detections, errors = {}, {}
        for q in queries:
            try:
                detections[q.name] = read_released_detections(released_path(self.root, q), q)
            except DataError as e:
                errors[q.name] = str(e)
            if progress is not None:
                progress(q.query_frame)
        return detections, errors
