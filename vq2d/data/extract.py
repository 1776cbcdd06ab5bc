"""Fill the JPEG frame cache of a VQ2D split from its clip files (``tools/extract_frames.py``).

One task per clip, run in a process pool. Resumable: frames already in the cache are not
redone and a clip whose frames are all cached is not opened. Every JPEG is written
atomically. A clip that fails (missing or broken mp4, frames past its end) is reported in
the summary and the other clips go on.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from episodic.cli import failure_fields
from episodic.errors import DataError
from vq2d.data.annotations import VQAnnotationFile, load_vq_annotations
from vq2d.data.frame_cache import FrameCache, check_frame_parts, frames_for_split
from vq2d.data.frames import ClipReader, format_frames


@dataclass(frozen=True)
class ClipTask:
    """The frames to extract from one clip file (picklable, sent to a worker)."""

    clip_uid: str
    video_path: str
    frames: tuple[int, ...]  # 5 fps frame numbers missing from the cache, sorted
    cache_root: str
    clip_fps: float = 5.0
    original_size: tuple[int, int] | None = None  # (width, height) the boxes refer to
    jpeg_quality: int = 95
    decode_threads: int = 1


@dataclass(frozen=True)
class ClipResult:
    clip_uid: str
    extracted: int  # JPEGs written
    error: str | None = None  # why the clip (or some of its frames) failed


@dataclass
class ExtractionSummary:
    clips: int = 0  # clips of the split that need frames
    clips_extracted: int = 0  # clips opened, all their missing frames written
    clips_skipped: int = 0  # clips with every needed frame already cached
    clips_failed: int = 0
    frames_needed: int = 0
    frames_extracted: int = 0
    frames_cached_before: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (clip_uid, reason)
    annotation_problems: list[str] = field(default_factory=list)  # malformed query sets skipped

    def to_dict(self) -> dict:
        """The counts, plus ``num_failed`` and ``failed`` ([{id: clip_uid, reason}]) as every
        tool reports failures (episodic.cli)."""
        counts = {k: v for k, v in asdict(self).items() if k not in ("failures", "annotation_problems")}
        return {**counts, "annotation_problems": len(self.annotation_problems), **failure_fields(self.failures)}

    def format(self) -> str:
        lines = [
            f"clips: {self.clips} needing frames, {self.clips_extracted} extracted, "
            f"{self.clips_skipped} skipped (already cached), {self.clips_failed} failed",
            f"frames: {self.frames_needed} needed, {self.frames_extracted} extracted, "
            f"{self.frames_cached_before} already cached",
        ]
        if self.annotation_problems:
            lines.append(f"{len(self.annotation_problems)} malformed query sets skipped, e.g. "
                         f"{self.annotation_problems[0]}")
        lines += [f"FAILED {clip_uid}: {reason}" for clip_uid, reason in self.failures]
        return "\n".join(lines)


def extract_clip(task: ClipTask) -> ClipResult:
    """Decode ``task.frames`` of one clip and write them to the cache (runs in a worker)."""
    cache = FrameCache(task.cache_root, jpeg_quality=task.jpeg_quality)
    written = 0
    try:
        with ClipReader(task.video_path, clip_fps=task.clip_fps, original_size=task.original_size,
                        num_threads=task.decode_threads) as reader:
            inside = [f for f in task.frames if f < reader.num_frames]
            past = [f for f in task.frames if f >= reader.num_frames]
            for frame_number, image in reader.iter_frames(inside):
                cache.save(task.clip_uid, frame_number, image)
                written += 1
        if past:
            return ClipResult(task.clip_uid, written,
                              f"{task.video_path}: frames {format_frames(past)} are past the end of the clip, "
                              f"which has {reader.num_frames} frames")
    except DataError as e:
        return ClipResult(task.clip_uid, written, str(e))
    except Exception as e:  # noqa: BLE001 - one broken clip must not stop the split
        return ClipResult(task.clip_uid, written, f"{task.video_path}: {type(e).__name__}: {e}")
    return ClipResult(task.clip_uid, written)


def clip_original_sizes(annotations: VQAnnotationFile) -> dict[str, tuple[int, int]]:
    """``{clip_uid: (original_width, original_height)}`` from the first box that has both."""
    sizes: dict[str, tuple[int, int]] = {}
    for query in annotations.queries():
        if query.clip_uid in sizes:
            continue
        for box in (query.visual_crop, *(query.response_track or ())):
            if box.original_width and box.original_height:
                sizes[query.clip_uid] = (box.original_width, box.original_height)
                break
    return sizes


def plan_tasks(annotations: VQAnnotationFile, clips_dir: str | os.PathLike, cache: FrameCache,
               parts: Iterable[str], clip_template: str = "{clip_uid}.mp4",
               negatives_per_positive: int = 1, decode_threads: int = 1,
               summary: ExtractionSummary | None = None) -> list[ClipTask]:
    """One :class:`ClipTask` per clip with frames missing from ``cache``; counts in ``summary``."""
    summary = summary if summary is not None else ExtractionSummary()
    sizes = clip_original_sizes(annotations)
    clip_fps = {clip.clip_uid: clip.clip_fps for _, clip in annotations.clips()}
    tasks = []
    for clip_uid, frames in frames_for_split(annotations, parts, negatives_per_positive).items():
        missing = cache.missing(clip_uid, frames)
        summary.clips += 1
        summary.frames_needed += len(frames)
        summary.frames_cached_before += len(frames) - len(missing)
        if not missing:
            summary.clips_skipped += 1
            continue
        tasks.append(ClipTask(
            clip_uid=clip_uid, video_path=str(Path(clips_dir) / clip_template.format(clip_uid=clip_uid)),
            frames=tuple(missing), cache_root=str(cache.root), clip_fps=clip_fps[clip_uid],
            original_size=sizes.get(clip_uid), jpeg_quality=cache.jpeg_quality,
            decode_threads=decode_threads))
    return tasks


def extract_frames(
    annotations_path: str | os.PathLike,  # vq_<split>.json
    clips_dir: str | os.PathLike,  # folder of <clip_uid>.mp4
    cache_root: str | os.PathLike,  # frame cache root (see vq2d.data.frame_cache)
    parts: Iterable[str] = ("crop", "response_track", "negatives"),
    workers: int = 2,  # processes; 1 runs in this process
    clip_template: str = "{clip_uid}.mp4",  # clip file name under clips_dir
    jpeg_quality: int = 95,
    negatives_per_positive: int = 1,
    decode_threads: int = 1,  # FFmpeg threads per worker
    progress: bool = True,  # tqdm bar over clips
) -> ExtractionSummary:
    """Extract the frames ``parts`` need for every valid query of the split."""
    parts = check_frame_parts(parts)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    annotations = load_vq_annotations(annotations_path, strict=False)
    summary = ExtractionSummary(annotation_problems=[str(p) for p in annotations.problems])
    cache = FrameCache(cache_root, jpeg_quality=jpeg_quality)
    tasks = plan_tasks(annotations, clips_dir, cache, parts, clip_template, negatives_per_positive,
                       decode_threads, summary)
    with tqdm(total=len(tasks), desc="extract frames", unit="clip", disable=not progress) as bar:
        if workers == 1:
            for task in tasks:
                _add_result(summary, extract_clip(task))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for future in as_completed([pool.submit(extract_clip, task) for task in tasks]):
                    _add_result(summary, future.result())
                    bar.update()
    summary.failures.sort()
    return summary


def _add_result(summary: ExtractionSummary, result: ClipResult) -> None:
    summary.frames_extracted += result.extracted
    if result.error is None:
        summary.clips_extracted += 1
    else:
        summary.clips_failed += 1
        summary.failures.append((result.clip_uid, result.error))


def extract_args_from_config(cfg) -> dict:
    """Keyword arguments of :func:`extract_frames` from ``configs/vq2d/extract_frames.yaml``
    (paths left ``null`` default to the Ego4D layout under ``data.root``)."""
    root = Path(cfg.data.root)
    return dict(
        annotations_path=cfg.annotations or root / "v2" / "annotations" / f"vq_{cfg.split}.json",
        clips_dir=cfg.clips_dir or root / "v2" / "clips",
        cache_root=cfg.cache_root or root / "frame_cache",
        parts=list(cfg.parts),
        workers=int(cfg.workers),
        clip_template=cfg.clip_template,
        jpeg_quality=int(cfg.jpeg_quality),
        negatives_per_positive=int(cfg.negatives_per_positive),
        decode_threads=int(cfg.decode_threads),
    )
