"""Checkpoint mode of ``tools/eval_vq2d.py``: checkpoint -> detection pass -> peaks ->
tracking (on a pool of workers, resumable) -> predictions file -> scores of THAT file.

    python tools/eval_vq2d.py checkpoint=C data.root=DIR split=val output_dir=OUT workers=2

Outputs in OUT: ``predictions.json`` (annotated splits) or ``submission.json`` (validated;
test_unannotated), ``metrics.json`` (+ search efficiency), ``per_query.csv``,
``per_query.json`` (diagnostics and errors), ``plots/``, ``log.txt``, the merged config
``eval_vq2d_config.yaml``, and the resumable intermediate results ``clips/`` and
``detections/`` (see :mod:`vq2d.inference.pool`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from episodic.config import save_config, to_container
from episodic.errors import DataError
from episodic.logging import setup_logging
from vq2d.data.annotations import load_vq_annotations
from vq2d.evaluation.scoring import CONFIG_FILE, default_annotations_path
from vq2d.inference.checkpoint_io import checkpoint_identity
from vq2d.inference.pool import collect_outcomes, run_pool
from vq2d.inference.report import write_reports

logger = logging.getLogger(__name__)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_settings(cfg: Any) -> dict:
    """The plain settings dict every worker gets: the config with every derived value
    (absolute paths, defaults that depend on the machine or the launcher) filled in."""
    if not cfg.output_dir:
        raise DataError("checkpoint mode needs output_dir=<folder for predictions, metrics and plots>")
    checkpoint = Path(cfg.checkpoint).resolve()
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint not found")
    root = Path(cfg.data.root)
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
    if cfg.data.cache_root is not None and not Path(cfg.data.cache_root).is_dir():
        raise DataError(f"{cfg.data.cache_root}: frame cache folder (data.cache_root) not found")
    cache_root = Path(cfg.data.cache_root if cfg.data.cache_root is not None else root / "frame_cache")
    clips_dir = Path(cfg.data.clips_dir or root / "v2" / "clips")
    if not clips_dir.is_dir() and not cache_root.is_dir():
        raise DataError(f"{clips_dir}: clip folder not found (and no frame cache at {cache_root})")
    settings = {
        "annotations": str(Path(cfg.annotations or default_annotations_path(root, cfg.split)).resolve()),
        "clips_dir": str(clips_dir.resolve()),
        "cache_root": str(cache_root.resolve()) if cache_root.is_dir() else None,
        "output_dir": str(Path(cfg.output_dir).resolve()),
        "checkpoint": str(checkpoint),
        "checkpoint_id": checkpoint_identity(checkpoint),
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


def evaluate_checkpoint(cfg: Any) -> dict:
    """Run the whole checkpoint mode (see module docstring); returns the metrics."""
    settings = resolve_settings(cfg)
    out = Path(settings["output_dir"])
    setup_logging(out)
    save_config(cfg, out, name=CONFIG_FILE)
    annotations = load_vq_annotations(settings["annotations"], strict=False)
    for problem in annotations.problems:
        logger.warning("skipping a malformed query set: %s", problem)
    queries = annotations.queries()
    if not queries:
        raise DataError(f"{settings['annotations']}: no valid query set to answer")
    logger.info("%s: %d queries in %d clips; checkpoint %s; %d worker(s) (%s)", settings["annotations"],
                len(queries), len({q.clip_uid for q in queries}), settings["checkpoint"], settings["workers"],
                settings["launcher"]["executor"])
    run_pool(settings, annotations)
    outcomes = collect_outcomes(out, queries, settings)
    return write_reports(settings, annotations, outcomes)
