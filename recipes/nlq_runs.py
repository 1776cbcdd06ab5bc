"""The NLQ part of the recipes: build NaQ, train VSLNet/ReLER/SnAG in the stages of an arm, evaluate.

An *arm* is one training recipe of the NaQ paper's comparisons (docs/nlq.md#training-recipe), a sequence of
``tools/train_nlq.py`` stages, each starting from the previous stage's best checkpoint:

* ``nlq_only``: NLQ train only (the baseline);
* ``nlq_naq``: stage 1 joint NLQ + NaQ, stage 2 fine-tune on NLQ;
* ``naq_zero_shot``: NaQ queries only, no NLQ training query.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from episodic.io import read_json
from recipes.steps import StepRunner

ARMS: dict[str, tuple[str, ...]] = {  # arm -> stages of tools/train_nlq.py, in order
    "nlq_only": ("nlq_only",),
    "nlq_naq": ("joint", "finetune"),
    "naq_zero_shot": ("naq_only",),
}
BEST_CHECKPOINT = "model_best.pth"  # tools/train_nlq.py: best epoch by val R@1 IoU0.3
METRICS_FILE = "metrics.json"       # tools/eval_nlq.py, annotated split
SUBMISSION_FILE = "submission.json"  # tools/eval_nlq.py split=test_unannotated
CONFIGS = ("configs/nlq",)  # what the NLQ tools read: an edit there re-runs their steps
METRIC_KEYS = ("R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU", "num_evaluated", "num_gt")


@dataclass(frozen=True)
class NLQSettings:
    """How a recipe trains and evaluates NLQ models."""

    model: str = "vslnet"       # configs/nlq/model/<model>.yaml
    preset: str = "tiny"        # configs/nlq/preset/<preset>.yaml
    epochs: dict = field(default_factory=dict)  # stage -> max_epochs (missing: the preset's)
    train_args: tuple[str, ...] = ()  # extra overrides of tools/train_nlq.py
    eval_args: tuple[str, ...] = ()   # extra overrides of tools/eval_nlq.py
    threads: int | None = None  # torch CPU threads of the NLQ tools (OMP_NUM_THREADS); None: torch's default

    @classmethod
    def from_config(cls, cfg) -> "NLQSettings":
        return cls(model=str(cfg.model), preset=str(cfg.preset), epochs=dict(cfg.get("epochs") or {}),
                   train_args=tuple(cfg.get("train_args") or ()), eval_args=tuple(cfg.get("eval_args") or ()),
                   threads=cfg.get("threads"))

    @classmethod
    def for_model(cls, cfg, model: str) -> "NLQSettings":
        """The settings of ``model`` from a recipe's ``nlq`` config: its ``train_args`` and
        ``epochs`` plus ``per_model[model]``'s (train_args appended, epochs overriding)."""
        base = cls.from_config(cfg)
        extra = (cfg.get("per_model") or {}).get(model) or {}
        return cls(model=str(model), preset=base.preset, epochs={**base.epochs, **dict(extra.get("epochs") or {})},
                   train_args=base.train_args + tuple(extra.get("train_args") or ()), eval_args=base.eval_args,
                   threads=base.threads)

    @property
    def env(self) -> dict:
        """Environment of the NLQ tools (the thread count; they have no config key for it)."""
        return {} if self.threads is None else {"OMP_NUM_THREADS": str(int(self.threads))}


def narrations_path(data_root: str | Path) -> Path:
    return Path(data_root) / "v2" / "narrations" / "egoclip.tsv"


def annotations_dir(data_root: str | Path) -> Path:
    return Path(data_root) / "v2" / "annotations"


# Steps ----------------------------------------------------------------------------------------
def build_naq(runner: StepRunner, name: str, *, narrations: Path, annotations: Path, out: Path,
              depends: Sequence[str] = ()) -> Path:
    """Step ``name``: tools/make_naq.py (NLQ train of ``annotations`` + NaQ) into ``out``."""
    runner.tool(name, "make_naq.py", [f"narrations={narrations}", f"annotations_dir={annotations}", f"out={out}"],
                outputs=[out], depends=depends)
    return out


def train_arm(runner: StepRunner, name: str, arm: str, settings: NLQSettings, *, data_root: Path,
              output_dir: Path, seed: int, naq_file: Path | None = None, train_file: Path | None = None,
              depends: Sequence[str] = ()) -> tuple[Path, str]:
    """Steps ``<name>_<stage>``: the stages of ``arm`` into ``output_dir/<stage>``; returns the
    last stage's best checkpoint and step name. naq_file: the NLQ + NaQ file of the NaQ stages;
    train_file: the NLQ train file of the NLQ stages (None: the data root's nlq_train.json)."""
    if arm not in ARMS:
        raise ValueError(f"unknown NLQ arm {arm!r}; expected one of {sorted(ARMS)}")
    init, step, depends = None, "", list(depends)
    for stage in ARMS[arm]:
        out = output_dir / stage
        args = [f"preset={settings.preset}", f"model={settings.model}", f"stage={stage}", f"data.root={data_root}",
                f"output_dir={out}", f"seed={seed}"]
        if stage in settings.epochs:
            args.append(f"max_epochs={int(settings.epochs[stage])}")
        if init is not None:
            args.append(f"init={init}")
        if naq_file is not None:
            args.append(f"naq_file={naq_file}")
        if train_file is not None:
            args.append(f"data.train_file={Path(train_file).resolve()}")
        args.extend(settings.train_args)
        init, step = out / BEST_CHECKPOINT, f"{name}_{stage}"
        runner.tool(step, "train_nlq.py", args, outputs=[init], depends=depends, clean=out, env=settings.env,
                    watch=CONFIGS)
        depends = [*depends, step]
    return init, step


def evaluate(runner: StepRunner, name: str, settings: NLQSettings, *, checkpoint: Path, data_root: Path,
             split: str, output_dir: Path, depends: Sequence[str] = ()) -> Path:
    """Step ``name``: tools/eval_nlq.py (checkpoint mode) on ``split``; returns ``output_dir``."""
    made = SUBMISSION_FILE if split == "test_unannotated" else METRICS_FILE
    runner.tool(name, "eval_nlq.py", [f"checkpoint={checkpoint}", f"data.root={data_root}", f"split={split}",
                                      f"output_dir={output_dir}", *settings.eval_args],
                outputs=[output_dir / made], depends=depends, clean=output_dir, env=settings.env, watch=CONFIGS)
    return output_dir


# Metrics ----------------------------------------------------------------------------------------
def nlq_metrics(eval_dir: Path) -> dict:
    """R of the results files: the eval tool's metrics (recall in percent, mIoU, counts)."""
    found = read_json(Path(eval_dir) / METRICS_FILE)
    return {k: found[k] for k in METRIC_KEYS if k in found}


def validate_nlq_submission(submission: Path, annotations: Path) -> list[str]:
    """Problems of an NLQ challenge submission against its annotation file (empty: valid)."""
    from nlq.data.annotations import load_nlq_annotations
    from nlq.evaluation.submission import validate_submission

    return validate_submission(read_json(submission), load_nlq_annotations(annotations))
