"""NLQ training loop (DETR style): :func:`train_one_epoch`, :func:`evaluate` and :func:`train`.

``train(cfg)`` runs one stage of the NaQ recipe (configs/nlq/train.yaml): it resumes from
``OUT/last_checkpoint`` when one exists, validates on NLQ val after every epoch, keeps the
best checkpoint by R@1 IoU0.3 in ``OUT/model_best.pth`` and periodic ones
(``OUT/model_<epoch>.pth``, the newest ``keep_last``) holding the optimizer, step and RNG
state. Every checkpoint carries the resolved config, so it alone rebuilds the model, the
text encoder (vocabulary) and the data pipeline for evaluation.

Processes: one (CPU or a GPU), or DDP under torchrun / submitit (episodic.distributed).
SIGTERM (SLURM's preemption or requeue) and submitit's timeout signal stop training after the
current step with a mid-epoch checkpoint (``OUT/model_<epochs done>_<batches>.pth``,
:mod:`episodic.preemption`); the resumed run skips the batches of that epoch already trained.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from episodic import distributed, preemption
from episodic.checkpoint import Checkpointer, capture_rng_state, restore_rng_state
from episodic.config import save_config
from episodic.io import atomic_torch_save, atomic_write_json
from episodic.logging import TensorboardLogger, progress, setup_logging
from nlq.data.annotations import NLQAnnotationFile
from nlq.data.dataset import NLQDataset
from nlq.engine.build import (Schedule, TrainingData, build_nlq_model, build_train_loader, build_training_data,
                              checkpoint_model_state, load_init_weights, resolve_train_config)
from nlq.engine.inference import autocast, build_eval_loader, gather_results, move_to_device, predict
from nlq.engine.optim import WarmupLinearSchedule, build_optimizer
from nlq.evaluation.metrics import evaluate_nlq

log = logging.getLogger(__name__)

BEST_METRIC = "R@1_IoU0.3"
BEST_CHECKPOINT = "model_best.pth"
DATA_REPORT_FILE = "data_report.json"


@dataclass
class TrainState:
    """Progress saved in every checkpoint: ``epoch`` = epochs completed."""

    epoch: int = 0
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list = field(default_factory=list)  # per epoch: {"epoch", "train_loss", val metrics}
    epoch_batches: int = 0  # batches of epoch ``epoch + 1`` already trained (a run stopped mid-epoch)
    epoch_loss_sums: dict = field(default_factory=dict)  # their loss sums (for the epoch's mean)


@dataclass
class EpochProgress:
    """Where :func:`train_one_epoch` is in its epoch: batches done, loss sums, stopped early."""

    batches: int = 0
    sums: dict = field(default_factory=dict)
    stopped: bool = False


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, schedule: WarmupLinearSchedule,
                    device: torch.device, global_step: int, grad_clip: float = 0.0, amp: bool = False,
                    tensorboard: TensorboardLogger | None = None, log_every: int = 50,
                    epoch: int = 0, stop: preemption.StopOnSignal | None = None,
                    done: EpochProgress | None = None) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; the model returns a dict of losses whose ``"loss"`` is
    optimised. Returns (mean of every loss term over the epoch, global step after it).

    ``done``: progress of a resumed epoch (``loader`` yields the rest of it), updated in
    place. With ``stop``, a preemption signal ends the pass after the current step:
    ``done.stopped`` is set and the means are empty."""
    model.train()
    done = done if done is not None else EpochProgress()
    sums, num_batches = done.sums, done.batches
    bar = progress(loader, desc=f"epoch {epoch + 1}", leave=False)
    for batch in bar:
        batch.pop("keys", None)
        lr = schedule.apply(optimizer, global_step)
        with autocast(device, amp):
            losses = model(move_to_device(batch, device))
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch + 1} step {global_step}: loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        values = {name: float(value.detach()) for name, value in losses.items()}
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        num_batches += 1
        if tensorboard is not None and global_step % max(log_every, 1) == 0:
            tensorboard.scalars({f"train/{k}": v for k, v in values.items()} | {"train/lr": lr}, global_step)
        bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
        global_step += 1
        done.batches = num_batches
        if stop is not None and stop.should_stop():  # collective: every rank stops after the same step
            done.stopped = True
            bar.close()
            return {}, global_step
    means = {name: float(distributed.all_reduce_mean(torch.tensor(total / max(num_batches, 1))))
             for name, total in sorted(sums.items())}
    return means, global_step


