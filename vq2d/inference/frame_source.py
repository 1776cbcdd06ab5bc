"""The frames of one clip for inference: from the JPEG frame cache when it holds every frame
asked for, else decoded from the clip's mp4 with :class:`vq2d.data.frames.ClipReader`.

Frames are ``[H, W, 3]`` uint8 RGB at the annotation's original resolution (the reader
resizes decoded frames to ``original_size``; a cache written at another size, e.g. by an
extraction with a smaller frame height, is rescaled to it the same way, with a warning
once per clip), so boxes of the annotation file apply to them directly.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np

from episodic.errors import DataError
from vq2d.data.annotations import VQQuery
from vq2d.data.frame_cache import FrameCache
from vq2d.data.frames import ClipReader

logger = logging.getLogger(__name__)


def original_size_of(queries: Sequence[VQQuery]) -> tuple[int, int] | None:
    """(width, height) the boxes of a clip's queries refer to, from the first box that
    gives both ``original_width`` and ``original_height``; None when no box does."""
    for q in queries:
        for box in (q.visual_crop, *(q.response_track or ())):
            if box.original_width and box.original_height:
                return int(box.original_width), int(box.original_height)
    return None


def frames_past_the_end(queries: Sequence[VQQuery], num_frames: int | None) -> dict[str, str]:
    """Query name -> error for the queries of a clip of ``num_frames`` frames (None: unknown,
    no query is flagged) whose query frame or visual-crop frame lies past its end."""
    errors = {}
    for q in queries:
        if num_frames is not None and q.query_frame > num_frames:
            errors[q.name] = f"query frame {q.query_frame} is past the end of clip {q.clip_uid} ({num_frames} frames)"
        elif num_frames is not None and q.visual_crop.frame_number >= num_frames:
            errors[q.name] = (f"visual crop frame {q.visual_crop.frame_number} is past the end of clip "
                              f"{q.clip_uid} ({num_frames} frames)")
    return errors


class ClipFrames:
    """Frames of one clip, read sequentially (each call is one forward pass).

    Use as a context manager (or call :meth:`close`); the mp4 is opened on first use.
    """

    def __init__(
        self,
        clip_uid: str,
        video_path: str | os.PathLike | None,  # the clip's mp4 (None: cache only)
        *,
        clip_fps: float = 5.0,  # rate of the annotation's frame numbers
        original_size: tuple[int, int] | None = None,  # (width, height) boxes refer to
        cache: FrameCache | None = None,  # JPEG frame cache, used when it has every frame asked for
        decode_threads: int = 0,  # FFmpeg threads (0: FFmpeg chooses)
    ):
        self.clip_uid = clip_uid
        self.video_path = None if video_path is None else Path(video_path)
        self.clip_fps = clip_fps
        self.original_size = original_size
        self.cache = cache
        self.decode_threads = decode_threads
        self._reader: ClipReader | None = None
        self._warned_size = False

    # -- the mp4 ----------------------------------------------------------------------
    @property
    def reader(self) -> ClipReader:
        if self._reader is None:
            if self.video_path is None:
                raise DataError(f"clip {self.clip_uid}: frames missing from the frame cache and no clip file given")
            self._reader = ClipReader(self.video_path, clip_fps=self.clip_fps, original_size=self.original_size,
                                      num_threads=self.decode_threads)
        return self._reader

    @property
    def num_frames(self) -> int | None:
        """Frames in the clip file; None when there is no file (cache only)."""
        if self.video_path is None or not self.video_path.is_file():
            return None
        return self.reader.num_frames

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "ClipFrames":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------
    def _cached(self, indices: Sequence[int]) -> bool:
        return self.cache is not None and not self.cache.missing(self.clip_uid, indices)

    def iter_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, [H, W, 3] uint8 RGB)`` for the sorted distinct ``indices``."""
        targets = sorted({int(i) for i in indices})
        if not targets:
            return iter(())
        if self._cached(targets):
            return ((i, self._from_cache(i)) for i in targets)
        return self.reader.iter_frames(targets)

    def _from_cache(self, index: int) -> np.ndarray:
        """Cached frame ``index`` at ``original_size`` (rescaled when the cache holds another size)."""
        image = self.cache.load(self.clip_uid, index)
        if self.original_size is None or (image.shape[1], image.shape[0]) == tuple(self.original_size):
            return image
        if not self._warned_size:
            logger.warning("clip %s: the frame cache holds %dx%d frames, the annotation %dx%d; rescaling "
                           "(%s)", self.clip_uid, image.shape[1], image.shape[0], *self.original_size,
                           self.cache.path(self.clip_uid, index))
            self._warned_size = True
        return cv2.resize(image, tuple(int(v) for v in self.original_size), interpolation=cv2.INTER_LINEAR)

    def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """``{index: [H, W, 3] uint8 RGB}`` for ``indices`` (one forward pass)."""
        return dict(self.iter_frames(indices))

    def iter_ordered(self, order: Sequence[int], chunk_size: int = 32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield frames in the given ``order`` (e.g. descending, for backward tracking),
        reading ``chunk_size`` frames at a time, so a consumer that stops early (a lost
        target) decodes little past that point."""
        order = [int(i) for i in order]
        for start in range(0, len(order), chunk_size):
            chunk = order[start:start + chunk_size]
            images = self.read(chunk)
            for i in chunk:
                yield i, images[i]


def search_window(frames: ClipFrames, count: int, known: Mapping[int, np.ndarray]
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """Frames ``0 .. count-1`` of ``frames`` in order; those in ``known`` (already decoded,
    index -> image) are not read again."""
    rest = frames.iter_frames([t for t in range(count) if t not in known])
    for t in range(count):
        yield (t, known[t]) if t in known else next(rest)
