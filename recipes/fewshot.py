"""Few-shot NLQ training data as NaQ runs it: the NLQ train queries of a random fraction of
the NLQ train CLIPS (NaQ's ``--zeroshot_subsample_clips`` clip list), everything else kept;
``unit="query"`` draws queries instead (this toolkit's earlier split).

Every video, clip and annotation of the NLQ train file stays (so the NaQ clip pool, which
includes the NLQ train clips, is the same as with the full file); only language queries are
dropped. The kept clips are also written as a JSON list (``fewshot_clips.json``), the same
subset for every arm (``data.nlq_clips`` of tools/train_nlq.py reads such a list). The few-shot annotation folder holds that file as ``nlq_train.json`` beside links to
the other train files of the clip pool, so ``tools/make_naq.py annotations_dir=<it>`` builds
the few-shot NLQ + NaQ file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from episodic.io import atomic_write_json, read_json

NLQ_TRAIN = "nlq_train.json"
FEWSHOT_CLIPS = "fewshot_clips.json"  # the kept NLQ train clips, a JSON list (NaQ's clip-list format)
POOL_COMPANIONS = ("vq_train.json", "moments_train.json")  # the other files of the NaQ clip pool


UNITS = ("clip", "query")


def subsample_nlq_train(src: dict, fraction: float, seed: int, unit: str = "clip") -> tuple[dict, dict]:
    """A copy of the NLQ annotation dict ``src`` keeping the language queries with text of
    ``round(fraction * n)`` (at least 1) of its n clips with such queries (``unit="clip"``, as
    NaQ) or of its n queries (``unit="query"``), drawn at random with ``seed``; queries without
    text are dropped. Returns (new dict, {"unit", "clips", "queries", "kept", "kept_queries",
    "kept_clips": [clip_uid, ...], "fraction", "seed"})."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"few-shot fraction must be in (0, 1] (got {fraction})")
    if unit not in UNITS:
        raise ValueError(f"few-shot unit must be one of {UNITS} (got {unit!r})")
    slots = [(v, c, a, q) for v, video in enumerate(src["videos"]) for c, clip in enumerate(video.get("clips", []))
             for a, ann in enumerate(clip.get("annotations") or [])
             for q, lq in enumerate(ann.get("language_queries") or []) if str(lq.get("query") or "").strip()]
    queried_clips = list(dict.fromkeys((v, c) for v, c, _, _ in slots))
    units = queried_clips if unit == "clip" else slots
    num_kept = min(len(units), max(1, int(round(fraction * len(units)))))
    drawn = {units[i] for i in np.random.default_rng(seed).choice(len(units), size=num_kept, replace=False)}
    chosen = {s for s in slots if (s[:2] if unit == "clip" else s) in drawn}
    out = dict(src, videos=[])
    for v, video in enumerate(src["videos"]):
        clips = []
        for c, clip in enumerate(video.get("clips", [])):
            anns = [dict(ann, language_queries=[lq for q, lq in enumerate(ann.get("language_queries") or [])
                                                if (v, c, a, q) in chosen])
                    for a, ann in enumerate(clip.get("annotations") or [])]
            clips.append(dict(clip, annotations=anns))
        out["videos"].append(dict(video, clips=clips))
    kept_clips = sorted({src["videos"][v]["clips"][c]["clip_uid"] for v, c, _, _ in chosen})
    out["description"] = (f"{src.get('description', 'NLQ train')} (few-shot: {len(chosen)} of {len(slots)} queries, "
                          f"{len(kept_clips)} of {len(queried_clips)} clips)")
    return out, {"unit": unit, "clips": len(queried_clips), "queries": len(slots), "kept": num_kept,
                 "kept_queries": len(chosen), "kept_clips": kept_clips, "fraction": fraction, "seed": seed}


def write_fewshot_annotations(annotations_dir: str | os.PathLike, out_dir: str | os.PathLike,
                              fraction: float, seed: int, unit: str = "clip") -> dict:
    """Write ``out_dir/nlq_train.json`` (the few-shot subset of ``annotations_dir``'s), the kept
    clips as ``out_dir/fewshot_clips.json`` and link the other clip-pool files into ``out_dir``.
    Returns the counts of :func:`subsample_nlq_train`."""
    annotations_dir, out_dir = Path(annotations_dir).resolve(), Path(out_dir)
    reduced, counts = subsample_nlq_train(read_json(annotations_dir / NLQ_TRAIN), fraction, seed, unit)
    atomic_write_json(out_dir / NLQ_TRAIN, reduced)
    atomic_write_json(out_dir / FEWSHOT_CLIPS, counts["kept_clips"])
    for name in POOL_COMPANIONS:
        link = out_dir / name
        if link.is_symlink():  # made by an earlier run, maybe for another data root
            link.unlink()
        if (annotations_dir / name).is_file() and not link.exists():
            link.symlink_to(annotations_dir / name)
    atomic_write_json(out_dir / "fewshot.json", {k: v for k, v in counts.items() if k != "kept_clips"}, indent=1)
    return counts