def evaluate(model: nn.Module, loader, dataset: NLQDataset, ground_truth: NLQAnnotationFile,
             device: torch.device, amp: bool = False) -> dict[str, float]:
    """Predict every query of ``dataset`` (sharded over processes) and score the top-5
    windows against ``ground_truth`` (R@k_IoUt, mIoU in percent; num_evaluated, num_gt)."""
    results = predict(model, loader, device, amp=amp, desc="validate")
    results = gather_results(results, [q.key for q in dataset.queries])
    predictions = [{"clip_uid": r["key"].clip_uid, "annotation_uid": r["key"].annotation_uid,
                    "query_idx": r["key"].query_idx, "predicted_times": r["windows"]} for r in results]
    metrics, warnings = evaluate_nlq(predictions, ground_truth, return_warnings=True)
    for warning in warnings:
        log.debug("validation: %s", warning)
    return metrics


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class Run:
    """Everything one training run builds from its config (:func:`setup_run`)."""

    cfg: Any  # resolved training config
    info: distributed.DistInfo
    data: TrainingData
    model: nn.Module  # unwrapped
    train_model: nn.Module  # DDP-wrapped in multi-process runs
    optimizer: torch.optim.Optimizer
    schedule: WarmupLinearSchedule
    train_loader: Any
    sampler: Any
    val_loader: Any
    settings: Schedule

    def checkpoint(self, state: TrainState, **extra: Any) -> dict:
        """Weights + resolved config (+ ``extra``): enough to rebuild model and data pipeline."""
        dims = self.data.train.features.dims
        return {"model": self.model.state_dict(), "config": OmegaConf.to_container(self.cfg, resolve=True),
                "video_dim": sum(dims), "feature_dims": list(dims), "train_state": asdict(state), **extra}


def setup_run(cfg: Any, info: distributed.DistInfo) -> Run:
    """Datasets, model (from ``init`` when given), optimizer, loaders and lr schedule."""
    settings = Schedule.from_config(cfg)
    data = build_training_data(cfg)
    init = checkpoint_model_state(cfg.init) if cfg.init else None
    model = build_nlq_model(cfg.model, cfg.text_encoder, sum(data.train.features.dims), train_texts=data.train_texts,
                            state_dict=None if init is None else init["model"])
    if init is not None:
        load_init_weights(model, init, cfg.init, cfg.model.name)
        log.info("initialised the model from %s", cfg.init)
    model.to(info.device)
    tokenize = model.text_encoder.tokenizer
    train_loader, sampler = build_train_loader(data.train, tokenize, settings.batch_size, int(cfg.num_workers),
                                               int(cfg.seed), info)
    schedule = WarmupLinearSchedule.from_fraction(settings.lr, settings.schedule_epochs * len(train_loader),
                                                  settings.warmup_fraction, settings.lr_decay,
                                                  settings.lr_drop_epochs * len(train_loader))
    train_model = model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    return Run(cfg=cfg, info=info, data=data, model=model, train_model=train_model,
               optimizer=build_optimizer(model, settings.lr, settings.weight_decay, eps=settings.adam_eps,
                                         no_decay=settings.no_decay), schedule=schedule,
               train_loader=train_loader, sampler=sampler, settings=settings,
               val_loader=build_eval_loader(data.val, tokenize, int(cfg.eval_batch_size), int(cfg.num_workers)))


def _resume(checkpointer: Checkpointer, run: Run) -> TrainState:
    saved = checkpointer.load()
    if saved is None:
        return TrainState()
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    rng = saved["rng"]
    restore_rng_state(rng[run.info.rank] if run.info.rank < len(rng) else rng[0])
    state = TrainState(**saved["train_state"])
    log.info("resumed from %s: %d epochs done, step %d, best %s %.2f (epoch %d)", checkpointer.loaded,
             state.epoch, state.global_step, BEST_METRIC, state.best_metric, state.best_epoch)
    return state


def _log_epoch(state: TrainState, max_epochs: int, losses: dict, metrics: dict, improved: bool,
               seconds: float) -> None:
    log.info("epoch %d/%d: loss %.4f, val R@1 %.2f/%.2f R@5 %.2f/%.2f mIoU %.2f%s (%.0f s)", state.epoch, max_epochs,
             losses["loss"], metrics["R@1_IoU0.3"], metrics["R@1_IoU0.5"], metrics["R@5_IoU0.3"],
             metrics["R@5_IoU0.5"], metrics["mIoU"], " (best)" if improved else "", seconds)


