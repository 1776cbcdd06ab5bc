"""``make demo``: the whole toolkit once, on the synthetic mini-Ego4D, on a CPU.

Steps (each a tool run as a subprocess, logs in ``OUT/logs/``): generate the data; train the
VQ2D detector with negative frames; evaluate it on val through the full pipeline (detection
pass, peaks, tracking) on a local pool; write and validate the test submission; build NaQ;
train VSLNet in both NaQ stages (joint NLQ + NaQ, then fine-tune on NLQ); evaluate on val;
write and validate the NLQ submission. Then ``OUT/results.json``, the pictures, a results
table on stdout and ``OUT/README.md``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from episodic.errors import DataError
from episodic.io import read_json
from recipes import nlq_runs, vq2d_runs
from recipes.recipe import DATA_SUMMARY, RecipeRun, run_together
from recipes.report import (PICTURES_DIR, bar_chart, nlq_panels, publish, results_tables, vq2d_panels,
                                     write_readme)
from recipes.steps import StepRunner


def run_vq2d(runner: StepRunner, cfg: Any, *, root: Path, out: Path, data_step: str) -> dict:
    """Train, evaluate on val, write + validate the test submission. Returns M of the detector."""
    settings = vq2d_runs.DetectorSettings.from_config(cfg.vq2d)
    train_dir = out / "vq2d" / "train"
    checkpoint = vq2d_runs.train_detector(runner, "vq2d_train", settings, data_root=root, output_dir=train_dir,
                                          negatives=bool(cfg.vq2d.negatives), seed=int(cfg.seed),
                                          depends=[data_step])
    evaluate = partial(vq2d_runs.evaluate_detector, runner, settings=settings, checkpoint=checkpoint,
                       data_root=root, depends=["vq2d_train"])
    # val and test side by side (configs/demo.yaml parallel): two single-process evaluations share
    # the 2 cores better than one pool after the other (each pool pays its own start-up)
    val_dir, test_dir = run_together(
        [partial(evaluate, "vq2d_eval_val", split="val", output_dir=out / "vq2d" / "eval_val"),
         partial(evaluate, "vq2d_eval_test", split="test_unannotated", output_dir=out / "vq2d" / "eval_test")],
        parallel=bool(cfg.get("parallel", False)))
    submission = publish(test_dir / vq2d_runs.SUBMISSION_FILE, out / "vq2d_submission.json")
    vq2d_runs.validate_submission(runner, "vq2d_validate_submission", submission=submission,
                                  annotations=vq2d_runs.annotations_path(root, "test_unannotated"),
                                  depends=["vq2d_eval_test"])
    vq2d_runs.pick_pictures(val_dir, out / PICTURES_DIR, "vq2d",
                            vq2d_runs.choose_curves([val_dir], int(cfg.pictures.curves)))
    return vq2d_runs.detector_metrics(train_dir, val_dir, vq2d_runs.annotations_path(root, "val"))


def run_baseline(runner: StepRunner, cfg: Any, *, root: Path, out: Path, data_step: str) -> dict:
    """The template-matcher baseline (no training) on val; returns its metrics."""
    baseline = vq2d_runs.template_match(runner, "vq2d_template_match", data_root=root, split="val",
                                        output_dir=out / "vq2d" / "template_match", workers=int(cfg.vq2d.workers),
                                        depends=[data_step])
    return read_json(baseline / vq2d_runs.METRICS_FILE)


def run_side_chain(runner: StepRunner, cfg: Any, **paths) -> tuple[dict, dict]:
    """What does not need the detector: NLQ (R), then the VQ2D baseline (its metrics)."""
    return run_nlq(runner, cfg, **paths), run_baseline(runner, cfg, **paths)


def run_nlq(runner: StepRunner, cfg: Any, *, root: Path, out: Path, data_step: str) -> dict:
    """Build NaQ, train both NaQ stages, evaluate on val, write + validate the submission; returns R."""
    settings = nlq_runs.NLQSettings.from_config(cfg.nlq)
    naq_file = nlq_runs.build_naq(runner, "naq", narrations=nlq_runs.narrations_path(root),
                                  annotations=nlq_runs.annotations_dir(root), out=out / "nlq" / "nlq_naq_train.json",
                                  depends=[data_step])
    checkpoint, step = nlq_runs.train_arm(runner, "nlq", "nlq_naq", settings, data_root=root, output_dir=out / "nlq",
                                          seed=int(cfg.seed), naq_file=naq_file, depends=["naq"])
    val_dir = nlq_runs.evaluate(runner, "nlq_eval_val", settings, checkpoint=checkpoint, data_root=root, split="val",
                                output_dir=out / "nlq" / "eval_val", depends=[step])
    test_dir = nlq_runs.evaluate(runner, "nlq_eval_test", settings, checkpoint=checkpoint, data_root=root,
                                 split="test_unannotated", output_dir=out / "nlq" / "eval_test", depends=[step])
    submission = publish(test_dir / nlq_runs.SUBMISSION_FILE, out / "nlq_submission.json")
    test_annotations = nlq_runs.annotations_dir(root) / "nlq_test_unannotated.json"
    problems = nlq_runs.validate_nlq_submission(submission, test_annotations)
    if problems:
        raise DataError(f"{submission}: invalid NLQ submission ({len(problems)} problems): {problems[:5]}")
    timeline = val_dir / "plots" / "timeline.png"
    if timeline.is_file():
        publish(timeline, out / PICTURES_DIR / "nlq_timeline.png")
    return nlq_runs.nlq_metrics(val_dir)


def run_demo(cfg: Any) -> dict:
    """Run the demo recipe (module docstring) as ``cfg`` (configs/demo.yaml) says; returns
    ``{"vq2d": M, "nlq": R, "seconds": total}`` (also written to OUT/results.json)."""
    run = RecipeRun.begin("demo", cfg)
    # NLQ + baseline on the core that VQ2D training leaves idle (configs/demo.yaml parallel)
    vq2d, (nlq, baseline) = run.side_by_side(partial(run_vq2d, cfg=cfg), partial(run_side_chain, cfg=cfg),
                                             parallel=bool(cfg.get("parallel", False)))
    results = run.finish(vq2d, nlq, vq2d_template_matcher=baseline)
    write_demo_report(cfg, run.out, results, run.runner.timings(), read_json(run.out / DATA_SUMMARY))
    return results


def write_demo_report(cfg: Any, out: Path, results: dict, timings: list, data_summary: dict) -> None:
    """The bar chart, the results table on stdout and OUT/README.md."""
    from recipes.synthetic import format_summary

    runs_vq2d = {"demo (negatives)": results["vq2d"],
                 "template matcher (no training)": results["vq2d_template_matcher"]}
    runs_nlq = {"demo (NLQ + NaQ, 2 stages)": results["nlq"]}
    chart = bar_chart(out / PICTURES_DIR / "metrics.png", [*vq2d_panels(runs_vq2d), *nlq_panels(runs_nlq)],
                      "make demo: headline metrics on the synthetic val split")
    tables = results_tables(runs_vq2d, runs_nlq)
    print(f"\n{tables}\n\ntotal {results['seconds']:.0f} s; outputs in {out} (README.md, results.json)", flush=True)
    pictures = [("Headline metrics", chart.relative_to(out).as_posix())]
    for png in sorted((out / PICTURES_DIR).glob("vq2d_*.png")):
        caption = ("VQ2D false positives: top-scoring detections on frames without the object"
                   if png.stem.endswith("false_positives") else
                   f"VQ2D score curve, peaks, predicted and GT track: query {png.stem.removeprefix('vq2d_curve_')}")
        pictures.append((caption, png.relative_to(out).as_posix()))
    if (out / PICTURES_DIR / "nlq_timeline.png").is_file():
        pictures.append(("NLQ: predicted vs GT windows (val)", f"{PICTURES_DIR}/nlq_timeline.png"))
    summary = [
        "What `make demo` ran, on the synthetic mini-Ego4D (tiny models, CPU):",
        "",
        "1. `tools/make_synthetic.py`: the data set (`data_summary.json`):",
        "",
        "```", format_summary(data_summary), "```",
        "",
        f"2. `tools/train_vq2d.py` ({cfg.vq2d.preset} preset, {cfg.vq2d.max_iter} iterations, negative frames "
        f"{'on' if cfg.vq2d.negatives else 'off'}) -> `vq2d/train/`",
        f"3. `tools/eval_vq2d.py` checkpoint mode on val (detection pass, peaks, tracking; local pool of "
        f"{cfg.vq2d.workers}) "
        "-> `vq2d/eval_val/` (metrics.json, per_query.json, plots/)",
        "4. the same on test_unannotated -> `vq2d_submission.json`, checked by `tools/validate_submission.py`",
        "5. `tools/make_naq.py` -> `nlq/nlq_naq_train.json` (NLQ train + narrations as queries)",
        f"6. `tools/train_nlq.py` {cfg.nlq.model} ({cfg.nlq.preset} preset), stage joint (NLQ + NaQ) then stage "
        f"finetune (NLQ), epochs {dict(cfg.nlq.epochs)} -> `nlq/joint/`, `nlq/finetune/`",
        "7. `tools/eval_nlq.py` on val -> `nlq/eval_val/`; on test_unannotated -> `nlq_submission.json` (validated)",
        "8. `tools/template_match_vq2d.py` on val -> `vq2d/template_match/`: the training-free baseline "
        "(OpenCV template matching) the detector should beat",
        "",
        f"Total wall time: {results['seconds']:.0f} s. Numbers of a tiny model trained for minutes on "
        "synthetic data: they show the pipeline works end to end, not the methods' real accuracy.",
    ]
    write_readme(out / "README.md", title="make demo", summary=summary, tables=tables, pictures=pictures,
                 timings=timings)

