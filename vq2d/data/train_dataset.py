"""Training / validation data of the siamese detector: records -> mapped tensors -> batches.

* :class:`PairDataset` holds the lightweight :class:`~vq2d.data.samples.TrainSample`
  records; ``dataset[(index, seed)]`` calls the mapper on the loader worker.
* :class:`PairMapper` reads the frame and the reference frame from the JPEG frame cache,
  cuts the visual crop (docs/vq2d.md#visual-crop), shrinks the frame and augments both
  (:mod:`vq2d.data.transforms`) with a generator seeded by the key's seed, so a sample's
  tensors depend on its key only (not on the worker or on when it is loaded).
* :class:`InfiniteSampler` yields the keys of one rank forever: a fresh permutation per
  epoch, the sample stream position in every seed. It starts at any position, which is how
  a resumed run reads exactly the batches the uninterrupted run would have read.
* :func:`collate_pairs` batches mapped pairs for ``SiamRCNN.forward``.
* :func:`missing_frames` / :func:`extract_missing_frames` find and decode the frames the
  samples need that the cache lacks (vq2d.data.extract); :func:`drop_uncached` drops the
  samples whose frames are still missing, with a count in the log.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from episodic.errors import DataError
from episodic.logging import progress

from vq2d.data.annotations import VQAnnotationFile
from vq2d.data.crops import CONTEXT_PX, make_visual_crop, rotated_visual_crop
from vq2d.data.extract import ClipTask, clip_original_sizes, extract_clip
from vq2d.data.frame_cache import FrameCache
from vq2d.data.samples import Reference, TrainSample, drop_missing_frames, frames_needed
from vq2d.data.transforms import PairAugmentation, shrink_to

logger = logging.getLogger(__name__)

SampleKey = tuple[int, tuple[int, ...]]  # (sample index, seed entropy of its augmentation)


def _scaled(box: Sequence[float], image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Box ``[4]`` xyxy given for an image of ``size`` (w, h) -> coordinates of ``image``."""
    box = np.asarray(box, dtype=np.float32)
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return box
    sx, sy = image.shape[1] / size[0], image.shape[0] / size[1]
    return box * np.array([sx, sy, sx, sy], dtype=np.float32)


