"""Training loop of the VQ2D siamese detector (SiamRCNN), in small functions.

* :func:`train_one_iteration`: forward, loss check, backward, clip, step on one batch.
* :func:`evaluate_detection`: frame-level detection AP (docs/vq2d.md#metrics) over a loader,
  gathered over processes.
* :func:`train`: the whole run from a merged config (tools/train_vq2d.py, torchrun and
  submitit all call it): data, model, optimiser, resume from ``last_checkpoint``, the loop
  with logging / periodic validation / checkpoints, ``model_final.pth`` and
  ``detection_ap.json``.

Resuming is exact on a fixed world size: a checkpoint holds the model, optimiser,
scheduler, non-finite counters, every rank's RNG state and the position in the sample
stream (see :class:`vq2d.data.train_dataset.InfiniteSampler`), so a run killed and
restarted ends in the same state as an uninterrupted one. SIGTERM (SLURM's preemption or
requeue) and submitit's timeout signal stop the loop after the current iteration with a
checkpoint of it (:mod:`episodic.preemption`), so a preempted run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from episodic import distributed, preemption
from episodic.checkpoint import Checkpointer, capture_rng_state, restore_rng_state
from episodic.config import save_config
from episodic.io import atomic_torch_save, atomic_write_json, read_json
from episodic.logging import TensorboardLogger, progress, setup_logging
from vq2d.engine import build
from vq2d.evaluation.detection_ap import AP_PARTS, METRICS, FrameDetections, detection_ap, format_detection_ap
from vq2d.evaluation.detector_diagnostics import (DIAGNOSTICS, FrameProposalScores, detector_diagnostics,
                                                  format_diagnostics)

logger = logging.getLogger(__name__)

FINAL_CHECKPOINT = "model_final.pth"
DETECTION_AP_FILE = "detection_ap.json"


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class StepResult:
    """One training step. ``losses`` are means over processes."""

    losses: dict[str, float]
    total: float
    grad_norm: float
    skipped: bool  # non-finite loss or gradient: no parameter update


class NonFiniteGuard:
    """Counts skipped steps; raises :class:`NonFiniteLossError` after ``max_consecutive`` in a row."""

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1 (got {max_consecutive})")
        self.max_consecutive = int(max_consecutive)
        self.total = 0
        self.consecutive = 0

    def update(self, result: StepResult, iteration: int) -> None:
        if not result.skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        logger.warning("iteration %d: non-finite loss or gradient (%s, grad norm %.4g): step skipped "
                       "(%d skipped so far, %d in a row)", iteration, losses, result.grad_norm, self.total,
                       self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"iteration {iteration}: {self.consecutive} consecutive steps with a non-finite loss or gradient "
                f"(last: {losses}); aborting. Lower the learning rate, enable solver.clip_grad_norm, or check "
                f"the data; resume from the last checkpoint")

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total, self.consecutive = int(state["total"]), int(state["consecutive"])


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_to_device(batch: dict[str, Any], device: torch.device):
    """Collated batch -> (images list ``[3, H, W]``, crops ``[B, 3, S, S]``, targets) on ``device``."""
    images = [img.to(device, non_blocking=True) for img in batch["images"]]
    crops = batch["crops"].to(device, non_blocking=True)
    targets = [{"boxes": t["boxes"].to(device, non_blocking=True)} for t in batch["targets"]]
    return images, crops, targets


def train_one_iteration(
    model: nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    clip_grad_norm: float | None = None,
) -> StepResult:
    """One SGD step on ``batch`` (from :func:`vq2d.data.train_dataset.collate_pairs`).

    The loss dict is averaged over processes first; when any process has a non-finite loss
    every process skips backward and the update (so DDP stays in step), and when the
    (all-reduced) gradient norm is non-finite the update is skipped. The caller steps the
    scheduler and counts skipped steps (:class:`NonFiniteGuard`).
    """
    model.train()
    images, crops, targets = batch_to_device(batch, device)
    with _autocast(device, amp_dtype):
        loss_dict = model(images, crops, targets)
    names = sorted(loss_dict)
    reduced = distributed.all_reduce_mean(torch.stack([loss_dict[k].detach().float() for k in names]))
    losses = {k: float(v) for k, v in zip(names, reduced.cpu())}
    total = float(reduced.sum())
    optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(total):
        return StepResult(losses, total, math.nan, skipped=True)
    sum(loss_dict.values()).backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    max_norm = float(clip_grad_norm) if clip_grad_norm else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(losses, total, grad_norm, skipped=True)
    optimizer.step()
    return StepResult(losses, total, grad_norm, skipped=False)


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    show_progress: bool = True,
) -> dict | None:
    """Detection AP (vq2d.evaluation.detection_ap) of ``model`` on the frames of ``loader``
    (each rank its share) and, under "diagnostics", the RPN / head / calibration measures of
    vq2d.evaluation.detector_diagnostics; the result on the main process, ``None`` on the others."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    frames: list[FrameDetections] = []
    diagnosed: list[FrameProposalScores] = []
    for batch in progress(loader, desc="validate", enabled=show_progress and distributed.is_main_process(),
                          leave=False):
        images, crops, targets = batch_to_device(batch, device)
        with _autocast(device, amp_dtype):
            outputs, proposals = model.detect_pairs(images, crops)
        for out, props, target, meta in zip(outputs, proposals, targets, batch["meta"]):
            gt_boxes = target["boxes"].float().cpu().numpy()
            frames.append(FrameDetections(
                gt_boxes=gt_boxes, boxes=out["boxes"].float().cpu().numpy(),
                scores=out["scores"].float().cpu().numpy(), name=f"{meta['query']}@{meta['frame_number']}",
                clean=bool(meta.get("clean", True))))
            diagnosed.append(FrameProposalScores(gt_boxes=gt_boxes, proposals=props["boxes"].float().cpu().numpy(),
                                                 scores=props["scores"].float().cpu().numpy()))
    model.train(was_training)
    gathered = distributed.all_gather_object((frames, diagnosed))
    if not distributed.is_main_process():
        return None
    result = detection_ap([f for part in gathered for f in part[0]])
    result["diagnostics"] = detector_diagnostics([f for part in gathered for f in part[1]])
    return result


