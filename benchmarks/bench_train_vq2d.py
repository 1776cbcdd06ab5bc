"""Training throughput (images/s) of the VQ2D detector on this machine: the tiny preset and the
ResNet-50 + FPN model of the improved preset, through the real data pipeline (frame cache,
DataLoader workers, augmentation) and ``train_one_iteration``.

    python benchmarks/bench_train_vq2d.py [--data-root DIR] [--configs tiny,r50] [--iters 20] [--device cpu]

On a CPU it also measures ``tiny_before``, the tiny preset as it was before 2026-11-29
(ResNet-18 at width 64 with BatchNorm, frames at 128-160 px, crops with 16 px of context,
the bilinear head without pixel channels, no box head, one crop per frame, contiguous NCHW
parameters),
in the same run, and prints the speed-up of the preset over it (docs/vq2d.md#tiny-preset);
``--configs tiny,tiny_nchw`` measures the preset with and without ``channels_last``.

Without ``--data-root`` a small synthetic set is generated in a temporary folder first. The
R50 model starts from random weights (speed does not depend on them). The last line reads
``ratio=<measured / target>`` for the main configuration: r50 on a GPU, tiny on a CPU.
Targets are our expectations, not measurements of another code base: tiny 8 images/s on
2 CPU cores; r50 (800-pixel frames, bf16) 40 images/s on one recent data-centre GPU.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from episodic.distributed import init_distributed
from vq2d.data.synthetic import generate_vq2d
from vq2d.engine import build
from vq2d.engine.trainer import train_one_iteration

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "vq2d"
TARGETS = {("tiny", "cpu"): 8.0, ("r50", "cuda"): 40.0, ("tiny", "cuda"): 200.0, ("r50", "cpu"): 0.5,
           ("tiny_before", "cpu"): 1.0, ("tiny_before", "cuda"): 1.0,  # tiny_before: a reference, no target
           ("tiny_nchw", "cpu"): 1.0, ("tiny_nchw", "cuda"): 1.0}  # tiny_nchw: a reference, no target
TINY_BEFORE = ["model.width=64", "model.fpn_channels=64", "model.group_norm=0", "model.min_size=[128,144,160]",
               "model.max_size=256", "model.crop_context=16", "model.head.similarity=bilinear",
               "model.head.pixels=false", "model.box_head.enabled=false", "samples.crops_per_pair=1",
               "channels_last=false"]
OVERRIDES = {
    "tiny": ["preset=tiny"],
    "tiny_before": ["preset=tiny", *TINY_BEFORE],
    "tiny_nchw": ["preset=tiny", "channels_last=false"],  # the preset with contiguous NCHW parameters
    "r50": ["preset=improved", "model.weights.format=none"],
}


def measure(name: str, data_root: Path, device: str, iters: int, warmup: int, batch_size: int | None,
            workers: int) -> float:
    """Images/s of ``iters`` training iterations after ``warmup`` ones."""
    overrides = [*OVERRIDES[name], f"data.root={data_root}", f"device={device}", f"data.num_workers={workers}",
                 "solver.warmup_iters=0"]
    if batch_size:
        overrides.append(f"batch_size={batch_size}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    build.set_threads(cfg.threads)
    info = init_distributed(device=device)
    samples, paths = build.build_samples(cfg, train=True)
    loader = iter(build.build_train_loader(cfg, samples, paths.cache_root, info, start=0))
    model = build.build_training_model(cfg).to(info.device)
    optimizer = build.build_optimizer(cfg, model)
    amp = build.amp_dtype(str(cfg.solver.amp), info.device)
    images = 0
    for i in range(warmup + iters):
        if i == warmup:
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            start, images = time.perf_counter(), 0
        batch = next(loader)
        train_one_iteration(model, batch, optimizer, device=info.device, amp_dtype=amp)
        images += len(batch["images"])
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    rate = images / (time.perf_counter() - start)
    print(f"{name} on {device}: batch {int(cfg.batch_size)}, {rate:.2f} images/s "
          f"(target {TARGETS[(name, device)]})", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=None, help="synthetic or Ego4D data root")
    parser.add_argument("--configs", default=None, help="comma-separated: tiny, r50 (default: tiny,r50 on a GPU, "
                        "tiny on a CPU, where r50 runs at well under 1 image/s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 GPU / 5 CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    args = parser.parse_args()
    device = build.resolve_device(args.device)
    iters = args.iters or (20 if device == "cuda" else 5)
    names = [n for n in (args.configs or ("tiny,r50" if device == "cuda" else "tiny,tiny_before")).split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or Path(tmp)
        if args.data_root is None:
            generate_vq2d(root, seed=0, preset="small")
        rates = {}
        for name in names:
            batch = None if name.startswith("tiny") else (8 if device == "cuda" else 2)  # r50: 8 per GPU (64 / 8 GPUs)
            rates[name] = measure(name, root, device, iters, args.warmup, batch, args.workers)
    main_name = "r50" if device == "cuda" and "r50" in rates else names[0]
    if "tiny" in rates and "tiny_nchw" in rates:
        print(f"channels_last: {rates['tiny']:.2f} images/s, NCHW: {rates['tiny_nchw']:.2f} images/s, "
              f"speed-up {rates['tiny'] / rates['tiny_nchw']:.2f}x", flush=True)
    if "tiny" in rates and "tiny_before" in rates:
        print(f"tiny preset: {rates['tiny']:.2f} images/s, before: {rates['tiny_before']:.2f} images/s, "
              f"speed-up {rates['tiny'] / rates['tiny_before']:.2f}x", flush=True)
    print(f"main={main_name} device={device} images_per_s={rates[main_name]:.2f} "
          f"ratio={rates[main_name] / TARGETS[(main_name, device)]:.3f}")


if __name__ == "__main__":
    main()
