"""Time NLQ training steps and inference on CPU for VSLNet, ReLER and SnAG (paper model sizes).

    python benchmarks/bench_nlq.py [--threads N] [--max-len 128] [--train-batch 32] [--eval-batch 64]
    python benchmarks/bench_nlq.py --minutes 8 30 [--train-batch 2] [--eval-batch 8]
    python benchmarks/bench_nlq.py --device cuda [--minutes 8 30]

Random inputs in the batch contract of nlq.models: ``--max-len`` video steps (features
already pooled), SlowFast-size features (2304; ReLER also a 768-d CLIP set), queries of
~8 words through the learned word + char-CNN encoder. A training step = forward, backward,
gradient clipping and an AdamW step; inference = tokenisation, forward and top-5 window
decoding, in fp32 and under bf16 autocast. ``--device cuda`` runs model and batch on the GPU
(timings synchronised; peak memory then is the GPU's peak allocation). The last line reads
``ratio=<faster VSLNet inference queries/s / 200>`` (target >= 1).

``--minutes``: clips of that many minutes of 1.875 Hz features (8 min: 900 steps, 30 min: 3375).
VSLNet and ReLER get their input as the data pipeline makes it, pooled to their ``max_len``
(128, 600); SnAG keeps the native length (its cap raised to the clip). Each (model, length,
phase) runs in a fresh process that also reports its peak memory: the rise of the peak RSS
during the phase, above the built model and batch. The last line reads
``ratio=<SnAG fp32 inference seconds per query at the longest / at the shortest clip> /
<their length ratio>`` (1: linear; target <= 1.3).
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nlq.engine.build import build_nlq_model
from nlq.engine.inference import autocast, move_to_device
from nlq.engine.optim import build_optimizer

TARGET_QUERIES_PER_S = 200.0
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "nlq"
FEATURE_DIMS = {"vslnet": [2304], "reler": [2304, 768], "snag": [2304]}  # SlowFast (+ CLIP for ReLER)
FEATURES_PER_SECOND = 1.875
NATIVE_LENGTH = ("snag",)  # models fed the clip at its length (the others: pooled to their max_len)
WORDS = ("where did i put the scissors knife cup bag phone after before table drawer pick what "
         "see wash open close door bowl plate in on take hold left right").split()


def random_queries(generator: torch.Generator, n: int) -> list[str]:
    picks = torch.randint(len(WORDS), (n, 8), generator=generator).tolist()
    return [" ".join(WORDS[i] for i in row) + "?" for row in picks]


def make_batch(model: torch.nn.Module, feature_dims: list[int], batch_size: int, max_len: int,
               generator: torch.Generator, labels: bool) -> tuple[dict, list[str]]:
    """Batch of the nlq.models contract (valid lengths 60-100% of max_len)."""
    lengths = torch.randint(int(0.6 * max_len), max_len + 1, (batch_size,), generator=generator)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    video = torch.randn(batch_size, max_len, sum(feature_dims), generator=generator) * mask[..., None]
    queries = random_queries(generator, batch_size)
    batch = {"video": video, "video_mask": mask, "feature_dims": feature_dims,
             "text": model.text_encoder.tokenize(queries), "duration": lengths.float() / 1.875}
    if labels:
        start = (torch.rand(batch_size, generator=generator) * lengths * 0.5).long()
        end = torch.minimum(start + 10, lengths - 1)
        steps = torch.arange(max_len)[None, :]
        batch.update(start_label=start, end_label=end,
                     highlight_label=((steps >= start[:, None]) & (steps <= end[:, None])).float(),
                     gt_window=torch.stack([start, end + 1], 1).float() / 1.875)
    return batch, queries


def build(name: str, max_len: int) -> torch.nn.Module:
    """The model at its paper size (configs/nlq/model), its cap raised to ``max_len`` when smaller."""
    model_cfg = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    model_cfg.max_len = max(int(model_cfg.max_len), max_len)
    generator = torch.Generator().manual_seed(0)
    return build_nlq_model(model_cfg, OmegaConf.load(CONFIGS / "text_encoder" / "learned.yaml"),
                           sum(FEATURE_DIMS[name]), train_texts=random_queries(generator, 500))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(model, name: str, max_len: int, batch_size: int, steps: int,
                  device: torch.device = torch.device("cpu")) -> float:
    """Training steps per second (after 2 warm-up steps)."""
    generator = torch.Generator().manual_seed(1)
    optimizer = build_optimizer(model, 1e-4, 0.01)
    batch, _ = make_batch(model, FEATURE_DIMS[name], batch_size, max_len, generator, labels=True)
    batch = move_to_device(batch, device)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    _sync(device)
    return steps / (time.perf_counter() - start)


def time_inference(model, name: str, max_len: int, batch_size: int, steps: int, amp,
                   device: torch.device = torch.device("cpu")) -> float:
    """Inference queries per second (tokenisation, forward, decoding; after 2 warm-up batches)."""
    generator = torch.Generator().manual_seed(2)
    batch, queries = make_batch(model, FEATURE_DIMS[name], batch_size, max_len, generator, labels=False)
    batch = move_to_device(batch, device)
    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        for i in range(steps + 2):
            if i == 2:
                _sync(device)
                start = time.perf_counter()
            batch["text"] = move_to_device({"text": model.text_encoder.tokenize(queries)}, device)["text"]
            results = model(batch)
        _sync(device)
    assert len(results) == batch_size and len(results[0]["windows"]) == 5
    return steps * batch_size / (time.perf_counter() - start)


def bench_model(name: str, max_len: int, train_batch: int, eval_batch: int, steps: int,
                device: torch.device = torch.device("cpu")) -> dict[str, float]:
    model = build(name, max_len).to(device)
    train_steps = time_training(model, name, max_len, train_batch, steps, device)
    speeds = {amp: time_inference(model, name, max_len, eval_batch, steps, amp, device) for amp in (False, "bf16")}
    return {"train_steps_per_s": train_steps, "train_queries_per_s": train_steps * train_batch,
            "inference_queries_per_s": speeds[False], "inference_queries_per_s_bf16": speeds["bf16"]}


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _phase(name: str, length: int, phase: str, batch_size: int, steps: int, threads: int | None,
           device_name: str = "cpu") -> dict:
    """One (model, input length, phase) in this process: speed and the rise of the peak memory."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    model = build(name, length).to(device)
    before = _peak_mib(device)
    if phase == "train":
        speed = time_training(model, name, length, batch_size, steps, device)
    else:
        speed = time_inference(model, name, length, batch_size, steps, False, device)
    return {"speed": speed, "peak_mib": _peak_mib(device) - before}


