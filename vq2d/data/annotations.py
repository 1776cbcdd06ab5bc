"""Ego4D VQ2D annotation files (``vq_{train,val,test_unannotated}.json``, v1 and v2).

Typed structures for boxes, query sets, annotations, clips and videos; a validating
loader; a writer; and :meth:`VQAnnotationFile.queries`, one :class:`VQQuery` record per
valid query set with its identity ``(clip_uid, annotation_index, query_set)``.

Boxes keep the file's coordinates (they can be negative or exceed the frame: clip them
when cropping, keep them for scoring). Query sets with ``is_valid: false`` are kept for
round trips but never yielded as queries.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from episodic.errors import AnnotationError
from episodic.io import atomic_write_json, read_json
from episodic.schema import Node, check_version, extras

CANONICAL_FPS = 30.0
CLIP_FPS = 5.0

_BOX_FIELDS = {"frame_number", "x", "y", "width", "height", "rotation", "original_width",
               "original_height", "video_frame_number"}
_QS_FIELDS = {"is_valid", "query_frame", "query_video_frame", "object_title", "visual_crop",
              "response_track"}
_CLIP_FIELDS = {"clip_uid", "video_start_sec", "video_end_sec", "video_start_frame",
                "video_end_frame", "clip_fps", "annotations"}


@dataclass(frozen=True)
class BBox:
    """One box on one 5 fps clip frame: (x, y, width, height) in original-resolution pixels."""

    frame_number: int
    x: float
    y: float
    width: float
    height: float
    original_width: int | None = None
    original_height: int | None = None
    rotation: float = 0.0
    video_frame_number: int | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.width, self.y + self.height)

    @property
    def area(self) -> float:
        return self.width * self.height

    @classmethod
    def parse(cls, node: Node) -> "BBox":
        return cls(
            frame_number=node.int("frame_number", minimum=0),
            x=node.float("x"),
            y=node.float("y"),
            width=node.float("width", positive=True),
            height=node.float("height", positive=True),
            original_width=node.int("original_width", None, minimum=1),
            original_height=node.int("original_height", None, minimum=1),
            rotation=node.float("rotation", 0.0),
            video_frame_number=node.int("video_frame_number", None),
        )

    def to_dict(self) -> dict:
        out = {"frame_number": self.frame_number, "x": self.x, "y": self.y, "width": self.width,
               "height": self.height, "rotation": self.rotation}
        if self.original_width is not None:
            out["original_width"] = self.original_width
        if self.original_height is not None:
            out["original_height"] = self.original_height
        if self.video_frame_number is not None:
            out["video_frame_number"] = self.video_frame_number
        return out


@dataclass(frozen=True)
class QuerySet:
    """A valid query set: the crop, the query frame and (train/val) the response track."""

    query_frame: int
    visual_crop: BBox
    object_title: str = ""
    response_track: tuple[BBox, ...] | None = None
    query_video_frame: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, node: Node) -> "QuerySet":
        query_frame = node.int("query_frame", minimum=0)
        crop = BBox.parse(node.field("visual_crop"))
        track = None
        if node.has("response_track"):
            boxes = [BBox.parse(b) for b in node.list("response_track")]
            if not boxes:
                raise node.field("response_track").error("empty response track")
            for i in range(1, len(boxes)):
                if boxes[i].frame_number != boxes[i - 1].frame_number + 1:
                    raise node.field("response_track").child(i).error(
                        f"non-contiguous response track: frame {boxes[i].frame_number} follows "
                        f"frame {boxes[i - 1].frame_number}")
            if boxes[-1].frame_number >= query_frame:
                raise node.field("response_track").child(len(boxes) - 1).error(
                    f"response track reaches frame {boxes[-1].frame_number}, not before the "
                    f"query frame {query_frame}")
            track = tuple(boxes)
        return cls(query_frame=query_frame, visual_crop=crop,
                   object_title=node.str("object_title", ""), response_track=track,
                   query_video_frame=node.int("query_video_frame", None),
                   extra=extras(node.value, _QS_FIELDS))

    def to_dict(self) -> dict:
        out = {"is_valid": True, **self.extra, "query_frame": self.query_frame}
        if self.query_video_frame is not None:
            out["query_video_frame"] = self.query_video_frame
        out["object_title"] = self.object_title
        out["visual_crop"] = self.visual_crop.to_dict()
        if self.response_track is not None:
            out["response_track"] = [b.to_dict() for b in self.response_track]
        return out


@dataclass
class VQAnnotation:
    """One annotation of a clip: up to three query sets keyed "1", "2", "3".

    ``query_sets[k]`` is a :class:`QuerySet` when valid, else the raw dict (kept as is)."""

    query_sets: dict[str, QuerySet | dict]
    annotation_uid: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        out["query_sets"] = {k: (qs.to_dict() if isinstance(qs, QuerySet) else qs)
                             for k, qs in self.query_sets.items()}
        if self.annotation_uid is not None:
            out["annotation_uid"] = self.annotation_uid
        return out


@dataclass
class VQClip:
    clip_uid: str
    video_start_sec: float
    video_end_sec: float
    video_start_frame: int
    video_end_frame: int
    clip_fps: float
    annotations: list[VQAnnotation]
    extra: dict = field(default_factory=dict)

    def canonical_frame(self, clip_frame: int) -> int:
        """30 fps canonical-video frame of 5 fps clip frame ``clip_frame`` (docs/data.md#vq2d-annotations)."""
        return self.video_start_frame + round(clip_frame * CANONICAL_FPS / self.clip_fps)

    def to_dict(self) -> dict:
        out = {"clip_uid": self.clip_uid, "video_start_sec": self.video_start_sec,
               "video_end_sec": self.video_end_sec, "video_start_frame": self.video_start_frame,
               "video_end_frame": self.video_end_frame}
        out.update(self.extra)
        out["clip_fps"] = self.clip_fps
        out["annotations"] = [a.to_dict() for a in self.annotations]
        return out


@dataclass
class VQVideo:
    video_uid: str
    clips: list[VQClip]
    split: str | None = None

    def to_dict(self) -> dict:
        out = {"video_uid": self.video_uid}
        if self.split is not None:
            out["split"] = self.split
        out["clips"] = [c.to_dict() for c in self.clips]
        return out


class QueryKey(NamedTuple):
    """A VQ2D query's identity: (clip_uid, annotation index in the clip, query-set key)."""

    clip_uid: str
    annotation_index: int
    query_set: str


@dataclass(frozen=True)
class VQQuery:
    """One valid query set with everything needed to answer it."""

    video_uid: str
    clip_uid: str
    annotation_index: int
    annotation_uid: str | None
    query_set: str
    clip_fps: float
    video_start_frame: int
    query: QuerySet

    @property
    def key(self) -> QueryKey:
        return QueryKey(self.clip_uid, self.annotation_index, self.query_set)

    @property
    def name(self) -> str:
        """Readable id for logs and file names: ``<clip_uid>_<annotation_index>_<query_set>``."""
        return f"{self.clip_uid}_{self.annotation_index}_{self.query_set}"

    @property
    def query_frame(self) -> int:
        return self.query.query_frame

    @property
    def visual_crop(self) -> BBox:
        return self.query.visual_crop

    @property
    def response_track(self) -> tuple[BBox, ...] | None:
        return self.query.response_track

    @property
    def object_title(self) -> str:
        return self.query.object_title


@dataclass
class VQAnnotationFile:
    """A whole VQ2D annotation file. ``problems`` lists query sets skipped as malformed
    when loaded with ``strict=False``."""

    version: str
    videos: list[VQVideo]
    meta: dict = field(default_factory=dict)
    path: str = ""
    problems: list[AnnotationError] = field(default_factory=list)

    def clips(self) -> Iterator[tuple[VQVideo, VQClip]]:
        for video in self.videos:
            for clip in video.clips:
                yield video, clip

    def queries(self) -> list[VQQuery]:
        """Every valid query set, in file order."""
        out = []
        for video, clip in self.clips():
            for ai, ann in enumerate(clip.annotations):
                for key, qs in ann.query_sets.items():
                    if isinstance(qs, QuerySet):
                        out.append(VQQuery(video.video_uid, clip.clip_uid, ai, ann.annotation_uid,
                                           key, clip.clip_fps, clip.video_start_frame, qs))
        return out

    def to_dict(self) -> dict:
        return {"version": self.version, **self.meta, "videos": [v.to_dict() for v in self.videos]}


def _parse_annotation(node: Node, strict: bool, problems: list) -> VQAnnotation:
    query_sets: dict[str, QuerySet | dict] = {}
    qs_root = node.field("query_sets").expect(dict)
    for key in qs_root.value:
        qs_node = qs_root.child(key)
        qs_node.expect(dict)
        if not qs_node.bool("is_valid", True):
            query_sets[key] = qs_node.value
            continue
        try:
            query_sets[key] = QuerySet.parse(qs_node)
        except AnnotationError as e:
            if strict:
                raise
            problems.append(e)
            query_sets[key] = {**qs_node.value, "is_valid": False}
    return VQAnnotation(query_sets=query_sets, annotation_uid=node.str("annotation_uid", None),
                        extra=extras(node.value, {"query_sets", "annotation_uid"}))


def _parse_clip(node: Node, strict: bool, problems: list) -> VQClip:
    return VQClip(
        clip_uid=node.str("clip_uid"),
        video_start_sec=node.float("video_start_sec", 0.0),
        video_end_sec=node.float("video_end_sec", 0.0),
        video_start_frame=node.int("video_start_frame", 0, minimum=0),
        video_end_frame=node.int("video_end_frame", 0, minimum=0),
        clip_fps=node.float("clip_fps", CLIP_FPS, positive=True),
        annotations=[_parse_annotation(a, strict, problems) for a in node.list("annotations", [])],
        extra=extras(node.value, _CLIP_FIELDS),
    )


def parse_vq_annotations(data: dict, file: str = "<memory>", strict: bool = True) -> VQAnnotationFile:
    """Validate and type an already-decoded VQ2D annotation dict.

    ``strict=False``: a malformed query set is recorded in ``problems`` and skipped
    (treated as invalid) instead of raising; structural errors above it still raise."""
    root = Node(data, file).expect(dict)
    version = check_version(root.field("version").value, file)
    problems: list[AnnotationError] = []
    videos = []
    for v in root.list("videos"):
        videos.append(VQVideo(video_uid=v.str("video_uid"), split=v.str("split", None),
                              clips=[_parse_clip(c, strict, problems) for c in v.list("clips")]))
    meta = extras(data, {"version", "videos"})
    return VQAnnotationFile(version=version, videos=videos, meta=meta, path=file, problems=problems)


def load_vq_annotations(path: str | os.PathLike, strict: bool = True) -> VQAnnotationFile:
    """Read and validate a VQ2D annotation file (see :func:`parse_vq_annotations`)."""
    return parse_vq_annotations(read_json(path), str(path), strict=strict)


def write_vq_annotations(ann: VQAnnotationFile, path: str | os.PathLike, indent: int | None = None) -> None:
    atomic_write_json(Path(path), ann.to_dict(), indent=indent)
