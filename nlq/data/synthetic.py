"""Synthetic mini-Ego4D for NLQ (+ EgoClip narrations for NaQ), in the exact Ego4D formats.

``generate_nlq(root)`` writes under ``root/v2/``::

    annotations/nlq_{train,val,test_unannotated}.json   NLQ v2 format (test: query text only)
    annotations/moments_train.json                      extra train clips with no NLQ query
    nlq_features/{synthetic,synthetic_clip}/<clip_uid>.pt + feature_shapes.json   [T, D]
    narrations/egoclip.tsv                              EgoClip narrations of every video

Videos are activity timelines (see :mod:`nlq.data.synthetic_world`); clips are time ranges
of them; queries and narrations describe the same activities with the same words
(:mod:`nlq.data.synthetic_language`). Deterministic: the same seed and settings give
byte-identical files.
"""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from episodic.io import atomic_torch_save, atomic_write_json, atomic_write_text
from nlq.data.synthetic_language import (QuerySpec, candidate_queries, egoclip_tsv, narrate,
                                         select_queries)
from nlq.data.synthetic_world import (FEATURE_RATE, VIDEO_FPS, Activity, FeatureView,
                                      LatentFeatureModel, sample_activities)

MAIN_FEATURES, CLIP_FEATURES = "synthetic", "synthetic_clip"
NLQ_SPLITS = {"train": "nlq_train.json", "val": "nlq_val.json", "test": "nlq_test_unannotated.json"}
MOMENTS = "moments_train"
DATE = "240101"  # fixed, so files are reproducible


@dataclass(frozen=True)
class NLQSynthConfig:
    n_train_clips: int = 9  # NLQ train clips (few queries: NaQ has something to add)
    n_val_clips: int = 9
    n_test_clips: int = 5
    n_moments_clips: int = 24  # train clips with no NLQ query (listed in moments_train.json)
    clip_duration: tuple[float, float] = (60.0, 150.0)  # seconds, uniform
    clips_per_video: tuple[int, int] = (1, 3)  # inclusive range
    queries_per_clip: tuple[int, int] = (7, 11)  # inclusive range (fewer if the clip lacks them)
    textless_queries: int = 1  # per annotated split (train, val): queries with no `query` text
    objects_per_video: int = 10  # objects present in one video (they recur, as real objects do)
    places_per_video: int = 5
    activity_median_sec: float = 6.0  # activity lengths: log-normal, clipped to [2, 20] s
    activity_gap_sec: tuple[float, float] = (0.5, 4.0)  # idle time between activities
    narration_spacing_sec: float = 3.0  # one narration per this many seconds of activity
    feature_dim: int = 256  # D of the main feature set ("synthetic")
    clip_feature_dim: int = 128  # D of the second view ("synthetic_clip", ReLER's CLIP stream)
    feature_noise: float = 2.0  # per-step noise std before temporal smoothing
    scene_scale: float = 0.7  # std of the slowly drifting scene component

    def __post_init__(self):
        counts = ("n_train_clips", "n_val_clips", "n_test_clips", "n_moments_clips", "textless_queries")
        bad = [k for k in counts if getattr(self, k) < 0]
        for key, low in (("clip_duration", 10.0), ("clips_per_video", 1), ("queries_per_clip", 0),
                         ("activity_gap_sec", 0.0)):
            lo, hi = getattr(self, key)
            if not low <= lo <= hi:
                bad.append(key)
        if min(self.feature_dim, self.clip_feature_dim, self.objects_per_video, self.places_per_video) < 1:
            bad.append("feature_dim/clip_feature_dim/objects_per_video/places_per_video")
        if bad:
            raise ValueError(f"invalid synthetic NLQ setting(s) {bad}: counts must be >= 0, ranges "
                             f"(lo, hi) ordered, clips >= 10 s long, dims >= 1")


PRESETS: dict[str, dict] = {
    "small": {},  # the defaults above: ~80 train / ~80 val / ~40 test queries, a few seconds
    "large": dict(n_train_clips=150, n_val_clips=50, n_test_clips=30, n_moments_clips=250,
                  clip_duration=(180.0, 480.0), queries_per_clip=(8, 14), objects_per_video=14,
                  places_per_video=7),
}


@dataclass
class _Clip:
    clip_uid: str
    source_clip_uid: str
    split: str  # "train" | "val" | "test" | MOMENTS
    video_start_sec: float
    duration: float

    @property
    def video_end_sec(self) -> float:
        return round(self.video_start_sec + self.duration, 3)

    def activities(self, acts: list[Activity]) -> list[Activity]:
        return [a for a in acts if a.start >= self.video_start_sec and a.end <= self.video_end_sec]

    def header(self) -> dict:
        return {"clip_uid": self.clip_uid, "video_start_sec": self.video_start_sec,
                "video_end_sec": self.video_end_sec, "video_start_frame": _frame(self.video_start_sec),
                "video_end_frame": _frame(self.video_end_sec), "clip_start_sec": 0.0,
                "clip_end_sec": self.duration, "clip_start_frame": 0,
                "clip_end_frame": _frame(self.duration), "source_clip_uid": self.source_clip_uid}


