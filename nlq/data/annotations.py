"""Ego4D NLQ annotation files (``nlq_{train,val,test_unannotated}.json``, v1 and v2).

Typed structures for language queries, annotations, clips and videos; a validating
loader; a writer; and :meth:`NLQAnnotationFile.queries`, one :class:`NLQQuery` record per
query with text, identified by ``(clip_uid, annotation_uid, query_idx)`` where
``query_idx`` is the position in ``language_queries`` (queries without text are skipped
but keep the positions of the others). Windows are seconds relative to the clip.

Besides the Ego4D files (v1, v2), the layout NaQ's release writes (``nlq_aug_naq_train*.json``,
``tacos_*.json``) loads as it is: no ``version``; clips with ``video_start_sec`` /
``video_end_sec`` but no ``clip_start_sec`` / ``clip_end_sec`` (derived: 0 and the clip's
video length); narration queries with ``clip_start_sec`` / ``clip_end_sec`` /
``video_start_sec`` / ``video_end_sec`` / ``query`` only. What was derived is counted in
:attr:`NLQAnnotationFile.derived` and logged (docs/data.md#naq-files).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from episodic.errors import AnnotationError
from episodic.io import atomic_write_json, read_json
from episodic.schema import Node, check_version, extras

log = logging.getLogger(__name__)

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
    video_end_sec: float | None = None  # the clip's own end in video seconds (None: start + duration)

    @property
    def video_bounds(self) -> tuple[float, float]:
        """The clip's ``(video_start_sec, video_end_sec)``: its own end when the file gives one
        (it may differ from start + clip duration by ~0.1 s in real files)."""
        end = self.video_end_sec if self.video_end_sec is not None else self.video_start_sec + self.clip_duration
        return self.video_start_sec, end

    @property
    def key(self) -> NLQKey:
        return NLQKey(self.clip_uid, self.annotation_uid, self.query_idx)


@dataclass
class NLQAnnotationFile:
    version: str  # "" for a file without one (NaQ's released layout)
    videos: list[NLQVideo]
    meta: dict = field(default_factory=dict)
    path: str = ""
    derived: dict = field(default_factory=dict)  # field -> number of entries it was derived for

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
                                        lq.template, clip.video_end_sec))
        return out

    def num_language_queries(self) -> int:
        """All entries of ``language_queries``, with or without text."""
        return sum(len(a.language_queries) for _, c in self.clips() for a in c.annotations)

    def to_dict(self) -> dict:
        head = {"version": self.version} if self.version else {}
        return {**head, **self.meta, "videos": [v.to_dict() for v in self.videos]}


def _parse_clip(node: Node, derived: dict) -> NLQClip:
    video_start = node.float("video_start_sec", None)
    video_end = node.float("video_end_sec", None)
    if video_start is not None and video_end is not None and video_end <= video_start:
        raise node.field("video_end_sec").error(f"clip ends before it starts ({video_start:g} >= {video_end:g})")
    if node.value.get("clip_end_sec") is None:  # NaQ's released layout: clip bounds from the video bounds
        if video_start is None or video_end is None:
            raise node.error("a clip needs clip_end_sec, or video_start_sec and video_end_sec")
        derived["clip_start_sec"] = derived.get("clip_start_sec", 0) + (node.value.get("clip_start_sec") is None)
        derived["clip_end_sec"] = derived.get("clip_end_sec", 0) + 1
        start = node.float("clip_start_sec", 0.0)
        end = start + video_end - video_start
    else:
        start = node.float("clip_start_sec", 0.0)
        end = node.float("clip_end_sec")
    if video_start is None or video_end is None:
        derived["video_start_sec/video_end_sec"] = derived.get("video_start_sec/video_end_sec", 0) + 1
        video_start = 0.0 if video_start is None else video_start
        video_end = video_start + end - start if video_end is None else video_end
    if end <= start:
        raise node.field("clip_end_sec").error(f"clip ends before it starts ({start:g} >= {end:g})")
    annotations = []
    for a in node.list("annotations", []):
        annotations.append(NLQAnnotation(
            annotation_uid=a.str("annotation_uid"),
            language_queries=[LanguageQuery.parse(q) for q in a.list("language_queries")],
            extra=extras(a.value, {"annotation_uid", "language_queries"})))
    return NLQClip(clip_uid=node.str("clip_uid"), video_start_sec=video_start,
                   video_end_sec=video_end, clip_start_sec=start,
                   clip_end_sec=end, annotations=annotations, extra=extras(node.value, _CLIP_FIELDS))


def parse_nlq_annotations(data: dict, file: str = "<memory>") -> NLQAnnotationFile:
    """Validate and type an already-decoded NLQ annotation dict."""
    root = Node(data, file).expect(dict)
    derived: dict[str, int] = {}
    if "version" in data:
        version = check_version(root.field("version").value, file)
    else:  # NaQ's merge_naq_and_nlq writes {"videos": [...]} only
        version = ""
        derived["version"] = 1
    videos = [NLQVideo(video_uid=v.str("video_uid"), split=v.str("split", None),
                       clips=[_parse_clip(c, derived) for c in v.list("clips")])
              for v in root.list("videos")]
    if derived:
        log.info("%s: NaQ release layout: derived %s", file, describe_derived(derived))
    return NLQAnnotationFile(version=version, videos=videos, meta=extras(data, {"version", "videos"}),
                             path=file, derived=derived)


def describe_derived(derived: dict[str, int]) -> str:
    """One line naming what a loader derived, e.g. ``clip_end_sec (= video_end_sec - video_start_sec) for 12 clips``."""
    how = {"version": "no version (an unversioned file)",
           "clip_start_sec": "clip_start_sec (= 0) for {n} clips",
           "clip_end_sec": "clip_end_sec (= clip_start_sec + video_end_sec - video_start_sec) for {n} clips",
           "video_start_sec/video_end_sec": "video_start_sec/video_end_sec (= 0 and the clip's length) for {n} clips"}
    return "; ".join(how.get(k, k + " for {n} entries").format(n=n) for k, n in derived.items())


def load_nlq_annotations(path: str | os.PathLike) -> NLQAnnotationFile:
    return parse_nlq_annotations(read_json(path), str(path))


def write_nlq_annotations(ann: NLQAnnotationFile, path: str | os.PathLike, indent: int | None = None) -> None:
    atomic_write_json(Path(path), ann.to_dict(), indent=indent)


__all__ = ["AnnotationError", "LanguageQuery", "NLQAnnotation", "NLQClip", "NLQVideo", "NLQKey",
           "NLQQuery", "NLQAnnotationFile", "parse_nlq_annotations", "describe_derived", "load_nlq_annotations",
           "write_nlq_annotations"]
