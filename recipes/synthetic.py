"""The synthetic mini-Ego4D: one call writes the VQ2D and NLQ parts and summarises them.

The generators live with their task (``vq2d.data.synthetic``, ``nlq.data.synthetic``);
this module runs both into one Ego4D-style tree and reads the result back through the
same validating loaders the tools use.
"""
from __future__ import annotations

import time
from pathlib import Path

from episodic.io import atomic_write_json

SPLITS = ("train", "val", "test_unannotated")


def make_synthetic(out: str | Path, seed: int = 0, preset: str = "small",
                   vq2d: dict | None = None, nlq: dict | None = None) -> dict:
    """Write ``out/v2/...`` (docs/data.md#synthetic) and return the summary of what was written.

    Args:
        out: root folder of the data set (the ``data.root`` of every tool).
        seed: everything is a deterministic function of it.
        preset: "small" (CPU demo) or "large" (GPU runs), applied to both tasks.
        vq2d, nlq: keyword overrides of each generator's size knobs.
    """
    from nlq.data.synthetic import generate_nlq
    from vq2d.data.synthetic import generate_vq2d

    out = Path(out)
    t0 = time.perf_counter()
    generate_vq2d(out, seed=seed, preset=preset, **(vq2d or {}))
    t1 = time.perf_counter()
    generate_nlq(out, seed=seed, preset=preset, **(nlq or {}))
    t2 = time.perf_counter()
    summary = summarize(out)
    summary["generation_seconds"] = {"vq2d": round(t1 - t0, 2), "nlq": round(t2 - t1, 2)}
    summary["seed"], summary["preset"] = seed, preset
    atomic_write_json(out / "v2" / "synthetic_summary.json", summary, indent=2)
    return summary


def summarize(root: str | Path) -> dict:
    """Counts of an Ego4D-style tree, read through the validating loaders."""
    from nlq.data.annotations import load_nlq_annotations
    from vq2d.data.annotations import load_vq_annotations

    ann_dir = Path(root) / "v2" / "annotations"
    summary: dict = {"vq2d": {}, "nlq": {}}
    for split in SPLITS:
        path = ann_dir / f"vq_{split}.json"
        if path.exists():
            ann = load_vq_annotations(path)
            queries = ann.queries()
            summary["vq2d"][split] = {
                "clips": sum(1 for _ in ann.clips()),
                "queries": len(queries),
                "response_frames": sum(len(q.response_track or ()) for q in queries),
                "search_frames": sum(q.query_frame for q in queries),
            }
        path = ann_dir / f"nlq_{split}.json"
        if path.exists():
            ann = load_nlq_annotations(path)
            summary["nlq"][split] = {"clips": sum(1 for _ in ann.clips()), "queries": len(ann.queries())}
    narrations = Path(root) / "v2" / "narrations" / "egoclip.tsv"
    if narrations.exists():
        with open(narrations, encoding="utf-8") as f:
            summary["nlq"]["narrations"] = max(sum(1 for _ in f) - 1, 0)
    return summary


def format_summary(summary: dict) -> str:
    """A small text table of :func:`summarize`'s counts."""
    lines = [f"{'task':6} {'split':18} {'clips':>6} {'queries':>8} {'frames':>8}"]
    for split, s in summary.get("vq2d", {}).items():
        lines.append(f"{'vq2d':6} {split:18} {s['clips']:6d} {s['queries']:8d} {s['response_frames']:8d}")
    for split, s in summary.get("nlq", {}).items():
        if isinstance(s, dict):
            lines.append(f"{'nlq':6} {split:18} {s['clips']:6d} {s['queries']:8d} {'-':>8}")
    if "narrations" in summary.get("nlq", {}):
        lines.append(f"narrations (NaQ source): {summary['nlq']['narrations']}")
    return "\n".join(lines)
