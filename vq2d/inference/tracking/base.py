"""The tracker interface, its registry, and the bidirectional driver (docs/vq2d.md#tracking).

A tracker follows one box through frames in one direction. The driver starts one tracker
at the peak and runs it backward (peak-1 down to 0) and another forward (peak+1 up to
query_frame-1), each stopping at the first frame where its tracker reports the target
lost; the response track is backward (reversed) + peak + forward, contiguous.

To plug in a tracker::

    @register_tracker("mine")
    class MyTracker(Tracker):
        needs_images = True          # the driver then passes each frame's image
        def __init__(self, *, detections=None, my_param=1.0): ...
        def start(self, frame, box, image): ...
        def step(self, frame, image): return box_or_None

and select it with ``tracking.name=mine tracking.params={my_param: 2.0}``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

Box = np.ndarray  # [4] float xyxy, original-resolution pixels


class Tracker(ABC):
    """Follows one target frame by frame, in one direction.

    Constructors take keyword arguments only; every tracker accepts ``detections`` (the
    query's :class:`vq2d.inference.detection_pass.QueryDetections`, which pixel trackers
    ignore). Images, when ``needs_images``, are ``[H, W, 3]`` uint8 RGB."""

    needs_images: bool = False

    @abstractmethod
    def start(self, frame: int, box: Box, image: np.ndarray | None) -> None:
        """Start on ``frame`` with the target at ``box``."""

    @abstractmethod
    def step(self, frame: int, image: np.ndarray | None) -> Box | None:
        """The target's box on ``frame`` (the next one in this direction); None = lost."""


TRACKERS: dict[str, type[Tracker]] = {}


def register_tracker(name: str) -> Callable[[type[Tracker]], type[Tracker]]:
    """Class decorator adding a :class:`Tracker` to :data:`TRACKERS` under ``name``."""

    def add(cls: type[Tracker]) -> type[Tracker]:
        if name in TRACKERS and TRACKERS[name] is not cls:
            raise ValueError(f"a tracker named {name!r} is already registered ({TRACKERS[name].__name__})")
        TRACKERS[name] = cls
        return cls

    return add


def make_tracker(name: str, params: Mapping[str, Any] | None = None, detections: Any = None) -> Tracker:
    """A fresh tracker ``name`` built with ``params`` and the query's detections."""
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; registered: {sorted(TRACKERS)}")
    return TRACKERS[name](detections=detections, **dict(params or {}))


class ImageSource(Protocol):
    """What pixel trackers read frames from (e.g. :class:`vq2d.inference.frame_source.ClipFrames`)."""

    def iter_ordered(self, order: Sequence[int], chunk_size: int = 32) -> Iterator[tuple[int, np.ndarray]]: ...


def track_direction(tracker: Tracker, frames: Sequence[int], box: Box, images: ImageSource | None = None,
                    chunk_size: int = 32) -> list[tuple[int, Box]]:
    """Run ``tracker`` from ``frames[0]`` (where the target is at ``box``) over ``frames[1:]``;
    returns the ``(frame, box)`` of every frame tracked before the target was lost
    (``frames[0]`` excluded)."""
    frames = list(frames)
    if tracker.needs_images:
        if images is None:
            raise ValueError(f"{type(tracker).__name__} needs frames but no image source was given")
        stream = images.iter_ordered(frames, chunk_size)
    else:
        stream = ((f, None) for f in frames)
    out: list[tuple[int, Box]] = []
    for i, (frame, image) in enumerate(stream):
        if i == 0:
            tracker.start(frame, np.asarray(box, dtype=np.float64), image)
            continue
        found = tracker.step(frame, image)
        if found is None:
            break
        out.append((frame, np.asarray(found, dtype=np.float64)))
    return out


def track_bidirectional(new_tracker: Callable[[], Tracker], *, peak_frame: int, peak_box: Box, query_frame: int,
                        images: ImageSource | None = None, max_length: int | None = None,
                        chunk_size: int = 32) -> dict[int, tuple[float, float, float, float]]:
    """The response track around ``peak_frame``: ``{frame: (x1, y1, x2, y2)}`` on contiguous
    frames within ``0 .. query_frame-1``. ``new_tracker()`` makes one tracker per direction;
    ``max_length`` caps the frames tracked in each direction (None: no cap)."""
    if not 0 <= peak_frame < query_frame:
        raise ValueError(f"peak frame {peak_frame} outside the search window 0..{query_frame - 1}")
    stop_back = -1 if max_length is None else max(peak_frame - max_length - 1, -1)
    stop_fwd = query_frame if max_length is None else min(peak_frame + max_length + 1, query_frame)
    backward = track_direction(new_tracker(), range(peak_frame, stop_back, -1), peak_box, images, chunk_size)
    forward = track_direction(new_tracker(), range(peak_frame, stop_fwd), peak_box, images, chunk_size)
    track = [*reversed(backward), (peak_frame, np.asarray(peak_box, dtype=np.float64)), *forward]
    return {int(f): tuple(float(v) for v in b) for f, b in track}
