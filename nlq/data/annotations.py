"""Ego4D NLQ annotation files (``nlq_{train,val,test_unannotated}.json``, v1 and v2).

Typed structures for language queries, annotations, clips and videos; a validating
loader; a writer; and :meth:`NLQAnnotationFile.queries`, one :class:`NLQQuery` record per
query with text, identified by ``(clip_uid, annotation_uid, query_idx)`` where
``query_idx`` is the position in ``language_queries`` (queries without text are skipped
but keep the positions of the others). Windows are seconds relative to the clip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from episodic.errors import AnnotationError
from episodic.io import atomic_write_json, read_json
from episodic.schema import Node, check_version, extras

_LQ_FIELDS = {"query", "clip_start_sec", "clip_end_sec", "template"}
_CLIP_FIELDS = {"clip_uid", "video_start_sec", "video_end_sec", "clip_start_sec", "clip_end_sec",
                "annotations"}


@dataclass(frozen=True)
class LanguageQuery:
    """One entry of ``language_queries``. Test files carry only ``query``; some queries
    have no text at all (``query`` is then None)."""

    query: str | None
    clip_start_sec: float | None = None
    clip_end_sec: float | None = None
    template: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def window(self) -> tuple[float, float] | None:
        if self.clip_start_sec is None or self.clip_end_sec is None:
            return None
        return (self.clip_start_sec, self.clip_end_sec)

    @classmethod
    def parse(cls, node: Node) -> "LanguageQuery":
        node.expect(dict)
        start = node.float("clip_start_sec", None)
        end = node.float("clip_end_sec", None)
        if (start is None) != (end is None):
            raise node.error("a window needs both clip_start_sec and clip_end_sec")
        if start is not None and end < start:
            raise node.field("clip_end_sec").error(f"window ends before it starts ({start:g} > {end:g})")
        text = node.str("query", None)
        return cls(query=text if text and text.strip() else None, clip_start_sec=start,
                   clip_end_sec=end, template=node.str("template", None),
                   extra=extras(node.value, _LQ_FIELDS))

    def to_dict(self) -> dict:
        out: dict = {}
        if self.clip_start_sec is not None:
            out["clip_start_sec"] = self.clip_start_sec
            out["clip_end_sec"] = self.clip_end_sec
        out.update(self.extra)
        if self.template is not None:
            out["template"] = self.template
        if self.query is not None:
            out["query"] = self.query
        return out


@dataclass
class NLQAnnotation:
    annotation_uid: str
    language_queries: list[LanguageQuery]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"language_queries": [q.to_dict() for q in self.language_queries],
                "annotation_uid": self.annotation_uid, **self.extra}


@dataclass
class NLQClip:
    clip_uid: str
    video_start_sec: float
    video_end_sec: float
    clip_start_sec: float
    clip_end_sec: float
    annotations: list[NLQAnnotation]
    extra: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.clip_end_sec - self.clip_start_sec

    def to_dict(self) -> dict:
        return {"clip_uid": self.clip_uid, "video_start_sec": self.video_start_sec,
                "video_end_sec": self.video_end_sec, "clip_start_sec": self.clip_start_sec,
                "clip_end_sec": self.clip_end_sec, **self.extra,
                "annotations": [a.to_dict() for a in self.annotations]}


@dataclass
class NLQVideo:
    video_uid: str
    clips: list[NLQClip]
    split: str | None = None

    def to_dict(self) -> dict:
        out = {"video_uid": self.video_uid, "clips": [c.to_dict() for c in self.clips]}
        if self.split is not None:
            out["split"] = self.split
        return out


class NLQKey(NamedTuple):
    """An NLQ query's identity (the challenge's)."""

    clip_uid: str
    annotation_uid: str
    query_idx: int


@dataclass(frozen=True)
class NLQQuery:
    """One language query with text, ready for a dataset."""

    video_uid: str
    clip_uid: str
    annotation_uid: str
    query_idx: int
    query: str
    window: tuple[float, float] | None  # GT seconds relative to the clip; None in test files
    clip_duration: float
    video_start_sec: float
    template: str | None = None

    @property
    def key(self) -> NLQKey:
        return NLQKey(self.clip_uid, self.annotation_uid, self.query_idx)


@dataclass
class NLQAnnotationFile:
    version: str
    videos: list[NLQVideo]
    meta: dict = field(default_factory=dict)
    path: str = ""

    def clips(self) -> Iterator[tuple[NLQVideo, NLQClip]]:
        for video in self.videos:
            for clip in video.clips:
                yield video, clip

    def queries(self) -> list[NLQQuery]:
        """Every query with text, in file order (queries without text are skipped)."""
        out = []
        for video, clip in self.clips():
            for ann in clip.annotations:
                for idx, lq in enumerate(ann.language_queries):
                    if lq.query is None:
                        continue
                    out.append(NLQQuery(video.video_uid, clip.clip_uid, ann.annotation_uid, idx,
                                        lq.query, lq.window, clip.duration, clip.video_start_sec,
                                        lq.template))
        return out

    def num_language_queries(self) -> int:
        """All entries of ``language_queries``, with or without text."""
        return sum(len(a.language_queries) for _, c in self.clips() for a in c.annotations)

    def to_dict(self) -> dict:
        return {"version": self.version, **self.meta, "videos": [v.to_dict() for v in self.videos]}


def _parse_clip(node: Node) -> NLQClip:
    start = node.float("clip_start_sec", 0.0)
    end = node.float("clip_end_sec")
    if end <= start:
        raise node.field("clip_end_sec").error(f"clip ends before it starts ({start:g} >= {end:g})")
    annotations = []
    for a in node.list("annotations", []):
        annotations.append(NLQAnnotation(
            annotation_uid=a.str("annotation_uid"),
            language_queries=[LanguageQuery.parse(q) for q in a.list("language_queries")],
            extra=extras(a.value, {"annotation_uid", "language_queries"})))
    return NLQClip(clip_uid=node.str("clip_uid"), video_start_sec=node.float("video_start_sec", 0.0),
                   video_end_sec=node.float("video_end_sec", 0.0), clip_start_sec=start,
                   clip_end_sec=end, annotations=annotations, extra=extras(node.value, _CLIP_FIELDS))


def parse_nlq_annotations(data: dict, file: str = "<memory>") -> NLQAnnotationFile:
    """Validate and type an already-decoded NLQ annotation dict."""
    root = Node(data, file).expect(dict)
    version = check_version(root.field("version").value, file)
    videos = [NLQVideo(video_uid=v.str("video_uid"), split=v.str("split", None),
                       clips=[_parse_clip(c) for c in v.list("clips")])
              for v in root.list("videos")]
    return NLQAnnotationFile(version=version, videos=videos, meta=extras(data, {"version", "videos"}),
                             path=file)


def load_nlq_annotations(path: str | os.PathLike) -> NLQAnnotationFile:
    return parse_nlq_annotations(read_json(path), str(path))


def write_nlq_annotations(ann: NLQAnnotationFile, path: str | os.PathLike, indent: int | None = None) -> None:
    atomic_write_json(Path(path), ann.to_dict(), indent=indent)


__all__ = ["AnnotationError", "LanguageQuery", "NLQAnnotation", "NLQClip", "NLQVideo", "NLQKey",
           "NLQQuery", "NLQAnnotationFile", "parse_nlq_annotations", "load_nlq_annotations",
           "write_nlq_annotations"]