# --------------------------------------------------------------------- run helpers
def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_detection_ap(output_dir: Path, result: dict, iteration: int, split: str) -> Path:
    """``output_dir/detection_ap.json``: the newest result, earlier iterations under "history"."""
    path = output_dir / DETECTION_AP_FILE
    history = []
    if path.is_file():
        old = read_json(path)
        history = [h for h in old.get("history", []) + [{k: v for k, v in old.items() if k != "history"}]
                   if h.get("iteration", -1) < iteration]
    atomic_write_json(path, _json_safe({"iteration": iteration, "split": split, **result, "history": history}),
                      indent=2)
    return path


def _log_detection_ap(tb: TensorboardLogger, result: dict, iteration: int) -> None:
    for part in AP_PARTS:
        tb.scalars({f"detection_ap/{part}/{m}": result[part][m] for m in METRICS
                    if math.isfinite(result[part][m])}, iteration)
    diagnostics = result.get("diagnostics", {})
    tb.scalars({f"diagnostics/{k}": diagnostics[k] for k in DIAGNOSTICS
                if k in diagnostics and math.isfinite(diagnostics[k])}, iteration)
    tb.flush()


@dataclass
class TrainState:
    """The objects a checkpoint saves and restores."""

    model: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    guard: NonFiniteGuard
    model_config: dict[str, Any]
    num_samples: int
    batch_per_rank: int
    seed: int
    resumed_at: tuple[int, int] = (0, 0)  # (iteration, sample position) this process started from

    def sample_position(self, iteration: int) -> int:
        """Samples this rank consumed from its stream once ``iteration`` iterations are done."""
        start_iteration, start_position = self.resumed_at
        return start_position + (iteration - start_iteration) * self.batch_per_rank


def save_checkpoint(checkpointer: Checkpointer, state: TrainState, iteration: int, info) -> None:
    """Periodic checkpoint ``model_<iteration>.pth`` (collective: every rank's RNG state is gathered)."""
    rng = distributed.all_gather_object(capture_rng_state())
    if info.is_main:
        checkpointer.save(f"model_{iteration:07d}.pth", {
            "model": state.model.state_dict(),
            "config": build.inference_config(state.model_config),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "iteration": iteration,
            "sampler": {"position": state.sample_position(iteration), "num_samples": state.num_samples,
                        "world_size": info.world_size, "seed": state.seed},
            "nonfinite": state.guard.state_dict(),
            "rng": rng,
        })
    distributed.barrier()


