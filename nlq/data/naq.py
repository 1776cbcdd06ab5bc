"""NaQ: narrations as queries (docs/nlq.md#naq).

Every EgoClip narration whose window lies fully inside a train clip of the VQ, NLQ or
Moments annotations becomes an NLQ training query (text = the narration, ``#C C picks a
bag``; window = narration window relative to the clip). A clip's narration queries form
one annotation with ``annotation_uid = f"{video_uid}_{clip_uid}"`` and template "NaQ".
The output is NLQ train plus these annotations, in the NLQ file format.

Everything per narration is vectorised (pandas / numpy); Python loops run over file
chunks, clips and videos only.

The training-time window expansion of NaQ queries lives here too (docs/nlq.md#window-expansion):
:func:`expand_span_steps` is the released rule (on the label's step indices, the default),
:func:`expand_window` this toolkit's earlier rule (on seconds, ``naq_expansion_rule=seconds``).
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from episodic.errors import DataError
from episodic.io import atomic_write_json, read_json
from episodic.schema import Node
from nlq.data.annotations import NLQAnnotationFile, parse_nlq_annotations

log = logging.getLogger(__name__)

EGOCLIP_COLUMNS = ["clip_idx", "video_uid", "video_dur", "narration_source", "narration_ind",
                   "narration_time", "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun"]
POOL_FILES = ("nlq_train.json", "vq_train.json", "moments_train.json")  # NLQ first: its bounds win
NAQ_TEMPLATE = "NaQ"
EXPANSION_RULES = ("steps", "seconds")  # data.naq_expansion_rule: released (step indices) | ours (seconds)
_REQUIRED = ["video_uid", "clip_start", "clip_end", "clip_text"]
_SKIPPED_LINE = re.compile(r"Skipping line \d+")


@dataclass
class NaQStats:
    """Counts of one NaQ creation run."""

    narration_rows: int = 0        # data rows in the TSV (well-formed or not)
    malformed: int = 0             # rows skipped: wrong field count, bad times, no video/text
    narrations: int = 0            # well-formed narrations
    inside_clip: int = 0           # narrations inside at least one pool clip
    outside_clips: int = 0         # narrations inside no pool clip
    queries_added: int = 0         # (narration, clip) pairs = NaQ queries written
    pool_clips: int = 0            # distinct clips in the pool
    pool_sources: dict = field(default_factory=dict)  # pool file -> clips read from it
    clips_with_naq: int = 0        # pool clips that received NaQ queries
    new_clips: int = 0             # of those, clips not in NLQ train (added under their video)
    nlq_train_queries: int = 0     # language queries of NLQ train (kept as they are)

    def lines(self) -> list[str]:
        return [f"narration rows read: {self.narration_rows} ({self.malformed} malformed, skipped)",
                f"narrations inside a clip: {self.inside_clip}; outside every clip: {self.outside_clips}",
                f"clip pool: {self.pool_clips} clips ({', '.join(f'{k}: {v}' for k, v in self.pool_sources.items())})",
                f"NaQ queries added: {self.queries_added} in {self.clips_with_naq} clips "
                f"({self.new_clips} clips not in NLQ train)",
                f"NLQ train queries kept: {self.nlq_train_queries}"]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# Window expansion (training time) -----------------------------------------------------------
def expand_span_steps(start_index: int, end_index: int, num_steps: int, max_scale: float, translate: bool,
                      rng: np.random.Generator) -> tuple[int, int]:
    """NaQ's released expansion of a narration's label span, on step indices.

    ``w = e - s + 1`` steps around the centre ``c = (s + e) / 2`` grows to ``w' = w * U(1, S)``;
    with ``translate`` the centre moves by ``U(-(w' - w) / 2, (w' - w) / 2)`` (so the new span
    still covers the old one up to rounding); then ``s' = max(rint(c - w'/2), 0)`` and
    ``e' = min(rint(c + w'/2), N - 1)`` (``np.rint``: halves round to even), clipped to
    ``[0, N - 1]`` with ``s' <= e'``. Two uniform draws per call, in that order.
    """
    if max_scale <= 1.0:
        raise ValueError(f"the NaQ expansion scale must be > 1 (got {max_scale})")
    centre = (start_index + end_index) / 2.0
    width = end_index - start_index + 1
    new_width = width * rng.uniform(1.0, max_scale)
    if translate:
        slack = (new_width - width) / 2.0
        centre += rng.uniform(-slack, slack)
    start = max(int(np.rint(centre - new_width / 2.0)), 0)
    end = min(int(np.rint(centre + new_width / 2.0)), num_steps - 1)
    start = int(np.clip(start, 0, num_steps - 1))
    end = int(np.clip(end, 0, num_steps - 1))
    if start > end:  # cannot happen for a valid span (s <= e); kept as the released check
        raise ValueError(f"expanded span ({start}, {end}) is empty (from ({start_index}, {end_index}))")
    return start, end


def expand_window(window: tuple[float, float], duration: float, max_scale: float,
                  rng: np.random.Generator) -> tuple[float, float]:
    """This toolkit's earlier NaQ expansion, on seconds (``naq_expansion_rule=seconds``): width
    ``w' = w * U(1, max_scale)`` (at most the duration), placed at a random offset so that it
    still contains ``window`` and stays in ``[0, duration]``. ``window`` must lie in
    ``[0, duration]``. Targets stay narrower than the released rule's on pooled steps."""
    start, end = window
    width = end - start
    new_width = min(width * rng.uniform(1.0, max_scale), duration)
    low = max(0.0, end - new_width)  # leftmost start still containing the window
    high = min(start, duration - new_width)  # rightmost start, window inside the clip
    new_start = rng.uniform(low, high) if high > low else low
    return new_start, min(new_start + new_width, duration)


