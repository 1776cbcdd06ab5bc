"""Where each object is seen in a clip, and the choice of (response track, query frame,
visual crop) for a query object.

An object's box on a frame is the extent of its visible pixels in the rendered label map
(pixel-edge coordinates: a box covering columns 3..7 is x=3, width=5). A *sighting* is a
maximal run of frames on which enough of it is visible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vq2d.data.synthetic.camera import CameraPath
from vq2d.data.synthetic.render import render_labels
from vq2d.data.synthetic.scenes import Scene

MIN_VISIBLE_FRACTION = 0.15   # part of the object inside the frame for it to count as seen
MIN_BOX_SIDE = 4.0            # frame pixels
MIN_CROP_SIDE = 8.0           # frame pixels, for a visual crop
MAX_CROP_BLUR = 3.0           # frame pixels of motion blur allowed on the visual-crop frame
MIN_TRACK_FRAMES = 2          # response tracks: real annotations (VQ2D v1 val) have none of 1 frame


@dataclass
class Visibility:
    """Per frame and object (``T`` frames, ``K`` objects, column k-1 is label k)."""

    boxes: np.ndarray      # float [T, K, 4]: x1, y1, x2, y2 of the visible pixels (nan when none)
    fraction: np.ndarray   # float [T, K]: visible pixels / pixels of the whole object at that zoom

    def seen(self, k: int) -> np.ndarray:
        """bool ``[T]``: frames on which object ``k`` (0-based column) is seen."""
        box = self.boxes[:, k]
        with np.errstate(invalid="ignore"):
            big = np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) >= MIN_BOX_SIDE
        return (self.fraction[:, k] >= MIN_VISIBLE_FRACTION) & big


def measure_visibility(scene: Scene, camera: CameraPath) -> Visibility:
    """Render every frame's label map and measure each object's visible extent."""
    num, k = len(camera), len(scene.objects)
    boxes = np.full((num, k, 4), np.nan)
    pixels = np.zeros((num, k))
    for t in range(num):
        labels = render_labels(scene, camera, t)
        pixels[t] = np.bincount(labels.ravel(), minlength=k + 1)[1:k + 1]
        for i, where in enumerate(ndimage.find_objects(labels, max_label=k)):
            if where is not None:
                rows, cols = where
                boxes[t, i] = (cols.start, rows.start, cols.stop, rows.stop)
    areas = np.array([o.area for o in scene.objects], float)
    fraction = pixels / (areas[None, :] * camera.zooms[:, None] ** 2)
    return Visibility(boxes=boxes, fraction=fraction)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a bool ``[T]`` array as (first, last) frame pairs (inclusive)."""
    padded = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


@dataclass(frozen=True)
class QueryPlan:
    """One query: the object, its last sighting before the query frame, the crop frame."""

    label: int
    track: tuple[int, int]   # first and last frame of the response track (inclusive)
    query_frame: int
    crop_frame: int


def choose_query(rng: np.random.Generator, vis: Visibility, camera: CameraPath, label: int) -> QueryPlan | None:
    """Pick a response track (a sighting of at least ``MIN_TRACK_FRAMES`` frames followed by
    frames without the object), a query frame after it with nothing of the object in view,
    and a visual-crop frame from another sighting where the object is whole, sharp and large
    enough. None when impossible."""
    k = label - 1
    sightings = runs(vis.seen(k))
    num = len(camera)
    absent = vis.fraction[:, k] == 0
    box = vis.boxes[:, k]
    with np.errstate(invalid="ignore"):
        croppable = ((vis.fraction[:, k] >= 0.97) & ~np.isnan(box[:, 0])
                     & (np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) >= MIN_CROP_SIDE)
                     & (np.hypot(*camera.blurs.T) <= MAX_CROP_BLUR))
    options = []
    for i, (first, last) in enumerate(sightings):
        gap_end = sightings[i + 1][0] if i + 1 < len(sightings) else num
        query_frames = [t for t in range(last + 1, gap_end) if absent[t]]
        crop_frames = [t for j, (s, e) in enumerate(sightings) if j != i for t in range(s, e + 1) if croppable[t]]
        if last - first + 1 >= MIN_TRACK_FRAMES and query_frames and crop_frames:
            options.append(((first, last), query_frames, crop_frames))
    if not options:
        return None
    track, query_frames, crop_frames = options[int(rng.integers(len(options)))]
    return QueryPlan(label=label, track=track, query_frame=int(rng.choice(query_frames)),
                     crop_frame=int(rng.choice(crop_frames)))