@dataclass
class ResumePoint:
    iteration: int = 0  # iterations already done
    sample_position: int = 0  # samples this rank already consumed from its stream
    rng: dict | None = None  # this rank's RNG state (None: keep the freshly seeded one)


def load_checkpoint(checkpointer: Checkpointer, state: TrainState, info) -> ResumePoint:
    """Restore the newest checkpoint of ``checkpointer`` into ``state`` (a fresh run: iteration 0)."""
    ckpt = checkpointer.load()
    if ckpt is None:
        return ResumePoint()
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.guard.load_state_dict(ckpt["nonfinite"])
    iteration, sampler, rng = int(ckpt["iteration"]), ckpt["sampler"], ckpt["rng"]
    same_stream = (sampler["num_samples"], sampler["world_size"], sampler["seed"]) == (
        state.num_samples, info.world_size, state.seed)
    if not same_stream:
        logger.warning("resuming with other data / processes / seed than the checkpoint (%s): the sample "
                       "stream continues differently from the interrupted run", sampler)
    logger.info("resumed from %s at iteration %d", checkpointer.loaded, iteration)
    return ResumePoint(
        iteration=iteration,
        sample_position=int(sampler["position"]) if same_stream else iteration * state.batch_per_rank,
        rng=rng[info.rank] if len(rng) == info.world_size else None,
    )