class PairMapper:
    """A :class:`TrainSample` -> a (frame, crop, boxes) training pair.

    Args:
        cache: the JPEG frame cache the frames are read from.
        crop_size: side S of the square visual crop.
        crop_context: pixels of context around the box in the crop (vq2d.data.crops).
        short_side, max_size: frames are shrunk (never enlarged) to this short / long side.
        augmentation: random flip / brightness / crop rotation; ``None`` for evaluation
            (the visual crop, never an extra reference, and no augmentation).
        crops_per_pair: k crops of the object per frame in training (k - 1 more references,
            drawn without repeats while the sample has enough); 1: the originals.
    Returns (``__call__``): {"image": uint8 ``[3, H, W]``, "crop": uint8 ``[3, S, S]`` (with
        k > 1 in training also "extra_crops": uint8 ``[k - 1, 3, S, S]``),
        "boxes": float32 ``[n, 4]`` xyxy in image coordinates (n = 0 for a negative frame),
        "query", "clip_uid", "frame_number", "kind"}.
    """

    def __init__(self, *, cache: FrameCache, crop_size: int, short_side: int, max_size: int,
                 augmentation: PairAugmentation | None = None, crop_context: int = CONTEXT_PX,
                 crops_per_pair: int = 1):
        if int(crops_per_pair) < 1:
            raise ValueError(f"crops_per_pair must be >= 1, got {crops_per_pair}")
        self.crops_per_pair = int(crops_per_pair)
        self.cache = cache
        self.crop_size = int(crop_size)
        self.crop_context = int(crop_context)
        self.short_side = int(short_side)
        self.max_size = int(max_size)
        self.augmentation = augmentation

    def _crop(self, ref: Reference, frame_image: np.ndarray, sample: TrainSample,
              angle: float | None = None) -> np.ndarray:
        """The crop of ``ref``; with ``angle``, cut from the reference frame rotated by it."""
        same_frame = (ref.clip_uid, ref.frame_number) == (sample.clip_uid, sample.frame_number)
        image = frame_image if same_frame else self.cache.load(ref.clip_uid, ref.frame_number)
        box = _scaled(ref.box, image, ref.image_size).tolist()
        if angle is not None:
            return rotated_visual_crop(image, box, angle, size=self.crop_size, context=self.crop_context)
        return make_visual_crop(image, box, size=self.crop_size, context=self.crop_context)

    def __call__(self, sample: TrainSample, seed: Sequence[int] | int = 0) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        image = self.cache.load(sample.clip_uid, sample.frame_number)  # [H, W, 3] uint8, original size
        if self.augmentation is None:
            ref = sample.references[0]
        else:
            first = int(rng.integers(len(sample.references)))
            ref = sample.references[first]
        angle = None if self.augmentation is None else self.augmentation.reference_rotation(rng)
        crop = self._crop(ref, image, sample, angle)
        boxes = np.zeros((0, 4), dtype=np.float32)
        if sample.box is not None:
            boxes = _scaled(sample.box, image, sample.image_size)[None]
        image, scale = shrink_to(image, self.short_side, self.max_size)
        boxes = boxes * np.float32(scale)
        flip = None
        if self.augmentation is not None:
            flip = self.augmentation.pair_flip_draw(rng)
            image, boxes = self.augmentation.frame(image, boxes, rng, flip)
            crop = self.augmentation.crop(crop, rng, flip)
        extra_crops = []
        if self.augmentation is not None and self.crops_per_pair > 1:
            extra_crops = self._extra_crops(sample, image, first, rng, flip)
        channels = None if self.augmentation is None else self.augmentation.pair_channels(rng)
        if channels is not None:  # the same colour-channel order for the frame and all its crops
            image, crop = image[..., channels], crop[..., channels]
            extra_crops = [c[..., channels] for c in extra_crops]
        extra = {}
        if extra_crops:
            extra["extra_crops"] = torch.from_numpy(np.stack([c.transpose(2, 0, 1) for c in extra_crops]))
        return {**extra,
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "crop": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "query": sample.query,
            "clip_uid": sample.clip_uid,
            "frame_number": sample.frame_number,
            "kind": sample.kind,
            "clean": sample.clean,
        }


    def _extra_crops(self, sample: TrainSample, frame_image: np.ndarray, first: int,
                     rng: np.random.Generator, flip: bool | None = None) -> list[np.ndarray]:
        """k - 1 more augmented crops ``[S, S, 3]`` of other references than ``first`` (repeats
        only when the sample has fewer than k references)."""
        n, k = len(sample.references), self.crops_per_pair
        others = [i for i in range(n) if i != first]
        if len(others) >= k - 1:
            picks = rng.choice(others, size=k - 1, replace=False)
        else:
            picks = rng.integers(n, size=k - 1)
        crops = []
        for i in picks:
            crop = self._crop(sample.references[int(i)], frame_image, sample,
                              self.augmentation.reference_rotation(rng))
            crops.append(self.augmentation.crop(crop, rng, flip))
        return crops


class PairDataset(Dataset):
    """Map-style dataset over samples; a key is an index or ``(index, seed)`` (from InfiniteSampler)."""

    def __init__(self, samples: Sequence[TrainSample], mapper: PairMapper):
        self.samples = list(samples)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        return self.mapper(self.samples[index], seed)