def _save_and_stop(checkpointer: Checkpointer, run: Run, state: TrainState, stop: preemption.StopOnSignal,
                   where: str) -> None:
    """Preempted mid-epoch: save the training state after the last step (``model_<epochs done>_<batches>.pth``,
    resumed by the next run) and exit (episodic.preemption)."""
    rng = distributed.all_gather_object(capture_rng_state())
    if run.info.is_main:
        checkpointer.save(f"model_{state.epoch:04d}_{state.epoch_batches:06d}.pth",
                          run.checkpoint(state, optimizer=run.optimizer.state_dict(), rng=rng))
    distributed.barrier()
    stop.exit(where)


def train(cfg: Any) -> dict | None:
    """Run one training stage described by a training config; returns a summary (best
    epoch and metric, epochs done, last validation metrics) on the main process, None on
    the others."""
    cfg = resolve_train_config(cfg)
    info = distributed.init_distributed(device=cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(out, info.rank)
    if info.is_main:
        save_config(cfg, out)
    distributed.seed_everything(int(cfg.seed), info.rank)
    run = setup_run(cfg, info)
    if info.is_main:
        atomic_write_json(out / DATA_REPORT_FILE, run.data.report, indent=2)
    amp = bool(cfg.amp) and info.device.type == "cuda"
    checkpointer = Checkpointer(out, keep_last=int(cfg.keep_last))
    state = _resume(checkpointer, run)
    max_epochs = run.settings.max_epochs
    log.info("training %s (%s stage, %d train / %d val queries) for %d epochs, %d steps per epoch, global batch %d, "
             "lr %.2e", cfg.model.name, cfg.stage.name, len(run.data.train), len(run.data.val), max_epochs,
             len(run.train_loader), run.settings.batch_size, run.settings.lr)
    metrics: dict = {}
    preemption.shield_loader(run.train_loader)
    preemption.shield_loader(run.val_loader)
    with TensorboardLogger(out) as tensorboard, preemption.StopOnSignal() as stop:
        for epoch in range(state.epoch, max_epochs):
            start = time.time()
            # a run stopped mid-epoch skips the batches it trained (this rank's first samples)
            if state.epoch_batches:
                run.sampler.set_epoch(epoch, start=state.epoch_batches * run.train_loader.batch_size)
            else:
                run.sampler.set_epoch(epoch)
            run.data.train.set_epoch(int(cfg.seed), epoch)
            done = EpochProgress(batches=state.epoch_batches, sums=dict(state.epoch_loss_sums))
            losses, state.global_step = train_one_epoch(
                run.train_model, run.train_loader, run.optimizer, run.schedule, info.device, state.global_step,
                grad_clip=run.settings.grad_clip, amp=amp, tensorboard=tensorboard, log_every=int(cfg.log_every),
                epoch=epoch, stop=stop, done=done)
            state.epoch_batches, state.epoch_loss_sums = done.batches, done.sums
            if done.stopped:
                _save_and_stop(checkpointer, run, state, stop, f"epoch {epoch + 1} step {done.batches}")
            state.epoch_batches, state.epoch_loss_sums = 0, {}
            metrics = evaluate(run.model, run.val_loader, run.data.val, run.data.val_annotations, info.device, amp)
            state.epoch = epoch + 1
            state.history.append({"epoch": state.epoch, "train_loss": losses["loss"], **metrics})
            improved = metrics[BEST_METRIC] > state.best_metric
            if improved:
                state.best_metric, state.best_epoch = metrics[BEST_METRIC], state.epoch
            tensorboard.scalars({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)}, state.epoch)
            tensorboard.scalars({f"epoch/{k}": v for k, v in losses.items()}, state.epoch)
            _log_epoch(state, max_epochs, losses, metrics, improved, time.time() - start)
            rng = distributed.all_gather_object(capture_rng_state())
            if info.is_main:
                if improved:
                    atomic_torch_save(out / BEST_CHECKPOINT, run.checkpoint(state, metrics=metrics))
                checkpointer.save(f"model_{state.epoch:04d}.pth", run.checkpoint(
                    state, metrics=metrics, optimizer=run.optimizer.state_dict(), rng=rng))
            distributed.barrier()
            if state.epoch < max_epochs and stop.should_stop():  # signalled during validation: saved above
                stop.exit(f"the end of epoch {state.epoch}")
    summary = {"epochs": state.epoch, "best_epoch": state.best_epoch, f"best_{BEST_METRIC}": state.best_metric,
               "last_metrics": metrics or (state.history[-1] if state.history else {}),
               "best_checkpoint": str(out / BEST_CHECKPOINT)}
    distributed.cleanup()
    return summary if info.is_main else None
