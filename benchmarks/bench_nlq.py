"""Time NLQ training steps and inference on CPU for VSLNet and ReLER (paper model sizes).

    python benchmarks/bench_nlq.py [--threads N] [--max-len 128] [--train-batch 32] [--eval-batch 64]

Random inputs in the batch contract of nlq.models: ``--max-len`` video steps (features
already pooled), SlowFast-size features (2304; ReLER also a 768-d CLIP set), queries of
~8 words through the learned word + char-CNN encoder. A training step = forward, backward,
gradient clipping and an AdamW step; inference = tokenisation, forward and top-5 window
decoding, in fp32 and under bf16 autocast. The last line reads
``ratio=<faster VSLNet inference queries/s / 200>`` (target >= 1).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nlq.engine.build import build_nlq_model
from nlq.engine.inference import autocast
from nlq.engine.optim import build_optimizer

TARGET_QUERIES_PER_S = 200.0
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "nlq"
FEATURE_DIMS = {"vslnet": [2304], "reler": [2304, 768]}  # SlowFast (+ CLIP for ReLER)
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


def bench_model(name: str, max_len: int, train_batch: int, eval_batch: int, steps: int) -> dict[str, float]:
    model_cfg = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    model_cfg.max_len = max(int(model_cfg.max_len), max_len)
    generator = torch.Generator().manual_seed(0)
    model = build_nlq_model(model_cfg, OmegaConf.load(CONFIGS / "text_encoder" / "learned.yaml"),
                            sum(FEATURE_DIMS[name]), train_texts=random_queries(generator, 500))
    optimizer = build_optimizer(model, 1e-4, 0.01)
    batch, _ = make_batch(model, FEATURE_DIMS[name], train_batch, max_len, generator, labels=True)
    model.train()
    for i in range(steps + 2):  # 2 warm-up steps
        if i == 2:
            start = time.perf_counter()
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    train_steps = steps / (time.perf_counter() - start)

    batch, queries = make_batch(model, FEATURE_DIMS[name], eval_batch, max_len, generator, labels=False)
    model.eval()
    speeds = {}
    for amp in (False, "bf16"):  # fp32, then bf16 autocast (eval_nlq.py amp=bf16)
        with torch.inference_mode(), autocast(torch.device("cpu"), amp):
            for i in range(steps + 2):
                if i == 2:
                    start = time.perf_counter()
                batch["text"] = model.text_encoder.tokenize(queries)
                results = model(batch)
        assert len(results) == eval_batch and len(results[0]["windows"]) == 5
        speeds["bf16" if amp else "fp32"] = steps * eval_batch / (time.perf_counter() - start)
    return {"train_steps_per_s": train_steps, "train_queries_per_s": train_steps * train_batch,
            "inference_queries_per_s": speeds["fp32"], "inference_queries_per_s_bf16": speeds["bf16"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-len", type=int, default=128, help="video steps per query")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations (after 2 warm-up ones)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU, {torch.get_num_threads()} threads, max_len {args.max_len}, train batch {args.train_batch}, "
          f"eval batch {args.eval_batch}")
    results = {}
    for name in ("vslnet", "reler"):
        results[name] = r = bench_model(name, args.max_len, args.train_batch, args.eval_batch, args.steps)
        print(f"{name}: train {r['train_steps_per_s']:.2f} steps/s ({r['train_queries_per_s']:.0f} queries/s), "
              f"inference {r['inference_queries_per_s']:.0f} queries/s fp32, "
              f"{r['inference_queries_per_s_bf16']:.0f} queries/s bf16 autocast")
    best = max(results["vslnet"]["inference_queries_per_s"], results["vslnet"]["inference_queries_per_s_bf16"])
    print(f"ratio={best / TARGET_QUERIES_PER_S:.2f}")  # the faster of fp32 / bf16 VSLNet inference


if __name__ == "__main__":
    main()
