"""The VQ2D part of the recipes: train a detector, evaluate it through the full pipeline,
and gather its metrics (the eval tool's, the trainer's frame AP, the background peak score).

Every function that runs something takes the recipe's :class:`~recipes.steps.StepRunner`
and returns paths; the metric readers are plain functions over the tools' output files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from episodic.io import read_json
from recipes.report import publish
from recipes.steps import StepRunner

METRICS_FILE = "metrics.json"            # tools/eval_vq2d.py, checkpoint mode
PER_QUERY_FILE = "per_query.json"        # tools/eval_vq2d.py: per-query diagnostics (stiou, ...)
SUBMISSION_FILE = "submission.json"      # tools/eval_vq2d.py split=test_unannotated
DETECTION_AP_FILE = "detection_ap.json"  # tools/train_vq2d.py: frame-level AP on val (percent)
CHECKPOINT_FILE = "model_final.pth"      # tools/train_vq2d.py
# What each VQ2D tool reads (its config file and the groups it composes): an edit there re-runs
# its steps, an edit elsewhere does not (a new inference default does not re-train a detector).
TRAIN_CONFIGS = ("configs/vq2d/train.yaml", "configs/vq2d/model", "configs/vq2d/preset", "configs/vq2d/launcher")
EVAL_CONFIGS = ("configs/vq2d/eval.yaml", "configs/vq2d/published", "configs/vq2d/model", "configs/vq2d/launcher")
MATCH_CONFIGS = ("configs/vq2d/template_match.yaml",)


@dataclass(frozen=True)
class DetectorSettings:
    """How a recipe trains and evaluates one detector."""

    preset: str = "tiny"          # configs/vq2d/preset/<preset>.yaml
    max_iter: int = 300           # training iterations
    workers: int = 2              # evaluation pool size (local submitit processes)
    train_args: tuple[str, ...] = ()  # extra overrides of tools/train_vq2d.py
    eval_args: tuple[str, ...] = ()   # extra overrides of tools/eval_vq2d.py

    @classmethod
    def from_config(cls, cfg) -> "DetectorSettings":
        return cls(preset=str(cfg.preset), max_iter=int(cfg.max_iter), workers=int(cfg.workers),
                   train_args=tuple(cfg.get("train_args") or ()), eval_args=tuple(cfg.get("eval_args") or ()))


def annotations_path(data_root: str | Path, split: str) -> Path:
    return Path(data_root) / "v2" / "annotations" / f"vq_{split}.json"


# Steps ----------------------------------------------------------------------------------------
def train_detector(runner: StepRunner, name: str, settings: DetectorSettings, *, data_root: Path,
                   output_dir: Path, negatives: bool, seed: int, depends: Sequence[str] = ()) -> Path:
    """Step ``name``: tools/train_vq2d.py into ``output_dir``; returns the final checkpoint."""
    args = [f"preset={settings.preset}", f"data.root={data_root}", f"output_dir={output_dir}",
            f"max_iter={settings.max_iter}", f"negatives={str(negatives).lower()}", f"seed={seed}",
            *settings.train_args]
    checkpoint = output_dir / CHECKPOINT_FILE
    runner.tool(name, "train_vq2d.py", args, outputs=[checkpoint, output_dir / DETECTION_AP_FILE],
                depends=depends, clean=output_dir, watch=TRAIN_CONFIGS)
    return checkpoint


def evaluate_detector(runner: StepRunner, name: str, settings: DetectorSettings, *, checkpoint: Path,
                      data_root: Path, split: str, output_dir: Path, depends: Sequence[str] = ()) -> Path:
    """Step ``name``: tools/eval_vq2d.py (checkpoint mode) on ``split``; returns ``output_dir``."""
    args = [f"checkpoint={checkpoint}", f"data.root={data_root}", f"split={split}", f"output_dir={output_dir}",
            f"workers={settings.workers}", *settings.eval_args]
    made = SUBMISSION_FILE if split == "test_unannotated" else METRICS_FILE
    runner.tool(name, "eval_vq2d.py", args, outputs=[output_dir / made], depends=depends, clean=output_dir,
                watch=EVAL_CONFIGS)
    return output_dir


def template_match(runner: StepRunner, name: str, *, data_root: Path, split: str, output_dir: Path, workers: int,
                   depends: Sequence[str] = ()) -> Path:
    """Step ``name``: tools/template_match_vq2d.py, the training-free baseline
    (docs/vq2d.md#template-matcher-baseline), on ``split``; returns ``output_dir``."""
    args = [f"data.root={data_root}", f"split={split}", f"output_dir={output_dir}", f"workers={workers}"]
    runner.tool(name, "template_match_vq2d.py", args, outputs=[output_dir / METRICS_FILE], depends=depends,
                clean=output_dir, watch=MATCH_CONFIGS)
    return output_dir


def validate_submission(runner: StepRunner, name: str, *, annotations: Path, submission: Path,
                        depends: Sequence[str] = ()) -> None:
    """Step ``name``: tools/validate_submission.py (fails the recipe when the file is invalid)."""
    runner.tool(name, "validate_submission.py", [f"annotations={annotations}", f"submission={submission}"],
                depends=depends)


# Metrics --------------------------------------------------------------------------------------
def frame_ap(train_dir: Path) -> dict:
    """The trainer's frame-level detection AP on val (percent, as detection_ap.json holds it):
    ap_pos / ap_posneg = COCO AP on positive frames / on positive + negative frames, and the
    AP50 of both."""
    found = read_json(Path(train_dir) / DETECTION_AP_FILE)
    return {"ap_pos": found["positive"]["AP"], "ap_posneg": found["positive_negative"]["AP"],
            "ap50_pos": found["positive"]["AP50"], "ap50_posneg": found["positive_negative"]["AP50"],
            "ap_frames": {"positive": found.get("num_positive_frames"),
                          "negative": found.get("num_negative_frames")}}


def peak_scores(eval_dir: Path, annotations: Path) -> dict:
    """From the evaluation's cached per-query detections (``eval_dir/detections/``):

    bg_peak_score: mean over queries of the highest detection score on search-window frames
    (0 .. query_frame-1) outside the GT response track (the object is not there);
    gt_peak_score: the same on the response-track frames (the object is there);
    bg_queries: queries counted (with a detection file and at least one background frame).
    """
    from vq2d.data.annotations import load_vq_annotations
    from vq2d.inference.detection_pass import QueryDetections
    from vq2d.inference.pipeline import detection_path
    from vq2d.inference.pool import DETECTIONS_DIR

    background, on_track = [], []
    for query in load_vq_annotations(annotations, strict=False).queries():
        path = detection_path(Path(eval_dir) / DETECTIONS_DIR, query)
        if not query.response_track or not path.is_file():
            continue
        curve = QueryDetections.load(path)[0].score_curve()  # [T] best score per searched frame
        in_track = np.zeros(len(curve), dtype=bool)
        frames = [b.frame_number for b in query.response_track if 0 <= b.frame_number < len(curve)]
        in_track[frames] = True
        if (~in_track).any():
            background.append(float(curve[~in_track].max()))
        if in_track.any():
            on_track.append(float(curve[in_track].max()))
    return {"bg_peak_score": float(np.mean(background)) if background else None,
            "gt_peak_score": float(np.mean(on_track)) if on_track else None,
            "bg_queries": len(background)}


def detector_metrics(train_dir: Path, eval_dir: Path, annotations: Path) -> dict:
    """M of the results files: the eval tool's metrics + frame AP + peak scores."""
    metrics = dict(read_json(Path(eval_dir) / METRICS_FILE))
    metrics.update(frame_ap(train_dir))
    metrics.update(peak_scores(eval_dir, annotations))
    return metrics


# Pictures -------------------------------------------------------------------------------------
def choose_curves(eval_dirs: Sequence[Path], num: int) -> list[str]:
    """Up to ``num`` queries whose score curve the eval tool drew (``plots/curves/``) in every
    one of ``eval_dirs``: the best- and the worst-localised first (by the highest stIoU over
    the runs, from per_query.json), then the others in order."""
    drawn = [[p.stem for p in sorted((Path(d) / "plots" / "curves").glob("*.png"))] for d in eval_dirs]
    names = [n for n in drawn[0] if all(n in other for other in drawn[1:])] if drawn else []
    stiou: dict[str, float] = {}
    for d in eval_dirs:
        if (Path(d) / PER_QUERY_FILE).is_file():
            for row in read_json(Path(d) / PER_QUERY_FILE):
                stiou[row["name"]] = max(stiou.get(row["name"], 0.0), row.get("stiou") or 0.0)
    ranked = sorted(names, key=lambda n: -stiou.get(n, 0.0))
    first = list(dict.fromkeys(ranked[:1] + ranked[-1:]))
    return (first + [n for n in names if n not in first])[:num]


def pick_pictures(eval_dir: Path, dest: Path, prefix: str, curves: Sequence[str]) -> list[tuple[str, Path]]:
    """Copy the false-positive gallery and the score curves of queries ``curves`` from
    ``eval_dir/plots`` to ``dest`` (file names start with ``prefix``). Returns (what, path) per
    copied file, what = "false_positives" or the query name."""
    plots = Path(eval_dir) / "plots"
    copied = []
    gallery = plots / "false_positives.png"
    if gallery.is_file():
        copied.append(("false_positives", publish(gallery, dest / f"{prefix}_false_positives.png")))
    for name in curves:
        if (plots / "curves" / f"{name}.png").is_file():
            copied.append((name, publish(plots / "curves" / f"{name}.png", dest / f"{prefix}_curve_{name}.png")))
    return copied
