"""Time the VQ2D detection pass: batched (per clip: frames decoded once, backbone + RPN once
per frame, all queries scored together) vs per-query (the reference: the full detector on
every frame for every query), on the same clips with the same model.

    python benchmarks/bench_vq2d_eval.py [--model r18_fpn] [--checkpoint C] [--data-root DIR]
        [--split val] [--clips 3] [--device cpu] [--frame-height 0] [--frames-per-batch 8]

Without ``--data-root`` a small synthetic split is generated in a temporary folder. The
model is random-init from the ``--model`` config (configs/vq2d/model) unless
``--checkpoint`` is given. Both passes must agree (max score difference printed). The
last line reads ``batched_s=<s> per_query_s=<s> ratio=<per_query_s / batched_s>``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vq2d.data.annotations import load_vq_annotations
from vq2d.inference.checkpoint_io import load_detector
from vq2d.inference.detection_pass import DetectionPass
from vq2d.inference.frame_source import ClipFrames, original_size_of
from vq2d.inference.pool import queries_by_clip
from vq2d.modeling.build import build_model

REPO = Path(__file__).resolve().parents[1]


def model_config(name: str) -> dict:
    """The ``model`` config group ``name`` (configs/vq2d/model/<name>.yaml), defaults applied."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs" / "vq2d"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"+model={name}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def time_pass(detector: DetectionPass, clips: dict, clips_dir: Path) -> tuple[float, dict]:
    """Seconds to run ``detector`` over ``clips`` ({clip_uid: queries}) and the detections."""
    results = {}
    start = time.perf_counter()
    for clip_uid, queries in clips.items():
        with ClipFrames(clip_uid, clips_dir / f"{clip_uid}.mp4", original_size=original_size_of(queries)) as frames:
            dets, errors = detector.run(frames, queries)
        if errors:
            raise RuntimeError(f"clip {clip_uid}: {errors}")
        results.update(dets)
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="r18_fpn", help="model config group (ignored with --checkpoint)")
    parser.add_argument("--checkpoint", default=None, help="model_final.pth to load instead of random init")
    parser.add_argument("--data-root", default=None, help="Ego4D-layout root; default: a generated synthetic split")
    parser.add_argument("--split", default="val")
    parser.add_argument("--clips", type=int, default=3, help="clips timed (those with the most queries)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frame-height", type=int, default=0, help="resize frames to this height first (0: no)")
    parser.add_argument("--frames-per-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_root) if args.data_root else Path(tmp)
        if args.data_root is None:
            from vq2d.data.synthetic import generate_vq2d

            generate_vq2d(root, seed=0, preset="small", num_train_clips=1, num_val_clips=args.clips, num_test_clips=1)
        annotations = load_vq_annotations(root / "v2" / "annotations" / f"vq_{args.split}.json")
        by_clip = queries_by_clip(annotations.queries())
        chosen = sorted(by_clip, key=lambda c: -len(by_clip[c]))[: args.clips]
        clips = {c: by_clip[c] for c in chosen}
        if args.checkpoint:
            model = load_detector(args.checkpoint, args.device)
        else:
            torch.manual_seed(0)
            model = build_model(model_config(args.model))
        common = dict(model=model, device=args.device, frames_per_batch=args.frames_per_batch,
                      frame_height=args.frame_height or None)
        batched = DetectionPass(mode="batched", **common)
        per_query = DetectionPass(mode="per_query", **common)
        warm = dict(list(clips.items())[:1])
        time_pass(batched, warm, root / "v2" / "clips")  # warm-up (allocations, cudnn autotune)
        time_pass(per_query, warm, root / "v2" / "clips")
        batched_s, a = time_pass(batched, clips, root / "v2" / "clips")
        per_query_s, b = time_pass(per_query, clips, root / "v2" / "clips")
    num_queries = sum(len(q) for q in clips.values())
    frames = sum(max(q.query_frame for q in qs) for qs in clips.values())
    diff = max(float(np.abs(a[k].scores - b[k].scores).max()) for k in a)
    print(f"{len(clips)} clips, {num_queries} queries, {frames} clip frames searched, device {args.device}")
    print(f"batched   {batched_s:8.2f} s")
    print(f"per_query {per_query_s:8.2f} s")
    print(f"max score difference between the passes: {diff:.2e}")
    print(f"batched_s={batched_s:.3f} per_query_s={per_query_s:.3f} ratio={per_query_s / batched_s:.3f}")


if __name__ == "__main__":
    main()
