"""Training config (configs/vq2d/train.yaml) -> objects, in one place.

Every other engine module takes plain arguments; this module alone reads config keys.
:func:`final_state` is the format of ``model_final.pth``, which evaluation reads
(vq2d.inference.checkpoint_io.load_detector rebuilds the model from the file alone).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from episodic import distributed
from episodic.config import to_container
from episodic.distributed import DistInfo
from episodic.errors import DataError
from vq2d.data.annotations import VQAnnotationFile, load_vq_annotations
from vq2d.data.frame_cache import FrameCache
from vq2d.data.samples import TrainSample, build_train_samples, eval_samples, frames_needed
from vq2d.data.train_dataset import (
    InfiniteSampler,
    PairDataset,
    PairMapper,
    START_METHODS,
    collate_pairs,
    loader_worker_init,
    drop_uncached,
    extract_missing_frames,
    missing_frames,
)
from vq2d.data.transforms import PairAugmentation
from vq2d.engine.optim import WarmupMultiStepLR, build_sgd
from vq2d.modeling.build import build_model, resolve_model_config
from vq2d.modeling.siamrcnn import SiamRCNN

logger = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "off")


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SplitPaths:
    annotations: Path  # vq_<split>.json
    clips_dir: Path  # <clip_uid>.mp4 files
    cache_root: Path  # JPEG frame cache


def split_paths(cfg, split: str, annotations: str | None = None) -> SplitPaths:
    """Paths of ``split`` under ``cfg.data`` (null entries -> the Ego4D layout under data.root)."""
    root = Path(cfg.data.root)
    return SplitPaths(
        annotations=Path(annotations or root / "v2" / "annotations" / f"vq_{split}.json"),
        clips_dir=Path(cfg.data.clips_dir or root / "v2" / "clips"),
        cache_root=Path(cfg.data.cache_root or root / "frame_cache"),
    )


def load_split(paths: SplitPaths) -> VQAnnotationFile:
    """The annotation file; malformed query sets are skipped and counted in the log."""
    annotations = load_vq_annotations(paths.annotations, strict=False)
    if annotations.problems:
        logger.warning("%s: skipped %d malformed query sets, e.g. %s", paths.annotations,
                       len(annotations.problems), annotations.problems[0])
    return annotations


def ensure_cached(samples: list[TrainSample], annotations: VQAnnotationFile, paths: SplitPaths, cfg,
                  what: str) -> list[TrainSample]:
    """Extract the frames ``samples`` need that are missing from the cache (when
    ``cfg.extract_frames``; each process takes every world_size-th clip), then drop the
    samples whose frames are still missing. For a whole Ego4D split, run
    tools/extract_frames.py first: the processes wait for each other's share here."""
    cache = FrameCache(paths.cache_root)
    if cfg.extract_frames:
        clips = sorted(frames_needed(samples))[distributed.get_rank()::distributed.get_world_size()]
        missing = missing_frames(samples, cache, clips)
        if missing:
            logger.info("%s: extracting %d frames of %d clips missing from the frame cache %s", what,
                        sum(len(v) for v in missing.values()), len(missing), cache.root)
            for failure in extract_missing_frames(missing, annotations, paths.clips_dir, cache,
                                                  cfg.data.clip_template, int(cfg.extract_workers),
                                                  start_method(cfg)):
                logger.warning("%s: frame extraction failed: %s", what, failure)
    distributed.barrier()
    return drop_uncached(samples, cache, what)


def build_samples(cfg, train: bool) -> tuple[list[TrainSample], SplitPaths]:
    """Training samples of ``cfg.data.split`` (``train``) or validation frames of ``cfg.eval.split``."""
    split = cfg.data.split if train else cfg.eval.split
    paths = split_paths(cfg, split, cfg.data.annotations if train else cfg.eval.annotations)
    annotations = load_split(paths)
    if train:
        s = cfg.samples
        samples, stats = build_train_samples(
            annotations.queries(), clean=bool(s.clean_filter), extra_references=int(s.extra_references),
            extra_references_order=str(s.get("extra_references_order", "shuffled")),
            negatives=bool(cfg.negatives), negative_ratio=float(s.negative_ratio),
            negative_source=str(s.negative_source), negative_min_gap=int(s.negative_min_gap),
            other_video_ratio=float(s.other_video_ratio), min_box_size=float(s.min_box_size), seed=int(cfg.seed))
    else:
        e = cfg.eval
        samples, stats = eval_samples(annotations.queries(), negatives=bool(e.negatives),
                                      negative_ratio=float(e.negative_ratio),
                                      negative_source=str(cfg.samples.negative_source),
                                      max_queries=e.max_queries, seed=int(cfg.seed))
    what = f"{split} ({'training' if train else 'validation'})"
    logger.info("%s samples from %s: %s", what, paths.annotations, stats.format())
    if train and not samples:
        raise DataError(f"{paths.annotations}: no training sample (queries with a response track and valid boxes)")
    return ensure_cached(samples, annotations, paths, cfg, what), paths


def per_process_batch_size(total: int, world_size: int) -> int:
    if total % world_size:
        raise ValueError(f"batch_size {total} is not divisible by the {world_size} processes")
    return total // world_size


def build_augmentation(cfg) -> PairAugmentation:
    a = cfg.augment
    return PairAugmentation(
        flip_prob=float(a.flip_prob),
        brightness=None if a.brightness is None else tuple(a.brightness),
        crop_rotation=None if a.crop_rotation is None else tuple(a.crop_rotation),
        crop_rotation_prob=float(a.crop_rotation_prob),
        crop_rotation_mode=str(a.get("crop_rotation_mode", "crop")),
        pair_channel_shuffle=float(a.get("pair_channel_shuffle", 0.0)),
        pair_flip=bool(a.get("pair_flip", False)),
    )