def bench_lengths(minutes: list[float], names: list[str], train_batch: int, eval_batch: int, steps: int,
                  threads: int | None, device: str = "cpu") -> dict:
    """{(name, minutes): {"steps", "input_steps", "train_steps_per_s", "inference_queries_per_s", "*_peak_mib"}}."""
    context = multiprocessing.get_context("spawn")
    out = {}
    for m in minutes:
        clip_steps = int(round(m * 60 * FEATURES_PER_SECOND))
        for name in names:
            cap = int(OmegaConf.load(CONFIGS / "model" / f"{name}.yaml").max_len)
            length = clip_steps if name in NATIVE_LENGTH else min(clip_steps, cap)
            row = {"steps": clip_steps, "input_steps": length}
            for phase, batch_size in (("train", train_batch), ("inference", eval_batch)):
                with context.Pool(1) as pool:
                    r = pool.apply(_phase, (name, length, phase, batch_size, steps, threads, device))
                key = "train_steps_per_s" if phase == "train" else "inference_queries_per_s"
                row[key], row[f"{phase}_peak_mib"] = r["speed"], r["peak_mib"]
            out[(name, m)] = row
            print(f"{name} {m:g} min ({clip_steps} steps, input {length}): train {row['train_steps_per_s']:.3f} "
                  f"steps/s (batch {train_batch}), peak +{row['train_peak_mib']:.0f} MiB; inference "
                  f"{row['inference_queries_per_s']:.2f} queries/s (batch {eval_batch}), "
                  f"peak +{row['inference_peak_mib']:.0f} MiB", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-len", type=int, default=128, help="video steps per query")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations (after 2 warm-up ones)")
    parser.add_argument("--models", nargs="+", default=["vslnet", "reler", "snag"], choices=sorted(FEATURE_DIMS))
    parser.add_argument("--minutes", nargs="+", type=float, default=None,
                        help="clip lengths in minutes (e.g. 8 30): speed and peak memory per length (module doc)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.minutes:
        print(f"{where}, {torch.get_num_threads()} threads, clips of {args.minutes} minutes, train batch "
              f"{args.train_batch}, eval batch {args.eval_batch}")
        rows = bench_lengths(sorted(args.minutes), args.models, args.train_batch, args.eval_batch, args.steps,
                             args.threads, args.device)
        if "snag" in args.models and len(args.minutes) > 1:
            short, long = rows[("snag", min(args.minutes))], rows[("snag", max(args.minutes))]
            growth = short["inference_queries_per_s"] / long["inference_queries_per_s"]
            print(f"snag inference time per query grows {growth:.2f}x for {long['steps'] / short['steps']:.2f}x "
                  "the steps")
            print(f"ratio={growth / (long['steps'] / short['steps']):.2f}")
        return
    print(f"{where}, {torch.get_num_threads()} threads, max_len {args.max_len}, train batch {args.train_batch}, "
          f"eval batch {args.eval_batch}")
    results = {}
    for name in args.models:
        results[name] = r = bench_model(name, args.max_len, args.train_batch, args.eval_batch, args.steps, device)
        print(f"{name}: train {r['train_steps_per_s']:.2f} steps/s ({r['train_queries_per_s']:.0f} queries/s), "
              f"inference {r['inference_queries_per_s']:.0f} queries/s fp32, "
              f"{r['inference_queries_per_s_bf16']:.0f} queries/s bf16 autocast")
    if "vslnet" in results:
        best = max(results["vslnet"]["inference_queries_per_s"], results["vslnet"]["inference_queries_per_s_bf16"])
        print(f"ratio={best / TARGET_QUERIES_PER_S:.2f}")  # the faster of fp32 / bf16 VSLNet inference


if __name__ == "__main__":
    main()
