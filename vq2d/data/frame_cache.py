"""The JPEG frame cache of VQ2D clips and which frames a split needs.

Layout: ``<root>/<clip_uid>/<frame_number:06d>.jpg``, ``frame_number`` a 5 fps clip frame
(docs/data.md#vq2d-annotations), the image at the annotation's original resolution. Files are written
atomically (temporary file + rename), so a JPEG in the cache is always complete.

Which frames a query needs (:func:`needed_frames`), by part:

* ``crop``: the visual-crop frame;
* ``response_track``: the response-track frames;
* ``negatives``: for a response-track frame ``f`` of a track of length ``L``, the frames
  ``f + k * L`` (``k = 1 .. negatives_per_positive``) before the query frame: the
  reference practice for frames where the object is presumably absent (docs/vq2d.md#training-samples);
* ``search_window``: frames ``0 .. query_frame - 1``, what evaluation searches.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from episodic.errors import DataError
from episodic.io import atomic_write_bytes
from vq2d.data.annotations import VQAnnotationFile, VQQuery

FRAME_PARTS = ("crop", "response_track", "negatives", "search_window")


class FrameCache:
    """Read and write the cached 5 fps frames of clips (``[H, W, 3]`` uint8 RGB)."""

    def __init__(
        self,
        root: str | os.PathLike,  # folder holding one sub-folder per clip_uid
        jpeg_quality: int = 95,  # JPEG quality of written frames, 0..100
    ):
        if not 0 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 0..100 (got {jpeg_quality})")
        self.root = Path(root)
        self.jpeg_quality = int(jpeg_quality)

    def path(self, clip_uid: str, frame_number: int) -> Path:
        return self.root / clip_uid / f"{int(frame_number):06d}.jpg"

    def has(self, clip_uid: str, frame_number: int) -> bool:
        return self.path(clip_uid, frame_number).is_file()

    def cached_frames(self, clip_uid: str) -> set[int]:
        """Frame numbers of the clip present in the cache (one directory listing)."""
        folder = self.root / clip_uid
        if not folder.is_dir():
            return set()
        out = set()
        for name in os.listdir(folder):
            stem, ext = os.path.splitext(name)
            if ext == ".jpg" and stem.isdigit():
                out.add(int(stem))
        return out

    def missing(self, clip_uid: str, frame_numbers: Iterable[int]) -> list[int]:
        """The sorted frame numbers not yet in the cache."""
        present = self.cached_frames(clip_uid)
        return sorted({int(f) for f in frame_numbers} - present)

    def load(self, clip_uid: str, frame_number: int) -> np.ndarray:
        """The cached frame as ``[H, W, 3]`` uint8 RGB."""
        path = self.path(clip_uid, frame_number)
        if not path.is_file():
            raise DataError(f"{path}: frame {frame_number} of clip {clip_uid} is not in the frame "
                            f"cache {self.root} (run tools/extract_frames.py with the needed parts)")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{path}: unreadable JPEG for frame {frame_number} of clip {clip_uid}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def save(self, clip_uid: str, frame_number: int, image: np.ndarray) -> Path:
        """Write ``image`` (``[H, W, 3]`` uint8 RGB) atomically; returns its path."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise DataError(f"could not encode frame {frame_number} of clip {clip_uid} as JPEG")
        path = self.path(clip_uid, frame_number)
        atomic_write_bytes(path, buf.tobytes())
        return path


def check_frame_parts(parts: Iterable[str]) -> set[str]:
    """``parts`` as a set; ValueError naming any part not in :data:`FRAME_PARTS`."""
    parts = set(parts)
    unknown = parts - set(FRAME_PARTS)
    if unknown:
        raise ValueError(f"unknown frame parts {sorted(unknown)}; choose from {list(FRAME_PARTS)}")
    return parts


def needed_frames(query: VQQuery, parts: Iterable[str], negatives_per_positive: int = 1) -> set[int]:
    """The 5 fps frame numbers of ``query``'s clip that ``parts`` need (see module doc)."""
    parts = check_frame_parts(parts)
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0 (got {negatives_per_positive})")
    frames: set[int] = set()
    if "crop" in parts:
        frames.add(query.visual_crop.frame_number)
    track = query.response_track or ()
    if "response_track" in parts:
        frames.update(box.frame_number for box in track)
    if "negatives" in parts:
        for box in track:
            for k in range(1, negatives_per_positive + 1):
                frame = box.frame_number + k * len(track)
                if frame < query.query_frame:
                    frames.add(frame)
    if "search_window" in parts:
        frames.update(range(query.query_frame))
    return frames


def frames_for_split(annotations: VQAnnotationFile, parts: Iterable[str],
                     negatives_per_positive: int = 1) -> dict[str, list[int]]:
    """``{clip_uid: sorted frame numbers}``: the union over each clip's valid queries.

    Clips whose queries need no frame are left out."""
    parts = check_frame_parts(parts)
    per_clip: dict[str, set[int]] = {}
    for query in annotations.queries():
        frames = needed_frames(query, parts, negatives_per_positive)
        if frames:
            per_clip.setdefault(query.clip_uid, set()).update(frames)
    return {clip_uid: sorted(frames) for clip_uid, frames in per_clip.items()}