@dataclass
class _Video:
    video_uid: str
    split: str  # "train" (NLQ train and Moments clips), "val" or "test"
    duration: float
    clips: list[_Clip]
    activities: list[Activity] = dataclasses.field(default_factory=list)


def _frame(sec: float) -> int:
    return int(round(sec * VIDEO_FPS))


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _plan_videos(rng: np.random.Generator, cfg: NLQSynthConfig) -> list[_Video]:
    """Videos of each split holding 1-3 clips each, with video time before, between and
    after the clips (narrated, but outside every clip)."""
    kinds = {"train": ["train"] * cfg.n_train_clips + [MOMENTS] * cfg.n_moments_clips,
             "val": ["val"] * cfg.n_val_clips, "test": ["test"] * cfg.n_test_clips}
    videos = []
    for split, clip_kinds in kinds.items():
        clip_kinds = [clip_kinds[i] for i in rng.permutation(len(clip_kinds))]
        while clip_kinds:
            n = int(rng.integers(cfg.clips_per_video[0], cfg.clips_per_video[1] + 1))
            group, clip_kinds = clip_kinds[:n], clip_kinds[n:]
            t, clips = rng.uniform(10.0, 90.0), []
            for kind in group:
                dur = round(float(rng.uniform(*cfg.clip_duration)), 3)
                clips.append(_Clip(_uid(rng), _uid(rng), kind, round(float(t), 3), dur))
                t += dur + rng.uniform(20.0, 120.0)
            videos.append(_Video(_uid(rng), split, round(float(t + rng.uniform(0.0, 60.0)), 3), clips))
    return videos


def _language_query(spec: QuerySpec, act: Activity, clip: _Clip) -> dict:
    out = {"clip_start_sec": round(act.start - clip.video_start_sec, 3),
           "clip_end_sec": round(act.end - clip.video_start_sec, 3),
           "video_start_sec": act.start, "video_end_sec": act.end,
           "video_start_frame": _frame(act.start), "video_end_frame": _frame(act.end),
           "template": spec.template, "query": spec.query}
    out.update(zip(("slot_x", "verb_x", "slot_y", "verb_y"), spec.slots))
    out["raw_tags"] = [spec.template, spec.query, *spec.slots]
    return out


def _annotate_clip(rng: np.random.Generator, cfg: NLQSynthConfig, clip: _Clip,
                   acts: list[Activity]) -> list[dict]:
    """A clip's annotations: its queries split among one or two annotators."""
    inside = clip.activities(acts)
    count = int(rng.integers(cfg.queries_per_clip[0], cfg.queries_per_clip[1] + 1))
    queries = [_language_query(s, inside[s.answer], clip)
               for s in select_queries(rng, candidate_queries(inside), count)]
    if clip.split == "test":
        queries = [{"query": q["query"]} for q in queries]
    cut = int(rng.integers(2, len(queries) - 1)) if len(queries) >= 4 and rng.random() < 0.6 else len(queries)
    groups = [g for g in (queries[:cut], queries[cut:]) if g]
    return [{"annotation_uid": _uid(rng), "language_queries": g} for g in groups]


def _drop_texts(rng: np.random.Generator, clips: list[dict], count: int, first_form: int = 0) -> None:
    """Remove the text of ``count`` queries (never the last of an annotation, so the next
    query's query_idx shows that positions are kept), as in the real files: alternately
    with nothing but the window (``raw_tags: []``) and with the template only."""
    slots = [(c, a, i) for c, clip in enumerate(clips) for a, ann in enumerate(clip["annotations"])
             for i in range(len(ann["language_queries"]) - 1)]
    for n, k in enumerate(rng.permutation(len(slots))[:count], start=first_form):
        c, a, i = slots[k]
        q = clips[c]["annotations"][a]["language_queries"][i]
        keep = ("clip_start_sec", "clip_end_sec", "video_start_sec", "video_end_sec",
                "video_start_frame", "video_end_frame") + (("template",) if n % 2 else ())
        stripped = {key: q[key] for key in keep}
        stripped["raw_tags"] = [q["template"]] if n % 2 else []
        clips[c]["annotations"][a]["language_queries"][i] = stripped


def _annotation_file(videos: list[dict], description: str) -> dict:
    return {"version": "2.0", "date": DATE, "description": description, "videos": videos}