# Narrations ---------------------------------------------------------------------------------
def read_narrations(path: str | os.PathLike, chunksize: int = 500_000,
                    progress: bool = True) -> tuple[pd.DataFrame, NaQStats]:
    """The EgoClip TSV as a frame ``[video_uid, start, end, text]`` (video seconds), well-formed
    rows only; the stats count rows read and malformed rows skipped.

    A header row naming the columns is used when present; otherwise the column order of docs/data.md#narrations.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"narrations file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n").split("\t")
    has_header = all(c in first for c in _REQUIRED)
    if not has_header and any(c in first for c in _REQUIRED):
        missing = [c for c in _REQUIRED if c not in first]
        raise DataError(f"{path}: header lacks column(s) {missing}")
    stats, frames = NaQStats(), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        reader = pd.read_csv(path, sep="\t", header=0 if has_header else None,
                             names=None if has_header else EGOCLIP_COLUMNS, dtype=str,
                             keep_default_na=False, on_bad_lines="warn", chunksize=chunksize,
                             encoding_errors="replace")
        for chunk in tqdm(reader, desc="reading narrations", unit="chunk", disable=not progress):
            stats.narration_rows += len(chunk)
            start = pd.to_numeric(chunk["clip_start"], errors="coerce").to_numpy(np.float64)
            end = pd.to_numeric(chunk["clip_end"], errors="coerce").to_numpy(np.float64)
            video = chunk["video_uid"].fillna("").str.strip()
            text = chunk["clip_text"].fillna("").str.strip()
            ok = (np.isfinite(start) & np.isfinite(end) & (end >= start) & (start >= 0)
                  & (video != "").to_numpy() & (text != "").to_numpy())
            stats.malformed += int((~ok).sum())
            frames.append(pd.DataFrame({"video_uid": video[ok].to_numpy(), "start": start[ok],
                                        "end": end[ok], "text": text[ok].to_numpy()}))
    bad_lines = sum(len(_SKIPPED_LINE.findall(str(w.message))) for w in caught
                    if issubclass(w.category, pd.errors.ParserWarning))
    stats.narration_rows += bad_lines
    stats.malformed += bad_lines
    narrations = (pd.concat(frames, ignore_index=True) if frames
                  else pd.DataFrame({"video_uid": [], "start": [], "end": [], "text": []}))
    stats.narrations = len(narrations)
    return narrations, stats


# Clip pool ----------------------------------------------------------------------------------
def load_clip_pool(annotations_dir: str | os.PathLike,
                   files: tuple[str, ...] = POOL_FILES) -> tuple[pd.DataFrame, dict[str, int]]:
    """Train clips of the annotation files present in ``annotations_dir``:
    frame ``[video_uid, clip_uid, video_start_sec, video_end_sec]``, one row per clip_uid (the
    first file listing a clip gives its bounds), and clips read per file."""
    annotations_dir = Path(annotations_dir)
    rows: list[tuple[str, str, float, float]] = []
    sources: dict[str, int] = {}
    for name in files:
        path = annotations_dir / name
        if not path.is_file():
            continue
        root = Node(read_json(path), str(path)).expect(dict)
        before = len(rows)
        for video in root.list("videos"):
            video_uid = video.str("video_uid")
            for clip in video.list("clips", []):
                start = clip.float("video_start_sec")
                end = clip.float("video_end_sec")
                if end <= start:
                    raise clip.field("video_end_sec").error(f"clip ends before it starts ({start:g} >= {end:g})")
                rows.append((video_uid, clip.str("clip_uid"), start, end))
        sources[name] = len(rows) - before
    if not sources:
        raise DataError(f"{annotations_dir}: none of {', '.join(files)} found (the NaQ clip pool)")
    pool = pd.DataFrame(rows, columns=["video_uid", "clip_uid", "video_start_sec", "video_end_sec"])
    return pool.drop_duplicates("clip_uid", keep="first").reset_index(drop=True), sources


# Matching -----------------------------------------------------------------------------------
def match_narrations(narrations: pd.DataFrame, pool: pd.DataFrame, tolerance: float = 1e-6,
                     chunksize: int = 1_000_000, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All (narration row, clip row) pairs with the narration window inside the clip
    (``clip start - tol <= start`` and ``end <= clip end + tol``), sorted by clip then
    narration row. Vectorised: each narration is paired with every clip of its video."""
    videos = pd.Index(pool["video_uid"].unique())
    clip_video = videos.get_indexer(pool["video_uid"])  # [C]
    clip_order = np.argsort(clip_video, kind="stable")  # clip rows grouped by video
    first = np.zeros(len(videos) + 1, dtype=np.int64)
    first[1:] = np.cumsum(np.bincount(clip_video, minlength=len(videos)))
    clip_start = pool["video_start_sec"].to_numpy(np.float64)
    clip_end = pool["video_end_sec"].to_numpy(np.float64)
    narr_video = videos.get_indexer(narrations["video_uid"])  # [M], -1: video without pool clips
    start = narrations["start"].to_numpy(np.float64)
    end = narrations["end"].to_numpy(np.float64)
    pairs_n, pairs_c = [], []
    for lo in tqdm(range(0, len(narrations), chunksize), desc="matching narrations", unit="chunk",
                   disable=not progress):
        rows = np.arange(lo, min(lo + chunksize, len(narrations)))
        rows = rows[narr_video[rows] >= 0]
        v = narr_video[rows]
        count = first[v + 1] - first[v]  # clips of each narration's video
        n = np.repeat(rows, count)
        offset = np.arange(len(n)) - np.repeat(np.cumsum(count) - count, count)
        c = clip_order[np.repeat(first[v], count) + offset]
        inside = (start[n] >= clip_start[c] - tolerance) & (end[n] <= clip_end[c] + tolerance)
        pairs_n.append(n[inside])
        pairs_c.append(c[inside])
    n = np.concatenate(pairs_n) if pairs_n else np.zeros(0, dtype=np.int64)
    c = np.concatenate(pairs_c) if pairs_c else np.zeros(0, dtype=np.int64)
    order = np.lexsort((n, c))
    return n[order], c[order]


