"""Time NaQ creation (nlq.data.naq.make_naq) on an EgoClip-size input.

    python benchmarks/bench_naq.py [--rows 3850000] [--videos 10000] [--clips 30000] [--keep DIR]

Generates (numpy, seeded) an EgoClip TSV of ``--rows`` narrations over ``--videos``
videos and a clip pool of ``--clips`` train clips split over nlq_train.json, vq_train.json
and moments_train.json, then times make_naq (reading the TSV, matching, merging, writing
the JSON). The last line reads ``seconds=<wall> cpu_seconds=<cpu> ratio=<60 s target / wall>``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from episodic.io import atomic_write_json
from nlq.data.naq import EGOCLIP_COLUMNS, make_naq

TARGET_SECONDS = 60.0
CLIP_SECONDS = 480.0
ALPHA = 4.9  # dataset mean of the per-video narration gap beta (docs/data.md#narrations)
VERBS = ["picks", "puts", "holds", "opens", "closes", "cuts", "washes", "moves", "takes", "drops"]
OBJECTS = ["the bag", "a cup", "the knife", "the door", "a bottle", "the phone", "a book", "the lid",
           "the scissors", "a towel", "the bowl", "a spoon", "the box", "the paint brush", "a plate"]


def _uids(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)])


def write_egoclip(path: Path, rng: np.random.Generator, video_uids: np.ndarray, durations: np.ndarray,
                  rows: int) -> None:
    """EgoClip-like TSV: narration times uniform in each video, window t +- beta / (2 * alpha)."""
    video = np.sort(rng.integers(0, len(video_uids), rows))
    count = np.bincount(video, minlength=len(video_uids))
    beta = durations / np.maximum(count, 1)  # mean gap between narrations of each video
    t = rng.uniform(0, durations[video])
    half = beta[video] / (2 * ALPHA)
    texts = np.array([f"#C C {v} {o}" for v in VERBS for o in OBJECTS])
    frame = pd.DataFrame({
        "clip_idx": np.arange(rows), "video_uid": video_uids[video], "video_dur": durations[video].round(3),
        "narration_source": "narration_pass_1", "narration_ind": np.arange(rows),
        "narration_time": t.round(3), "clip_start": np.maximum(t - half, 0).round(3),
        "clip_end": (t + half).round(3), "clip_text": texts[rng.integers(0, len(texts), rows)],
        "tag_verb": "[0]", "tag_noun": "[1, 2]"}, columns=EGOCLIP_COLUMNS)
    frame.to_csv(path, sep="\t", index=False)


def write_pool(folder: Path, rng: np.random.Generator, video_uids: np.ndarray, durations: np.ndarray,
               clips: int) -> None:
    """nlq_train (10% of the clips, 5 queries each), vq_train (40%), moments_train (50%)."""
    video = rng.integers(0, len(video_uids), clips)
    start = rng.uniform(0, np.maximum(durations[video] - CLIP_SECONDS, 0))
    end = np.minimum(start + CLIP_SECONDS, durations[video])
    clip_uids = _uids(rng, clips)
    parts = {"nlq_train.json": slice(0, clips // 10), "vq_train.json": slice(clips // 10, clips // 2),
             "moments_train.json": slice(clips // 2, clips)}
    for name, part in parts.items():
        videos: dict[str, list] = {}
        for v, s, e, c in zip(video[part], start[part], end[part], clip_uids[part]):
            clip = {"clip_uid": c, "video_start_sec": float(s), "video_end_sec": float(e),
                    "clip_start_sec": 0.0, "clip_end_sec": float(e - s), "annotations": []}
            if name == "nlq_train.json":
                clip["annotations"] = [{"annotation_uid": f"ann-{c}", "language_queries": [
                    {"clip_start_sec": 10.0 * k, "clip_end_sec": 10.0 * k + 5.0, "query": f"where is x{k}?",
                     "template": "Objects: Where is object X?"} for k in range(5)]}]
            videos.setdefault(video_uids[v], []).append(clip)
        atomic_write_json(folder / name, {"version": "2.0", "videos": [
            {"video_uid": v, "split": "train", "clips": cs} for v, cs in videos.items()]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3_850_000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--clips", type=int, default=30_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the inputs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        video_uids = _uids(rng, args.videos)
        durations = rng.uniform(1800.0, 10800.0, args.videos)  # pool clips cover ~23% (real NaQ: 850k of 3.85M)
        t0 = time.perf_counter()
        write_egoclip(folder / "egoclip.tsv", rng, video_uids, durations, args.rows)
        write_pool(folder, rng, video_uids, durations, args.clips)
        print(f"generated {args.rows} narrations, {args.clips} clips in {time.perf_counter() - t0:.1f} s")
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats = make_naq(folder / "egoclip.tsv", folder, folder / "nlq_naq_train.json")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print("\n".join(stats.lines()))
        print(f"seconds={seconds:.2f} cpu_seconds={cpu:.2f} ratio={TARGET_SECONDS / seconds:.2f}")


if __name__ == "__main__":
    main()