class InfiniteSampler(Sampler):
    """Endless stream of ``(index, seed)`` keys for one rank, starting at ``start``.

    Epoch ``e`` is a permutation of ``range(size)`` drawn from ``(seed, e)`` (padded by
    wrapping to a multiple of ``world_size``); rank ``r`` takes every ``world_size``-th item
    from ``r``. The item at position ``p`` of this rank's stream gets the augmentation seed
    ``(seed, rank, p)``.

    Args:
        size: number of samples.
        seed: seed of the order and of the augmentation.
        rank, world_size: this process among the data-parallel processes.
        shuffle: permute each epoch (False: 0, 1, 2, ... every epoch).
        start: position in this rank's stream to start at (samples already consumed).
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0):
        if size <= 0:
            raise ValueError("no training samples: nothing to sample from")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.rank, self.world_size = int(size), int(seed), int(rank), int(world_size)
        self.shuffle, self.start = bool(shuffle), int(start)
        self.per_rank = math.ceil(self.size / self.world_size)  # items of one epoch on one rank

    def _epoch(self, epoch: int) -> np.ndarray:
        order = np.arange(self.size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        order = np.resize(order, self.per_rank * self.world_size)  # wraps around to pad
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_rank)
            for index in self._epoch(epoch)[offset:]:
                yield int(index), (self.seed, self.rank, position)
                position += 1


START_METHODS = ("forkserver", "spawn", "fork")


def loader_worker_init(worker_id: int, opencv_threads: int | None = 1) -> None:
    """DataLoader ``worker_init_fn``: ``opencv_threads`` OpenCV threads per worker (the workers
    are the parallelism). Pass ``None`` for forked workers: reconfiguring OpenCV's thread pool
    in a child forked from a parent that used it deadlocks."""
    if opencv_threads is not None:
        cv2.setNumThreads(int(opencv_threads))


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Mapped pairs -> {"images": list of B uint8 ``[3, H_i, W_i]``, "crops": uint8 ``[B, 3, S, S]``
    (pairs with "extra_crops": ``[B * k, 3, S, S]``, image-major), "targets": B dicts {"boxes":
    ``[n_i, 4]``}, "meta": B dicts (query, clip_uid, frame_number, kind, clean)}."""
    crops = [torch.cat([it["crop"][None], it["extra_crops"]]) if "extra_crops" in it else it["crop"][None]
             for it in items]
    if len({len(c) for c in crops}) > 1:
        raise ValueError("pairs of one batch have different numbers of crops")
    return {
        "images": [it["image"] for it in items],
        "crops": torch.cat(crops),
        "targets": [{"boxes": it["boxes"]} for it in items],
        "meta": [{k: it[k] for k in ("query", "clip_uid", "frame_number", "kind", "clean")} for it in items],
    }


def extract_missing_frames(
    missing: dict[str, list[int]],
    annotations: VQAnnotationFile,
    clips_dir: str | Path,
    cache: FrameCache,
    clip_template: str = "{clip_uid}.mp4",
    workers: int = 2,
    start_method: str = "forkserver",
) -> list[str]:
    """Decode the ``{clip_uid: frame numbers}`` frames into the cache, in ``workers`` processes
    started with ``start_method``; returns the failures."""
    sizes = clip_original_sizes(annotations)
    clip_fps = {clip.clip_uid: clip.clip_fps for _, clip in annotations.clips()}
    tasks = [ClipTask(clip_uid=c, video_path=str(Path(clips_dir) / clip_template.format(clip_uid=c)),
                      frames=tuple(sorted(frames)), cache_root=str(cache.root), clip_fps=clip_fps.get(c, 5.0),
                      original_size=sizes.get(c), jpeg_quality=cache.jpeg_quality)
             for c, frames in sorted(missing.items())]
    bar = dict(total=len(tasks), desc="extract frames", unit="clip")
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method)) as pool:
            results = list(progress(pool.map(extract_clip, tasks), **bar))
    else:
        results = [extract_clip(t) for t in progress(tasks, **bar)]
    return [f"{r.clip_uid}: {r.error}" for r in results if r.error]


def missing_frames(samples: Sequence[TrainSample], cache: FrameCache,
                   clip_uids: Sequence[str] | None = None) -> dict[str, list[int]]:
    """``{clip_uid: sorted frame numbers}`` that ``samples`` need and the cache lacks (only the
    clips ``clip_uids`` when given)."""
    needed = frames_needed(samples)
    out = {}
    for clip_uid in needed if clip_uids is None else clip_uids:
        missing = cache.missing(clip_uid, needed.get(clip_uid, ()))
        if missing:
            out[clip_uid] = missing
    return out


def drop_uncached(samples: list[TrainSample], cache: FrameCache, what: str = "samples") -> list[TrainSample]:
    """``samples`` whose frames are all cached; logs how many were dropped (error if none is left)."""
    cached = {clip_uid: cache.cached_frames(clip_uid) for clip_uid in frames_needed(samples)}
    kept, problems = drop_missing_frames(samples, cached)
    if problems:
        logger.warning("%s: skipped %d of %d samples whose frames are missing from the frame cache %s, e.g. %s",
                       what, len(problems), len(samples), cache.root, problems[0])
    if samples and not kept:
        raise DataError(f"{what}: none of the {len(samples)} samples has its frames in the frame cache "
                        f"{cache.root} (e.g. {problems[0]}); extract them (extract_frames=true or "
                        f"tools/extract_frames.py)")
    return kept