def build_mapper(cfg, cache_root: Path, train: bool) -> PairMapper:
    """Training: frames shrunk to the largest training scale, augmented; evaluation: shrunk to
    the inference scale (the last ``model.min_size``), not augmented."""
    m = resolve_model_config(cfg.model)
    sizes = list(m["min_size"]) if not isinstance(m["min_size"], int) else [m["min_size"]]
    return PairMapper(cache=FrameCache(cache_root), crop_size=m["crop_size"], crop_context=m["crop_context"],
                      short_side=max(sizes) if train else sizes[-1], max_size=m["max_size"],
                      augmentation=build_augmentation(cfg) if train else None,
                      crops_per_pair=int(cfg.samples.get("crops_per_pair", 1)) if train else 1)


def start_method(cfg) -> str:
    method = str(cfg.data.start_method)
    if method not in START_METHODS:
        raise ValueError(f"data.start_method must be one of {START_METHODS}, got {method!r}")
    return method


def _loader_kwargs(cfg, info: DistInfo) -> dict[str, Any]:
    workers, method = int(cfg.data.num_workers), start_method(cfg)
    return dict(num_workers=workers, collate_fn=collate_pairs, pin_memory=info.device.type == "cuda",
                persistent_workers=workers > 0, multiprocessing_context=method if workers > 0 else None,
                worker_init_fn=functools.partial(loader_worker_init, opencv_threads=None if method == "fork" else 1),
                # own generator: creating a loader iterator must not draw from the global RNG
                generator=torch.Generator().manual_seed(int(cfg.seed)))


def build_train_loader(cfg, samples: list[TrainSample], cache_root: Path, info: DistInfo, start: int) -> DataLoader:
    """Endless loader of this rank's batches, starting at sample position ``start``."""
    sampler = InfiniteSampler(len(samples), seed=int(cfg.seed), rank=info.rank, world_size=info.world_size,
                              start=start)
    return DataLoader(PairDataset(samples, build_mapper(cfg, cache_root, train=True)), sampler=sampler,
                      batch_size=per_process_batch_size(int(cfg.batch_size), info.world_size), drop_last=True,
                      **_loader_kwargs(cfg, info))


def build_eval_loader(cfg, samples: list[TrainSample], cache_root: Path, info: DistInfo) -> DataLoader:
    """This rank's share (every world_size-th) of the validation frames, in order."""
    dataset = PairDataset(samples, build_mapper(cfg, cache_root, train=False))
    indices = list(range(info.rank, len(samples), info.world_size))
    return DataLoader(dataset, sampler=indices, batch_size=int(cfg.eval.batch_size), **_loader_kwargs(cfg, info))


# --------------------------------------------------------------------------- model
def model_config(cfg) -> dict[str, Any]:
    """The resolved model config (vq2d.modeling.build); a weight format without a path is an error.
    ``hard_negatives.as_released`` of the train config goes into it."""
    model_cfg = to_container(cfg.model)
    if cfg.get("hard_negatives") is not None:
        model_cfg["hard_negatives_as_released"] = bool(cfg.hard_negatives.as_released)
    weights = model_cfg.get("weights") or {}
    if weights.get("format", "none") != "none" and weights.get("path") in (None, "", "???"):
        raise DataError(f"model.weights.format is {weights['format']!r}: give the local weight file with "
                        f"model.weights.path=<file> (or model.weights.format=none for random init)")
    return resolve_model_config(model_cfg)


def build_training_model(cfg) -> SiamRCNN:
    """The model of ``cfg.model``, initialised from ``model.weights`` (local file) or at random;
    with ``cfg.channels_last`` its parameters in channels-last (NHWC) memory order."""
    model = build_model(model_config(cfg))
    if bool(cfg.get("channels_last", False)):
        model = model.to(memory_format=torch.channels_last)
    return model


def inference_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A model config that rebuilds the trained model without its initial weight file."""
    return {**model_cfg, "weights": {"format": "none", "path": None}}


def final_state(model: SiamRCNN, model_cfg: dict[str, Any], iteration: int) -> dict[str, Any]:
    """What ``model_final.pth`` holds: ``{"model": state_dict, "config": model config dict,
    "iteration": int}``; ``vq2d.modeling.build.build_model(config)`` + ``load_state_dict``
    rebuild the model (vq2d.inference.checkpoint_io.load_detector does that)."""
    return {"model": model.state_dict(), "config": inference_config(model_cfg), "iteration": int(iteration)}


# ----------------------------------------------------------------------- optimiser
def build_optimizer(cfg, model: SiamRCNN) -> torch.optim.SGD:
    s = cfg.solver
    return build_sgd(model, lr_head=float(s.lr_head), lr_backbone=float(s.lr_backbone), momentum=float(s.momentum),
                     weight_decay=float(s.weight_decay), nesterov=bool(s.nesterov))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupMultiStepLR:
    s = cfg.solver
    return WarmupMultiStepLR(optimizer, milestones=list(s.steps), gamma=float(s.gamma),
                             warmup_iters=int(s.warmup_iters), warmup_factor=float(s.warmup_factor),
                             warmup_method=str(s.warmup_method))


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: "auto" = bf16 on GPU, none on CPU; "bf16"; "off" = none."""
    if mode not in AMP_MODES:
        raise ValueError(f"solver.amp must be one of {AMP_MODES}, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def set_threads(threads: int | None) -> None:
    """torch CPU threads of this process (``None``: leave torch's default)."""
    if threads is not None:
        torch.set_num_threads(int(threads))


def resolve_device(name: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {name!r}")
    return name