# Output -------------------------------------------------------------------------------------
def naq_annotations(narrations: pd.DataFrame, pool: pd.DataFrame, narration_rows: np.ndarray,
                    clip_rows: np.ndarray) -> dict[str, dict]:
    """clip_uid -> NaQ annotation dict ``{annotation_uid, language_queries}`` for matched pairs
    sorted by clip (as :func:`match_narrations` returns them)."""
    offset = pool["video_start_sec"].to_numpy(np.float64)[clip_rows]
    length = (pool["video_end_sec"].to_numpy(np.float64) - pool["video_start_sec"].to_numpy(np.float64))[clip_rows]
    start = narrations["start"].to_numpy(np.float64)[narration_rows]
    end = narrations["end"].to_numpy(np.float64)[narration_rows]
    records = pd.DataFrame({
        "clip_start_sec": np.clip(start - offset, 0.0, length),
        "clip_end_sec": np.clip(end - offset, 0.0, length),
        "video_start_sec": start,
        "video_end_sec": end,
        "template": NAQ_TEMPLATE,
        "query": narrations["text"].to_numpy()[narration_rows],
    }).to_dict("records")
    bounds = np.flatnonzero(np.diff(clip_rows)) + 1
    starts = np.concatenate([[0], bounds]) if len(clip_rows) else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [len(clip_rows)]]) if len(clip_rows) else starts
    video_uids, clip_uids = pool["video_uid"].to_numpy(), pool["clip_uid"].to_numpy()
    out = {}
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        row = clip_rows[lo]
        out[clip_uids[row]] = {"language_queries": records[lo:hi],
                               "annotation_uid": f"{video_uids[row]}_{clip_uids[row]}"}
    return out


