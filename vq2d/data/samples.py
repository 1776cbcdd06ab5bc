"""Training samples of the siamese detector from VQ2D queries (docs/vq2d.md#training-samples).

A :class:`TrainSample` is a lightweight record: which cached frame to detect in, the
target box on it (``None`` for a negative frame) and the references (visual crops) to
pair it with. Images are loaded and augmented later, by the mapper of
:mod:`vq2d.data.train_dataset`.

* Positives: one sample per response-track frame, label = the response box (clipped to
  the frame). The **clean filter** keeps frames whose box is similar to the track's large
  boxes: with the median area and median aspect ratio (w / h) of the 5 largest boxes,
  area within [0.25x, 4x] and aspect within [0.5x, 2x].
* Extra references: up to 10 "stricter-clean" response frames (area [0.5x, 2x], aspect
  [0.85x, 1/0.85x]) serve as alternative crops of the query's object, besides the visual
  crop (a sample never uses a reference from its own frame). As in the originals they are
  shuffled before the first 10 are taken (``extra_references_order="shuffled"``, drawn per
  query from the seed; ``"track"``: the first 10 in track order).
* Negative frames (empty target: every proposal is a negative), ``ratio`` same-video
  negatives per positive on average (1.0 = the 1:1 of the reference):

  - ``after_track`` (reference practice): for a positive at frame f of a track of length
    L, frames f + k*L (k = 1, 2, ...) before the query frame;
  - ``outside_track``: frames before the query frame more than ``min_gap`` frames away from
    the response track, drawn at random;
  - either way never the visual crop's frame (nor a frame within ``min_gap`` of it);
  - other videos: frames of the response tracks of queries of *other* videos (the object
    cannot be there), ``other_video_ratio`` per positive.

Bad boxes (outside the frame, zero size once clipped) are skipped and counted in
:class:`SampleStats`; a visual crop anywhere in the clip (even after the query frame) is
fine.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Sequence

import numpy as np

from vq2d.data.annotations import BBox, VQQuery

NEGATIVE_SOURCES = ("after_track", "outside_track")
REFERENCE_ORDERS = ("shuffled", "track")
POSITIVE, NEGATIVE, NEGATIVE_OTHER_VIDEO = "positive", "negative", "negative_other_video"

Box = tuple[float, float, float, float]  # xyxy, original-resolution pixels


@dataclass(frozen=True)
class Reference:
    """A visual crop source: box ``box`` (xyxy) on frame ``frame_number`` of ``clip_uid``."""

    clip_uid: str
    frame_number: int
    box: Box
    image_size: tuple[int, int] | None = None  # (width, height) the box refers to


@dataclass(frozen=True)
class TrainSample:
    """One (frame, references) training pair.

    box: the response box on the frame (xyxy, clipped to the frame), ``None`` for a
        negative frame.
    references: the visual crop first, then the extra references; the mapper picks one.
    kind: "positive", "negative" (same video) or "negative_other_video".
    clean: whether the frame passes the clean filter (always True for negative frames and
        for training samples, which are filtered already; evaluation frames keep every
        response frame and mark them).
    """

    query: str  # VQQuery.name of the query the references come from
    clip_uid: str  # clip of the frame (another video's clip for negative_other_video)
    frame_number: int
    box: Box | None
    image_size: tuple[int, int] | None  # (width, height) of the frame the box refers to
    references: tuple[Reference, ...]
    kind: str = POSITIVE
    clean: bool = True

    @property
    def is_negative(self) -> bool:
        return self.box is None


@dataclass
class SampleStats:
    """Counts of what :func:`build_train_samples` kept and skipped (logged by the trainer)."""

    queries: int = 0
    queries_without_track: int = 0  # no response track (test split): nothing to learn
    queries_bad_crop: int = 0  # visual crop box outside the frame or empty: query skipped
    track_frames: int = 0
    unclean_frames: int = 0  # response frames removed by the clean filter
    bad_boxes: int = 0  # response boxes outside the frame / zero size once clipped
    positives: int = 0
    negatives: int = 0
    negatives_other_video: int = 0
    extra_references: int = 0
    problems: list[str] = field(default_factory=list)  # a few examples of skipped boxes

    def format(self) -> str:
        counts = ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self) if f.name != "problems")
        return counts + (f"; e.g. {self.problems[0]}" if self.problems else "")


def box_size(box: BBox) -> tuple[float, float]:
    return float(box.width), float(box.height)


def _area_aspect(boxes: Sequence[BBox]) -> tuple[np.ndarray, np.ndarray]:
    wh = np.array([box_size(b) for b in boxes], dtype=np.float64).reshape(-1, 2)
    return wh[:, 0] * wh[:, 1], wh[:, 0] / np.maximum(wh[:, 1], 1e-9)


def similar_boxes(
    track: Sequence[BBox],
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
    num_largest: int = 5,
) -> list[BBox]:
    """Boxes of ``track`` whose area / aspect lie within the ranges, as multiples of the median
    area / median aspect of its ``num_largest`` largest boxes (the clean filter of 5.2)."""
    if not track:
        return []
    area, aspect = _area_aspect(track)
    largest = np.argsort(-area, kind="stable")[:num_largest]
    ref_area, ref_aspect = float(np.median(area[largest])), float(np.median(aspect[largest]))
    keep = (
        (area >= area_range[0] * ref_area) & (area <= area_range[1] * ref_area)
        & (aspect >= aspect_range[0] * ref_aspect) & (aspect <= aspect_range[1] * ref_aspect)
    )
    return [b for b, k in zip(track, keep) if k]


def clean_track(track: Sequence[BBox]) -> list[BBox]:
    """The clean-filtered response frames (area [0.25x, 4x], aspect [0.5x, 2x])."""
    return similar_boxes(track, (0.25, 4.0), (0.5, 2.0))


def strict_clean_track(track: Sequence[BBox]) -> list[BBox]:
    """The stricter-clean frames usable as extra references (area [0.5x, 2x], aspect [0.85x, 1/0.85x])."""
    return similar_boxes(track, (0.5, 2.0), (0.85, 1 / 0.85))


def clip_box(box: BBox, min_size: float = 1.0) -> Box | None:
    """``box`` as xyxy clipped to its frame (``original_width/height``); ``None`` when less than
    ``min_size`` pixels of it are left on a side. Without a known frame size only the size is checked."""
    x1, y1, x2, y2 = box.xyxy
    if box.original_width and box.original_height:
        x1, x2 = min(max(x1, 0.0), box.original_width), min(max(x2, 0.0), box.original_width)
        y1, y2 = min(max(y1, 0.0), box.original_height), min(max(y2, 0.0), box.original_height)
    if x2 - x1 < min_size or y2 - y1 < min_size:
        return None
    return (float(x1), float(y1), float(x2), float(y2))


def _image_size(box: BBox) -> tuple[int, int] | None:
    if box.original_width and box.original_height:
        return (int(box.original_width), int(box.original_height))
    return None


def _reference(query: VQQuery, box: BBox, clipped: Box) -> Reference:
    return Reference(query.clip_uid, box.frame_number, clipped, _image_size(box))


def negative_frames(
    query: VQQuery,
    positive_frames: Sequence[int],
    *,
    ratio: float,
    source: str,
    rng: np.random.Generator,
    min_gap: int = 0,
) -> list[int]:
    """Same-video negative frames of ``query`` (see module doc), about ``ratio`` per positive.

    Returns sorted unique frame numbers, all before the query frame, outside the track and
    more than ``min_gap`` frames from the visual crop's frame.
    """
    if source not in NEGATIVE_SOURCES:
        raise ValueError(f"negative source must be one of {NEGATIVE_SOURCES}, got {source!r}")
    if ratio < 0:
        raise ValueError(f"negative ratio must be >= 0 (got {ratio})")
    track = query.response_track or ()
    n_wanted = int(round(ratio * len(positive_frames)))
    if not track or n_wanted == 0:
        return []
    start, end = track[0].frame_number, track[-1].frame_number
    if source == "after_track":
        steps = max(int(np.ceil(ratio)), 1)
        candidates = sorted({f + k * len(track) for f in positive_frames for k in range(1, steps + 1)
                             if f + k * len(track) < query.query_frame})
    else:
        candidates = [f for f in range(query.query_frame) if f < start - min_gap or f > end + min_gap]
    crop_frame = query.visual_crop.frame_number  # the object is visible there
    candidates = [f for f in candidates if abs(f - crop_frame) > min_gap]
    if len(candidates) > n_wanted:
        candidates = sorted(rng.choice(candidates, size=n_wanted, replace=False).tolist())
    return [int(f) for f in candidates]


def extra_reference_boxes(query: VQQuery, limit: int, order: str = "shuffled", seed: int = 0) -> list[BBox]:
    """Up to ``limit`` stricter-clean response boxes of ``query``: a random ``limit`` of them
    (``order="shuffled"``, the originals; drawn from ``seed`` and the query's name, so the
    choice does not depend on the other queries) or the first ``limit`` in track order."""
    if order not in REFERENCE_ORDERS:
        raise ValueError(f"extra_references_order must be one of {REFERENCE_ORDERS}, got {order!r}")
    boxes = strict_clean_track(query.response_track or ())
    if order == "shuffled" and len(boxes) > limit:
        rng = np.random.default_rng([seed, zlib.crc32(query.name.encode())])
        boxes = [boxes[i] for i in rng.permutation(len(boxes))]
    return boxes[:limit]


def _query_samples(
    query: VQQuery, stats: SampleStats, *, clean: bool, extra_references: int, negatives: bool,
    ratio: float, source: str, min_gap: int, min_box_size: float, rng: np.random.Generator,
    reference_order: str = "shuffled", seed: int = 0,
) -> list[TrainSample]:
    """Positive and same-video negative samples of one query."""
    crop = clip_box(query.visual_crop, min_box_size)
    if crop is None:
        stats.queries_bad_crop += 1
        stats.problems.append(f"{query.name}: visual crop {query.visual_crop.xyxy} on frame "
                              f"{query.visual_crop.frame_number} is outside the frame or empty")
        return []
    track = query.response_track or ()
    stats.track_frames += len(track)
    kept = clean_track(track) if clean else list(track)
    stats.unclean_frames += len(track) - len(kept)
    positives: list[tuple[BBox, Box]] = []
    for box in kept:
        clipped = clip_box(box, min_box_size)
        if clipped is None:
            stats.bad_boxes += 1
            stats.problems.append(f"{query.name}: response box {box.xyxy} on frame {box.frame_number} "
                                  f"is outside the {box.original_width}x{box.original_height} frame or empty")
            continue
        positives.append((box, clipped))
    extras: list[Reference] = []
    if extra_references > 0:
        for box in extra_reference_boxes(query, extra_references, reference_order, seed):
            clipped = clip_box(box, min_box_size)
            if clipped is not None:
                extras.append(_reference(query, box, clipped))
    stats.extra_references += len(extras)
    visual_crop = _reference(query, query.visual_crop, crop)

    def references_for(frame_number: int) -> tuple[Reference, ...]:
        return (visual_crop, *[r for r in extras if r.frame_number != frame_number])

    out = [TrainSample(query.name, query.clip_uid, box.frame_number, clipped, _image_size(box),
                       references_for(box.frame_number), POSITIVE) for box, clipped in positives]
    stats.positives += len(out)
    if negatives and positives:
        size = _image_size(track[0])
        frames = negative_frames(query, [b.frame_number for b, _ in positives], ratio=ratio, source=source,
                                 rng=rng, min_gap=min_gap)
        out += [TrainSample(query.name, query.clip_uid, f, None, size, references_for(-1), NEGATIVE) for f in frames]
        stats.negatives += len(frames)
    return out


def _other_video_negatives(
    samples: list[TrainSample], video_of_clip: dict[str, str], ratio: float, rng: np.random.Generator,
) -> list[TrainSample]:
    """``ratio`` negatives per positive whose frame is a positive frame of another video."""
    positives = [s for s in samples if s.kind == POSITIVE]
    if ratio <= 0 or not positives:
        return []
    videos = np.array([video_of_clip[s.clip_uid] for s in positives])
    if len(set(videos.tolist())) < 2:
        return []
    out = []
    for sample in positives:
        n = int(rng.binomial(int(np.ceil(ratio)), ratio / np.ceil(ratio)))
        others = np.flatnonzero(videos != video_of_clip[sample.clip_uid])
        for j in rng.choice(others, size=min(n, len(others)), replace=False):
            frame = positives[int(j)]
            out.append(TrainSample(sample.query, frame.clip_uid, frame.frame_number, None, frame.image_size,
                                   sample.references, NEGATIVE_OTHER_VIDEO))
    return out


def build_train_samples(
    queries: Iterable[VQQuery],
    *,
    clean: bool = True,  # apply the clean filter to the response frames
    extra_references: int = 10,  # stricter-clean frames used as extra crops (0 = visual crop only)
    extra_references_order: str = "shuffled",  # shuffled (the originals) | track: which ones when there are more
    negatives: bool = True,  # add same-video negative frames
    negative_ratio: float = 1.0,  # same-video negative frames per positive
    negative_source: str = "after_track",  # after_track | outside_track
    negative_min_gap: int = 0,  # negatives more than this many frames from the track (outside_track) and the crop
    other_video_ratio: float = 0.0,  # negative frames from other videos per positive (needs negatives)
    min_box_size: float = 1.0,  # a clipped box needs at least this many pixels per side
    seed: int = 0,  # random choice of negative frames
) -> tuple[list[TrainSample], SampleStats]:
    """Training samples of every query with a response track (see the module doc)."""
    rng = np.random.default_rng(seed)
    stats = SampleStats()
    samples: list[TrainSample] = []
    video_of_clip: dict[str, str] = {}
    for query in queries:
        stats.queries += 1
        if not query.response_track:
            stats.queries_without_track += 1
            continue
        video_of_clip[query.clip_uid] = query.video_uid
        samples += _query_samples(query, stats, clean=clean, extra_references=extra_references,
                                  negatives=negatives, ratio=negative_ratio, source=negative_source,
                                  min_gap=negative_min_gap, min_box_size=min_box_size, rng=rng,
                                  reference_order=extra_references_order, seed=seed)
    if negatives:
        others = _other_video_negatives(samples, video_of_clip, other_video_ratio, rng)
        stats.negatives_other_video = len(others)
        samples += others
    return samples, stats


def eval_samples(queries: Iterable[VQQuery], *, negatives: bool = True, negative_ratio: float = 1.0,
                 negative_source: str = "after_track", max_queries: int | None = None,
                 seed: int = 0) -> tuple[list[TrainSample], SampleStats]:
    """Frames for frame-level detection AP (docs/vq2d.md#training): every response frame and,
    with ``negatives``, same-video negative frames; the visual crop is the only reference.
    Response frames the clean filter would drop are marked ``clean=False``, so AP is also
    reported on the clean frames the papers evaluated on (visual_query_clean_val)."""
    queries = [q for q in queries if q.response_track]
    if max_queries is not None and len(queries) > max_queries:
        pick = np.random.default_rng(seed).choice(len(queries), size=max_queries, replace=False)
        queries = [queries[i] for i in sorted(pick.tolist())]
    samples, stats = build_train_samples(queries, clean=False, extra_references=0, negatives=negatives,
                                         negative_ratio=negative_ratio, negative_source=negative_source, seed=seed)
    clean = {(q.name, b.frame_number) for q in queries for b in clean_track(q.response_track)}
    samples = [s if s.is_negative or (s.query, s.frame_number) in clean else replace(s, clean=False)
               for s in samples]
    return samples, stats


def frames_needed(samples: Iterable[TrainSample]) -> dict[str, set[int]]:
    """``{clip_uid: frame numbers}`` that ``samples`` read (their frames and references)."""
    out: dict[str, set[int]] = {}
    for s in samples:
        out.setdefault(s.clip_uid, set()).add(s.frame_number)
        for ref in s.references:
            out.setdefault(ref.clip_uid, set()).add(ref.frame_number)
    return out


def drop_missing_frames(samples: list[TrainSample], cached: dict[str, set[int]]) -> tuple[list[TrainSample], list[str]]:
    """Samples whose frame and visual crop are in ``cached`` (``{clip_uid: frames}``); extra
    references that are missing are removed from a sample. Returns (samples, problems)."""
    kept, problems = [], []
    for s in samples:
        crop = s.references[0]
        missing = [(clip, frame) for clip, frame in ((s.clip_uid, s.frame_number), (crop.clip_uid, crop.frame_number))
                   if frame not in cached.get(clip, set())]
        if missing:
            clip, frame = missing[0]
            problems.append(f"{s.query}: frame {frame} of clip {clip} is not in the frame cache")
            continue
        refs = tuple(r for r in s.references if r.frame_number in cached.get(r.clip_uid, set()))
        kept.append(s if refs == s.references else TrainSample(s.query, s.clip_uid, s.frame_number, s.box,
                                                               s.image_size, refs, s.kind))
    return kept, problems