class _Window:
    """Mean of the logged values since the last log line."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if math.isfinite(v):
                self.sums[k] += v
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums.clear()
        self.count = 0
        return out


def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _validate(model, loader, cfg, device, amp, tb, iteration, output_dir) -> dict | None:
    start = time.perf_counter()
    result = evaluate_detection(model, loader, device=device, amp_dtype=amp)
    if result is not None:
        path = write_detection_ap(output_dir, result, iteration, str(cfg.eval.split))
        _log_detection_ap(tb, result, iteration)
        logger.info("iteration %d: detection AP on %s (%.1f s, %s):\n%s", iteration, cfg.eval.split,
                    time.perf_counter() - start, path,
                    format_detection_ap(result) + "\n" + format_diagnostics(result["diagnostics"]))
    return result


def _validation_loader(cfg, info):
    if not (int(cfg.eval.period) > 0 or bool(cfg.eval.at_end)):
        return None
    paths = build.split_paths(cfg, cfg.eval.split, cfg.eval.annotations)
    if not paths.annotations.is_file():
        logger.warning("no validation: annotation file %s not found", paths.annotations)
        return None
    samples, paths = build.build_samples(cfg, train=False)
    return build.build_eval_loader(cfg, samples, paths.cache_root, info)


def train(cfg) -> dict[str, Any]:
    """Train (or resume) the detector described by the merged config ``cfg`` (train.yaml).

    Works in one process, under torchrun and in submitit tasks (ranks from
    episodic.distributed). Returns a summary {"iteration", "skipped_steps", "detection_ap"}.
    """
    build.set_threads(cfg.threads)
    if build.start_method(cfg) == "forkserver" and (int(cfg.data.num_workers) > 0 or int(cfg.extract_workers) > 1):
        preemption.start_forkserver()  # before frame extraction starts one: it must outlive SLURM's SIGTERM
    info = distributed.init_distributed(backend=cfg.ddp.backend, device=build.resolve_device(str(cfg.device)))
    device = info.device
    output_dir = Path(cfg.output_dir)
    setup_logging(output_dir, info.rank)
    if info.is_main:
        save_config(cfg, output_dir)
    distributed.seed_everything(int(cfg.seed), info.rank)
    max_iter = int(cfg.max_iter)
    model_config = build.model_config(cfg)  # fails early on a missing weight path

    train_samples, train_paths = build.build_samples(cfg, train=True)
    val_loader = _validation_loader(cfg, info)
    model = build.build_training_model(cfg).to(device)
    optimizer = build.build_optimizer(cfg, model)
    state = TrainState(model=model, optimizer=optimizer, scheduler=build.build_scheduler(cfg, optimizer),
                       guard=NonFiniteGuard(int(cfg.solver.max_consecutive_nonfinite)),
                       model_config=model_config, num_samples=len(train_samples),
                       batch_per_rank=build.per_process_batch_size(int(cfg.batch_size), info.world_size),
                       seed=int(cfg.seed))
    checkpointer = Checkpointer(output_dir, keep_last=cfg.checkpoint.keep_last)
    resume = load_checkpoint(checkpointer, state, info)
    start_iter = resume.iteration
    state.resumed_at = (resume.iteration, resume.sample_position)
    if start_iter > max_iter:
        logger.warning("the checkpoint is at iteration %d, past max_iter %d: nothing to train", start_iter, max_iter)
    train_model: nn.Module = model
    if info.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.ddp.find_unused_parameters))
    loader = build.build_train_loader(cfg, train_samples, train_paths.cache_root, info,
                                      start=resume.sample_position)
    amp = build.amp_dtype(str(cfg.solver.amp), device)
    tb = TensorboardLogger(output_dir)
    logger.info("training %d -> %d iterations, %d samples, batch %d (%d per process x %d), device %s, amp %s",
                start_iter, max_iter, len(train_samples), int(cfg.batch_size), state.batch_per_rank,
                info.world_size, device, amp)
    if resume.rng is not None:
        restore_rng_state(resume.rng)  # last thing before the loop: nothing else draws from it

    window, log_period = _Window(), max(int(cfg.log_period), 1)
    ckpt_period, eval_period = int(cfg.checkpoint.period), int(cfg.eval.period)
    preemption.shield_loader(loader)
    preemption.shield_loader(val_loader)
    data_iter = iter(loader) if start_iter < max_iter else None
    bar = progress(total=max_iter, initial=min(start_iter, max_iter), desc="train vq2d", unit="it")
    with preemption.StopOnSignal() as stop:  # SIGTERM / submitit's signal: save after this step, exit
        for iteration in range(start_iter, max_iter):
            t0 = time.perf_counter()
            batch = next(data_iter)
            t1 = time.perf_counter()
            result = train_one_iteration(train_model, batch, optimizer, device=device, amp_dtype=amp,
                                         clip_grad_norm=cfg.solver.clip_grad_norm)
            state.scheduler.step()
            done = iteration + 1
            state.guard.update(result, done)
            t2 = time.perf_counter()
            window.add({**result.losses, "total_loss": result.total, "grad_norm": result.grad_norm,
                        "data_time": t1 - t0, "iter_time": t2 - t0,
                        "images_per_s": len(batch["images"]) * info.world_size / max(t2 - t0, 1e-9)})
            bar.update(1)
            bar.set_postfix(loss=f"{result.total:.3f}")
            if done % log_period == 0 or done == max_iter:
                values = {**window.pop(), **_lrs(optimizer), "skipped_steps": state.guard.total}
                tb.scalars({f"train/{k}": v for k, v in values.items()}, done)
                logger.info("iter %d/%d  %s", done, max_iter, "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
            stopping = stop.should_stop()  # collective: every rank stops after the same iteration
            if val_loader is not None and eval_period > 0 and done % eval_period == 0 and done < max_iter \
                    and not stopping:
                _validate(model, val_loader, cfg, device, amp, tb, done, output_dir)
            if (ckpt_period > 0 and done % ckpt_period == 0) or done == max_iter or stopping:
                save_checkpoint(checkpointer, state, done, info)
            if stopping:
                bar.close()
                tb.close()
                stop.exit(f"iteration {done}")
    bar.close()

    final_iter = max(start_iter, max_iter)
    if info.is_main:
        atomic_torch_save(output_dir / FINAL_CHECKPOINT, build.final_state(model, state.model_config, final_iter))
        logger.info("final weights: %s", output_dir / FINAL_CHECKPOINT)
    ap = None
    if val_loader is not None and bool(cfg.eval.at_end) and not _has_result(output_dir, final_iter):
        ap = _validate(model, val_loader, cfg, device, amp, tb, final_iter, output_dir)
    tb.close()
    summary = {"iteration": final_iter, "skipped_steps": state.guard.total, "detection_ap": ap}
    logger.info("done: %s", summary)
    distributed.barrier()
    distributed.cleanup()
    return summary


def _has_result(output_dir: Path, iteration: int) -> bool:
    """Whether every process sees a detection_ap.json of ``iteration`` already (a finished run restarted)."""
    path = output_dir / DETECTION_AP_FILE
    found = path.is_file() and read_json(path).get("iteration") == iteration
    return bool(np.all(distributed.all_gather_object(found)))
