"""Few-shot NLQ training data: a random fraction of the NLQ train queries, everything else kept.

Every video, clip and annotation of the NLQ train file stays (so the NaQ clip pool, which
includes the NLQ train clips, is the same as with the full file); only language queries are
dropped. The few-shot annotation folder holds that file as ``nlq_train.json`` beside links to
the other train files of the clip pool, so ``tools/make_naq.py annotations_dir=<it>`` builds
the few-shot NLQ + NaQ file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from episodic.io import atomic_write_json, read_json

NLQ_TRAIN = "nlq_train.json"
POOL_COMPANIONS = ("vq_train.json", "moments_train.json")  # the other files of the NaQ clip pool


def subsample_nlq_train(src: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """A copy of the NLQ annotation dict ``src`` keeping ``round(fraction * n)`` (at least 1)
    of its n language queries with text, drawn at random with ``seed``; queries without
    text are dropped. Returns (new dict, {"queries": n, "kept": k, "fraction", "seed"})."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"few-shot fraction must be in (0, 1] (got {fraction})")
    slots = [(v, c, a, q) for v, video in enumerate(src["videos"]) for c, clip in enumerate(video.get("clips", []))
             for a, ann in enumerate(clip.get("annotations") or [])
             for q, lq in enumerate(ann.get("language_queries") or []) if str(lq.get("query") or "").strip()]
    num_kept = min(len(slots), max(1, int(round(fraction * len(slots)))))
    chosen = {slots[i] for i in np.random.default_rng(seed).choice(len(slots), size=num_kept, replace=False)}
    out = dict(src, videos=[])
    for v, video in enumerate(src["videos"]):
        clips = []
        for c, clip in enumerate(video.get("clips", [])):
            anns = [dict(ann, language_queries=[lq for q, lq in enumerate(ann.get("language_queries") or [])
                                                if (v, c, a, q) in chosen])
                    for a, ann in enumerate(clip.get("annotations") or [])]
            clips.append(dict(clip, annotations=anns))
        out["videos"].append(dict(video, clips=clips))
    out["description"] = f"{src.get('description', 'NLQ train')} (few-shot: {num_kept} of {len(slots)} queries)"
    return out, {"queries": len(slots), "kept": num_kept, "fraction": fraction, "seed": seed}


def write_fewshot_annotations(annotations_dir: str | os.PathLike, out_dir: str | os.PathLike,
                              fraction: float, seed: int) -> dict:
    """Write ``out_dir/nlq_train.json`` (the few-shot subset of ``annotations_dir``'s) and link
    the other clip-pool files into ``out_dir``. Returns the counts of :func:`subsample_nlq_train`."""
    annotations_dir, out_dir = Path(annotations_dir).resolve(), Path(out_dir)
    reduced, counts = subsample_nlq_train(read_json(annotations_dir / NLQ_TRAIN), fraction, seed)
    atomic_write_json(out_dir / NLQ_TRAIN, reduced)
    for name in POOL_COMPANIONS:
        link = out_dir / name
        if link.is_symlink():  # made by an earlier run, maybe for another data root
            link.unlink()
        if (annotations_dir / name).is_file() and not link.exists():
            link.symlink_to(annotations_dir / name)
    atomic_write_json(out_dir / "fewshot.json", counts, indent=1)
    return counts
