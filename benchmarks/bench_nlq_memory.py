"""Peak memory of the NLQ training data pipeline at N and 4N clips.

    python benchmarks/bench_nlq_memory.py [--clips N] [--queries-per-clip Q] [--workers 4]
                                          [--full-clips 6000] [--full-queries 1000000]

Generates per-clip SlowFast-size feature files (480 s clips: 900 steps x 2304, float32,
~8.3 MB each) for 4N clips, then, in a fresh process per size, runs what training runs:
NLQ queries (Q per clip, a quarter of them narrations) -> NLQDataset (file shape checks) ->
pooled feature store built on disk (max_len 128) -> one epoch of a shuffled DataLoader with
``--workers`` persistent workers and batch 32. A sampler thread reads the proportional set
size (PSS: shared pages split between the processes sharing them) of the process and its
workers from /proc every 20 ms; the peak of their sum is the figure.

The projection to full v2 NLQ + NaQ scale fits ``peak = a + b * clips`` through the two
points, and adds the query records (measured bytes per query, counted once per process,
as if copy-on-write sharing were lost entirely). Last line: ``ratio=<peak at 4N / peak at N>``
(target <= 1.3; projected peak target < 16 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS, DIM, MAX_LEN, BATCH = 900, 2304, 128, 32  # 480 s at 1.875 features/s, SlowFast width


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class PeakSampler(threading.Thread):
    """Peak of the summed PSS of this process and its descendants."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop_flag = interval, 0, False

    def run(self) -> None:
        root = os.getpid()
        while not self.stop_flag:
            pids, todo = [], [root]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo += children(pid)
            self.peak = max(self.peak, sum(pss_bytes(p) for p in pids))
            time.sleep(self.interval)


def make_features(folder: Path, clips: int) -> None:
    import torch

    (folder / "slowfast").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(STEPS, DIM, generator=gen)
    shapes = {}
    for i in range(clips):
        path = folder / "slowfast" / f"clip{i:05d}.pt"
        if not path.is_file():
            torch.save(base.roll(i, dims=0), path)
        shapes[f"clip{i:05d}"] = STEPS
    (folder / "slowfast" / "feature_shapes.json").write_text(json.dumps(shapes))


def run_once(features_root: Path, clips: int, queries_per_clip: int, workers: int, store_dir: Path,
             use_store: bool = True) -> dict:
    """One size, in this (fresh) process: peak PSS and bytes per query record. Without
    ``use_store``: the pipeline before the store (every worker loads files and keeps them all)."""
    import torch
    from torch.utils.data import DataLoader

    from nlq.data.annotations import NLQQuery
    from nlq.data.dataset import EpochSampler, NLQCollator, NLQDataset
    from nlq.data.features import FeatureStore
    from nlq.data.pooled_store import open_or_build_store

    torch.set_num_threads(1)
    sampler_thread = PeakSampler()
    sampler_thread.start()
    tracemalloc.start()
    queries = []
    for c in range(clips):
        for q in range(queries_per_clip):
            start = (q * 7.3) % 460.0
            text = f"#C C picks object {q} from the table" if q % 4 == 0 else f"where did i put the thing {q}?"
            queries.append(NLQQuery(f"video{c // 4:05d}", f"clip{c:05d}", f"ann{c}", q, text,
                                    (start, start + 5.0 + q % 11), 480.0, 0.0, None, 480.0))
    per_query = tracemalloc.get_traced_memory()[0] / len(queries)
    tracemalloc.stop()
    features = FeatureStore(features_root, ["slowfast"], cache_size=None if not use_store else 4)
    dataset = NLQDataset(queries, features, max_len=MAX_LEN, train=True, seed=0)
    began = time.time()
    if use_store:
        dataset.attach_store(open_or_build_store(features, dataset.clip_list(), dataset.store_pool_len(), store_dir))
    built = time.time() - began
    build_peak, sampler_thread.peak = sampler_thread.peak, 0
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers,
                        collate_fn=NLQCollator(lambda texts: {"n": len(texts)}), persistent_workers=workers > 0)
    began = time.time()
    batches = sum(1 for _ in loader)
    epoch = time.time() - began
    time.sleep(0.1)
    sampler_thread.stop_flag = True
    sampler_thread.join()
    return {"clips": clips, "queries": len(queries), "peak_bytes": max(build_peak, sampler_thread.peak),
            "build_peak_bytes": build_peak, "epoch_peak_bytes": sampler_thread.peak, "bytes_per_query": per_query,
            "store_build_s": built, "epoch_s": epoch, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16, help="N (4N is measured too)")
    parser.add_argument("--queries-per-clip", type=int, default=40)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--full-clips", type=int, default=6000, help="clips of v2 NLQ train + the NaQ clip pool")
    parser.add_argument("--full-queries", type=int, default=1_000_000, help="queries of v2 NLQ train + NaQ")
    parser.add_argument("--no-store", action="store_true",
                        help="measure the pipeline without the store (per-worker file caches, unlimited)")
    parser.add_argument("--work-dir", default=None, help="folder for the generated files (default: a temporary one)")
    parser.add_argument("--_run", nargs=3, help=argparse.SUPPRESS)  # features_root clips store_dir (child)
    args = parser.parse_args()
    if args._run:
        root, clips, store = args._run
        print(json.dumps(run_once(Path(root), int(clips), args.queries_per_clip, args.workers, Path(store),
                                  use_store=not args.no_store)))
        return
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        began = time.time()
        make_features(tmp / "features", 4 * args.clips)
        print(f"generated {4 * args.clips} feature files ({STEPS} x {DIM}) in {time.time() - began:.1f} s", flush=True)
        results = []
        for clips in (args.clips, 4 * args.clips):
            cmd = [sys.executable, __file__, "--queries-per-clip", str(args.queries_per_clip),
                   "--workers", str(args.workers), *(["--no-store"] if args.no_store else []), "--_run", str(tmp / "features"), str(clips), str(tmp / "store")]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"N={clips:5d} clips, {result['queries']:7d} queries, {args.workers} workers: peak PSS "
                  f"{result['peak_bytes'] / 2**20:8.1f} MiB (building the store {result['build_peak_bytes'] / 2**20:.1f}, "
                  f"epoch {result['epoch_peak_bytes'] / 2**20:.1f}; store built in {result['store_build_s']:.1f} s, "
                  f"epoch of {result['batches']} batches in {result['epoch_s']:.1f} s)", flush=True)
    small, large = results
    slope = (large["peak_bytes"] - small["peak_bytes"]) / (large["clips"] - small["clips"])  # bytes per clip
    base = small["peak_bytes"] - slope * small["clips"]
    query_bytes = max(small["bytes_per_query"], large["bytes_per_query"])
    projected = base + slope * args.full_clips + query_bytes * args.full_queries * (1 + args.workers)
    print(f"per clip {slope / 2**20:.3f} MiB, per query record {query_bytes:.0f} B; projected peak at "
          f"{args.full_clips} clips / {args.full_queries} queries, {args.workers} workers: "
          f"{projected / 2**30:.2f} GiB (target < 16 GB)")
    print(f"ratio={large['peak_bytes'] / small['peak_bytes']:.3f}")


if __name__ == "__main__":
    main()
