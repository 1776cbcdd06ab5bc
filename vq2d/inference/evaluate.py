"""Checkpoint mode of ``tools/eval_vq2d.py``: checkpoint -> detection pass -> peaks ->
tracking (on a pool of workers, resumable) -> predictions file -> scores of THAT file.

    python tools/eval_vq2d.py checkpoint=C data.root=DIR split=val output_dir=OUT workers=2

Released-detections mode: ``detections=DIR`` (the ``vq2d_detections`` release of the EGO4D
baseline) instead of ``checkpoint``: no model, peaks + tracking only
(:mod:`vq2d.inference.released_detections`). ``max_clips=N``: the first N clips of the split
only (their queries are the ones scored).

Outputs in OUT: ``predictions.json`` (annotated splits) or ``submission.json`` (validated;
test_unannotated), ``metrics.json`` (+ search efficiency), ``per_query.csv``,
``per_query.json`` (diagnostics and errors), ``plots/``, ``log.txt``, the merged config
``eval_vq2d_config.yaml``, and the resumable intermediate results ``clips/`` and
``detections/`` (see :mod:`vq2d.inference.pool`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from episodic.config import save_config, to_container
from episodic.errors import DataError
from episodic.logging import setup_logging
from vq2d.data.annotations import VQAnnotationFile, load_vq_annotations
from vq2d.evaluation.scoring import CONFIG_FILE, default_annotations_path
from vq2d.inference.checkpoint_io import checkpoint_identity
from vq2d.inference.pool import collect_outcomes, run_pool
from vq2d.inference.released_detections import check_released_folder, released_identity
from vq2d.inference.report import write_reports

logger = logging.getLogger(__name__)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_data_paths(cfg: Any, need_frames: bool = True) -> dict:
    """``{"annotations", "clips_dir", "cache_root"}``: absolute paths from the config keys
    ``annotations``, ``split`` and ``data`` (root, clips_dir, cache_root; see
    configs/vq2d/eval.yaml); ``cache_root`` is None when there is no frame cache. DataError
    when a given cache folder is missing or, with ``need_frames``, when there is neither a
    clip folder nor a frame cache."""
    root = Path(cfg.data.root)
    if cfg.data.cache_root is not None and not Path(cfg.data.cache_root).is_dir():
        raise DataError(f"{cfg.data.cache_root}: frame cache folder (data.cache_root) not found")
    cache_root = Path(cfg.data.cache_root if cfg.data.cache_root is not None else root / "frame_cache")
    clips_dir = Path(cfg.data.clips_dir or root / "v2" / "clips")
    if need_frames and not clips_dir.is_dir() and not cache_root.is_dir():
        raise DataError(f"{clips_dir}: clip folder not found (and no frame cache at {cache_root})")
    return {
        "annotations": str(Path(cfg.annotations or default_annotations_path(root, cfg.split)).resolve()),
        "clips_dir": str(clips_dir.resolve()),
        "cache_root": str(cache_root.resolve()) if cache_root.is_dir() else None,
    }


def resolve_settings(cfg: Any) -> dict:
    """The plain settings dict every worker gets: the config with every derived value
    (absolute paths, defaults that depend on the machine or the launcher) filled in."""
    if not cfg.output_dir:
        raise DataError("checkpoint mode needs output_dir=<folder for predictions, metrics and plots>")
    released = cfg.get("detections")
    if released is not None:
        released = Path(released).resolve()
        if not released.is_dir():
            raise DataError(f"{released}: released detections folder (detections=...) not found")
        checkpoint, checkpoint_id = None, released_identity(released)
    else:
        checkpoint = Path(cfg.checkpoint).resolve()
        if not checkpoint.is_file():
            raise DataError(f"{checkpoint}: checkpoint not found")
        checkpoint_id = checkpoint_identity(checkpoint)
    max_clips = cfg.get("max_clips")
    if max_clips is not None and int(max_clips) < 1:
        raise DataError(f"max_clips must be >= 1 (or null for all), got {max_clips}")
    launcher = to_container(cfg.launcher)
    workers = int(cfg.workers)
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    gpus = cfg.gpus_per_worker
    if gpus is None:
        gpus = 0 if str(cfg.device) == "cpu" else int(launcher["executor"] == "slurm" or _cuda_available())
    threads = cfg.threads_per_worker
    if threads is None:
        threads = (launcher.get("cpus_per_task") or 1) if launcher["executor"] == "slurm" else \
            max(1, (os.cpu_count() or 1) // workers)
    settings = {
        **resolve_data_paths(cfg, need_frames=released is None),
        "output_dir": str(Path(cfg.output_dir).resolve()),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_id": checkpoint_id,
        "detections": None if released is None else str(released),
        "max_clips": None if max_clips is None else int(max_clips),
        "model": to_container(cfg.get("model")),
        "device": str(cfg.device),
        "workers": workers,
        "gpus_per_worker": int(gpus),
        "threads_per_worker": int(threads),
        "resume": bool(cfg.resume),
        "detection": to_container(cfg.detection),
        "peaks": to_container(cfg.peaks),
        "tracking": to_container(cfg.tracking),
        "plots": to_container(cfg.plots),
        "launcher": {**launcher, "folder": str(Path(launcher["folder"]).resolve())},
    }
    return settings


def first_clips(annotations: VQAnnotationFile, n: int) -> VQAnnotationFile:
    """``annotations`` cut to its first ``n`` clips that hold a valid query (file order)."""
    keep: list[str] = []
    for q in annotations.queries():
        if q.clip_uid not in keep:
            keep.append(q.clip_uid)
    keep_set = set(keep[:n])
    videos = [replace(v, clips=[c for c in v.clips if c.clip_uid in keep_set]) for v in annotations.videos]
    return replace(annotations, videos=[v for v in videos if v.clips])


def load_split(path: str | os.PathLike, max_clips: int | None = None) -> VQAnnotationFile:
    """The annotation file at ``path``, loaded leniently (each malformed query set skipped
    with a warning), cut to its first ``max_clips`` clips when given. DataError when no
    valid query is left."""
    annotations = load_vq_annotations(path, strict=False)
    for problem in annotations.problems:
        logger.warning("skipping a malformed query set: %s", problem)
    if max_clips is not None:
        annotations = first_clips(annotations, max_clips)
    if not annotations.queries():
        raise DataError(f"{path}: no valid query set to answer")
    return annotations


def evaluate_checkpoint(cfg: Any) -> dict:
    """Run the whole checkpoint mode (see module docstring); returns the metrics."""
    settings = resolve_settings(cfg)
    out = Path(settings["output_dir"])
    setup_logging(out)
    save_config(cfg, out, name=CONFIG_FILE)
    annotations = load_split(settings["annotations"], settings["max_clips"])
    queries = annotations.queries()
    if settings["detections"] is not None:
        found = check_released_folder(settings["detections"], queries)
        logger.info("%s: released detections for %d of %d queries", settings["detections"], found, len(queries))
    logger.info("%s: %d queries in %d clips; %s; %d worker(s) (%s)", settings["annotations"],
                len(queries), len({q.clip_uid for q in queries}),
                f"checkpoint {settings['checkpoint']}" if settings["checkpoint"] else
                f"released detections {settings['detections']}", settings["workers"],
                settings["launcher"]["executor"])
    run_pool(settings, annotations)
    outcomes = collect_outcomes(out, queries, settings)
    return write_reports(settings, annotations, outcomes)