def merge_into_nlq(nlq_train: dict | None, annotations: dict[str, dict], pool: pd.DataFrame,
                   file: str = "nlq_train.json") -> tuple[dict, int]:
    """NLQ train (raw dict, or None) plus NaQ annotations per clip; returns (file dict, new clips).

    Clips of NLQ train get one more annotation; other clips are added under their video
    (a new video entry when NLQ train lacks the video).
    """
    out = dict(nlq_train) if nlq_train is not None else {"version": "2.0", "videos": []}
    out["description"] = (f"{out.get('description', 'NLQ train')} + NaQ (narrations as queries)"
                          if nlq_train is not None else "NaQ (narrations as queries)")
    videos = [dict(v, clips=[dict(c, annotations=list(c.get("annotations") or [])) for c in v["clips"]])
              for v in out["videos"]]
    out["videos"] = videos
    by_video = {v["video_uid"]: v for v in videos}
    by_clip = {c["clip_uid"]: c for v in videos for c in v["clips"]}
    bounds = dict(zip(pool["clip_uid"], zip(pool["video_uid"], pool["video_start_sec"], pool["video_end_sec"])))
    new_clips = 0
    for clip_uid, annotation in annotations.items():
        if clip_uid in by_clip:
            existing = {a.get("annotation_uid") for a in by_clip[clip_uid]["annotations"]}
            if annotation["annotation_uid"] in existing:
                raise DataError(f"{file}: clip {clip_uid} already has annotation "
                                f"{annotation['annotation_uid']} (is this file already NaQ-augmented?)")
            by_clip[clip_uid]["annotations"].append(annotation)
            continue
        video_uid, start, end = bounds[clip_uid]
        start, end = float(start), float(end)
        if video_uid not in by_video:
            by_video[video_uid] = {"video_uid": video_uid, "split": "train", "clips": []}
            videos.append(by_video[video_uid])
        by_video[video_uid]["clips"].append({"clip_uid": clip_uid, "video_start_sec": start,
                                             "video_end_sec": end, "clip_start_sec": 0.0,
                                             "clip_end_sec": end - start, "annotations": [annotation]})
        new_clips += 1
    return out, new_clips


def make_naq(narrations_path: str | os.PathLike, annotations_dir: str | os.PathLike,
             out_path: str | os.PathLike, progress: bool = True) -> NaQStats:
    """Create the NLQ + NaQ training file ``out_path`` (written atomically); returns the counts."""
    annotations_dir = Path(annotations_dir)
    nlq_path = annotations_dir / "nlq_train.json"
    nlq_train = read_json(nlq_path) if nlq_path.is_file() else None
    if nlq_train is not None:
        parsed = parse_nlq_annotations(nlq_train, str(nlq_path))  # validates before any work
    else:
        log.warning("%s not found: the output holds NaQ queries only", nlq_path)
    pool, sources = load_clip_pool(annotations_dir)
    narrations, stats = read_narrations(narrations_path, progress=progress)
    narration_rows, clip_rows = match_narrations(narrations, pool, progress=progress)
    annotations = naq_annotations(narrations, pool, narration_rows, clip_rows)
    merged, new_clips = merge_into_nlq(nlq_train, annotations, pool, file=str(nlq_path))
    stats.inside_clip = int(np.unique(narration_rows).size)
    stats.outside_clips = stats.narrations - stats.inside_clip
    stats.queries_added = int(len(narration_rows))
    stats.pool_clips, stats.pool_sources = len(pool), sources
    stats.clips_with_naq, stats.new_clips = len(annotations), new_clips
    stats.nlq_train_queries = parsed.num_language_queries() if nlq_train is not None else 0
    merged["naq"] = {"narrations": str(narrations_path), "annotations_dir": str(annotations_dir),
                     "counts": stats.as_dict()}
    atomic_write_json(out_path, merged)
    return stats


# Released NaQ files --------------------------------------------------------------------------
def check_clip_times(naq: NLQAnnotationFile, nlq: NLQAnnotationFile, abs_tol: float = 1e-6) -> int:
    """Check that every clip of ``naq`` (an NLQ + NaQ file, e.g. NaQ's released
    ``nlq_aug_naq_train*.json``) that ``nlq`` also lists has the same video and the same
    ``video_start_sec`` / ``video_end_sec`` (NaQ's own merge asserts this). Returns the number
    of clips compared; a disagreement is a :class:`DataError` naming both files and the clip."""
    reference = {clip.clip_uid: (video.video_uid, clip.video_start_sec, clip.video_end_sec)
                 for video, clip in nlq.clips()}
    compared = 0
    for video, clip in naq.clips():
        ref = reference.get(clip.clip_uid)
        if ref is None:
            continue
        compared += 1
        ref_video, ref_start, ref_end = ref
        if ref_video != video.video_uid:
            raise DataError(f"{naq.path}: clip {clip.clip_uid} is under video {video.video_uid}, "
                            f"but {nlq.path} puts it under video {ref_video}")
        for key, mine, theirs in (("video_start_sec", clip.video_start_sec, ref_start),
                                  ("video_end_sec", clip.video_end_sec, ref_end)):
            if not math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=abs_tol):
                raise DataError(f"{naq.path}: clip {clip.clip_uid} has {key} {mine!r}, but {nlq.path} "
                                f"says {theirs!r} (the NaQ file was built from other NLQ annotations)")
    return compared