def build_config(preset: str = "small", **overrides) -> NLQSynthConfig:
    """The generator settings of a preset with keyword overrides (unknown keys: error)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic NLQ preset {preset!r} (known: {sorted(PRESETS)})")
    known = {f.name for f in dataclasses.fields(NLQSynthConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown synthetic NLQ setting(s) {unknown} (known: {sorted(known)})")
    return NLQSynthConfig(**{**PRESETS[preset], **overrides})


def feature_model(seed: int, cfg: NLQSynthConfig) -> LatentFeatureModel:
    """The fixed embeddings/projections behind the features of data set ``seed``."""
    views = (FeatureView(MAIN_FEATURES, cfg.feature_dim, (1.0, 1.0, 0.4)),  # motion-heavy view
             FeatureView(CLIP_FEATURES, cfg.clip_feature_dim, (0.5, 1.2, 0.8)))  # object/scene view
    return LatentFeatureModel(seed=seed, views=views, noise=cfg.feature_noise, scene_scale=cfg.scene_scale)


def generate_nlq(root: Path, seed: int = 0, preset: str = "small", **overrides) -> dict:
    """Write the NLQ part of the synthetic data set under root/v2/. Returns a summary dict
    {split: {"clips": n, "queries": n}, "narrations": n, "feature_sets": {name: dim}}."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    cfg = build_config(preset, **overrides)
    out = Path(root) / "v2"
    videos = _plan_videos(np.random.default_rng([seed, 1]), cfg)
    narrations = []
    for i, video in enumerate(videos):
        rng = np.random.default_rng([seed, 2, i])
        video.activities = sample_activities(
            rng, video.duration, objects_per_video=cfg.objects_per_video,
            places_per_video=cfg.places_per_video, activity_median_sec=cfg.activity_median_sec,
            gap_sec=tuple(cfg.activity_gap_sec))
        narrations.append((video.video_uid, video.duration,
                           narrate(rng, video.activities, video.duration, spacing_sec=cfg.narration_spacing_sec)))
    atomic_write_text(out / "narrations" / "egoclip.tsv", egoclip_tsv(narrations))

    summary: dict = {}
    query_rng = np.random.default_rng([seed, 3])
    for split, filename in NLQ_SPLITS.items():
        entries, clips = [], []
        for video in (v for v in videos if v.split == split):
            vclips = [dict(c.header(), annotations=_annotate_clip(query_rng, cfg, c, video.activities))
                      for c in video.clips if c.split == split]
            entries.append({"video_uid": video.video_uid, "split": split, "clips": vclips})
            clips += vclips
        if split != "test":
            _drop_texts(query_rng, clips, cfg.textless_queries, first_form=int(split == "val"))
        name = "test unannotated" if split == "test" else split
        atomic_write_json(out / "annotations" / filename,
                          _annotation_file(entries, f"NLQ Annotations ({name}), synthetic, seed {seed}"))
        summary[split] = {"clips": len(clips), "queries": sum(len(a["language_queries"])
                                                              for c in clips for a in c["annotations"])}
    moments = [{"video_uid": v.video_uid, "split": "train",
                "clips": [dict(c.header(), annotations=[]) for c in v.clips if c.split == MOMENTS]}
               for v in videos if any(c.split == MOMENTS for c in v.clips)]
    atomic_write_json(out / "annotations" / f"{MOMENTS}.json",
                      _annotation_file(moments, f"Moments Annotations (train), synthetic, seed {seed}"))
    summary[MOMENTS] = {"clips": sum(len(v["clips"]) for v in moments), "queries": 0}

    model = feature_model(seed, cfg)
    _write_features(out / "nlq_features", model, videos, seed)
    summary["narrations"] = sum(len(n) for _, _, n in narrations)
    summary["feature_sets"] = {v.name: v.dim for v in model.views}
    return summary


def _write_features(folder: Path, model: LatentFeatureModel, videos: list[_Video], seed: int) -> None:
    """``<folder>/<view>/<clip_uid>.pt`` ([T, D] float32, T = int(duration * 1.875)) for every
    clip, and ``feature_shapes.json`` ({clip_uid: T}) per view."""
    shapes: dict[str, int] = {}
    clips = [(v, c) for v in videos for c in v.clips]
    for k, (video, clip) in enumerate(tqdm(clips, desc="synthetic NLQ features", leave=False)):
        steps = int(clip.duration * FEATURE_RATE)
        feats = model.render(video.activities, clip.video_start_sec, steps, np.random.default_rng([seed, 4, k]))
        for name, feat in feats.items():
            atomic_torch_save(folder / name / f"{clip.clip_uid}.pt", torch.from_numpy(feat))
        shapes[clip.clip_uid] = steps
    for view in model.views:
        atomic_write_json(folder / view.name / "feature_shapes.json", shapes)
