"""``make reproduce``: the two seed papers' findings, measured on the synthetic val split.

* VQ2D (negative frames, docs/vq2d.md#negative-frames): the detector trained with and without negative
  frames, each evaluated through the full pipeline: frame AP on positive-only and on
  positive + negative frames, the mean best score on frames without the object, stAP, tAP,
  success, recovery.
* NLQ (NaQ, docs/nlq.md#training-recipe): the ablation model (VSLNet) trained on NLQ only, on NLQ + NaQ
  (joint then fine-tune), on NaQ only (zero-shot), and NLQ only vs NLQ + NaQ with a small NLQ train
  split (few-shot); every model of ``nlq.models`` (VSLNet, ReLER, SnAG: docs/nlq.md#snag) on NLQ only
  and NLQ + NaQ with the same data and seeds, side by side in one table.

Every run is repeated for each seed of the config; results.json holds the mean over seeds
(plus the seeds and the per-seed numbers), README.md the tables, whether each paper effect
shows, and the pictures. Numbers are reported as they come out.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from episodic.io import atomic_write_json
from recipes import nlq_runs, vq2d_runs
from recipes.fewshot import NLQ_TRAIN, write_fewshot_annotations
from recipes.report import (NLQ_COLUMNS, PICTURES_DIR, VQ2D_COLUMNS, bar_chart, format_table, nlq_panels,
                                     publish, results_tables, vq2d_panels, write_readme)
from recipes.recipe import RecipeRun
from recipes.steps import StepRunner

VQ2D_VARIANTS = {"negatives": True, "no_negatives": False}  # results key -> negatives=
NLQ_RUNS = {  # results key -> (arm, few-shot NLQ train split)
    "nlq_only": ("nlq_only", False),
    "nlq_naq": ("nlq_naq", False),
    "naq_zero_shot": ("naq_zero_shot", False),
    "fewshot_nlq_only": ("nlq_only", True),
    "fewshot_nlq_naq": ("nlq_naq", True),
}
MODEL_RUNS = {"nlq_only": "NLQ only", "nlq_naq": "NLQ + NaQ"}  # arms run for every model of nlq.models
MODEL_NAMES = {"vslnet": "VSLNet", "reler": "ReLER", "snag": "SnAG"}
FINDINGS_FILE = "findings.json"


def run_key(model: str, arm: str, ablation: str) -> str:
    """results["nlq"] key of ``model``'s ``arm``: the ablation model's as before (``nlq_only``), others
    prefixed (``snag_nlq_only``)."""
    return arm if model == ablation else f"{model}_{arm}"


def model_rows(nlq: Mapping[str, Mapping], ablation: str) -> dict:
    """The NLQ only / NLQ + NaQ runs of every model found in ``nlq``, as table rows "<Model> <arm>"."""
    rows = {}
    for model, name in MODEL_NAMES.items():
        for arm, label in MODEL_RUNS.items():
            key = run_key(model, arm, ablation)
            if key in nlq:
                rows[f"{name} {label}"] = nlq[key]
    return rows


def mean_over_seeds(per_seed: Mapping[int, Mapping]) -> dict:
    """The metrics averaged over seeds (a number missing in some seed: None; other values:
    the first seed's), plus ``seeds`` and ``per_seed`` ({seed: metrics})."""
    runs = list(per_seed.values())
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        numbers = [v for v in (r.get(key) for r in runs) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(runs):
            out[key] = float(np.mean(numbers))
        else:
            out[key] = None if numbers else first
    out["seeds"] = [int(s) for s in per_seed]
    out["per_seed"] = {str(s): dict(m) for s, m in per_seed.items()}
    return out


# VQ2D -------------------------------------------------------------------------------------------
def run_vq2d(runner: StepRunner, cfg: Any, *, root: Path, out: Path, data_step: str) -> tuple[dict, dict]:
    """Both detectors for every seed; returns ({variant: M}, {variant: first seed's eval dir})."""
    settings = vq2d_runs.DetectorSettings.from_config(cfg.vq2d)
    val = vq2d_runs.annotations_path(root, "val")
    results, eval_dirs = {}, {}
    for variant, negatives in VQ2D_VARIANTS.items():
        per_seed = {}
        for seed in cfg.vq2d.seeds:
            base, name = out / "vq2d" / variant / f"seed{seed}", f"vq2d_{variant}_s{seed}"
            checkpoint = vq2d_runs.train_detector(runner, f"{name}_train", settings, data_root=root,
                                                  output_dir=base / "train", negatives=negatives, seed=int(seed),
                                                  depends=[data_step])
            eval_dir = vq2d_runs.evaluate_detector(runner, f"{name}_eval", settings, checkpoint=checkpoint,
                                                   data_root=root, split="val", output_dir=base / "eval_val",
                                                   depends=[f"{name}_train"])
            per_seed[int(seed)] = vq2d_runs.detector_metrics(base / "train", eval_dir, val)
            eval_dirs.setdefault(variant, eval_dir)
        results[variant] = mean_over_seeds(per_seed)
    return results, eval_dirs


# NLQ --------------------------------------------------------------------------------------------
def prepare_nlq_data(runner: StepRunner, cfg: Any, *, root: Path, out: Path, data_step: str) -> dict:
    """The NaQ files (full and few-shot) and the few-shot NLQ train file; returns
    {"naq", "fewshot_naq", "fewshot_train": paths}."""
    fewshot_dir = out / "nlq" / "fewshot_annotations"
    fraction, fs_seed = float(cfg.nlq.fewshot.fraction), int(cfg.nlq.fewshot.seed)
    unit = str(cfg.nlq.fewshot.get("unit", "clip"))  # clip: NaQ's clip-list subsets
    naq = nlq_runs.build_naq(runner, "naq", narrations=nlq_runs.narrations_path(root),
                             annotations=nlq_runs.annotations_dir(root), out=out / "nlq" / "nlq_naq_train.json",
                             depends=[data_step])
    runner.call("fewshot_split",
                lambda: write_fewshot_annotations(nlq_runs.annotations_dir(root), fewshot_dir, fraction, fs_seed, unit),
                key=[root, fraction, fs_seed, unit], outputs=[fewshot_dir / NLQ_TRAIN], depends=[data_step])
    fewshot_naq = nlq_runs.build_naq(runner, "fewshot_naq", narrations=nlq_runs.narrations_path(root),
                                     annotations=fewshot_dir, out=out / "nlq" / "fewshot_nlq_naq_train.json",
                                     depends=["fewshot_split"])
    return {"naq": naq, "fewshot_naq": fewshot_naq, "fewshot_train": fewshot_dir / NLQ_TRAIN}


def run_nlq(runner: StepRunner, cfg: Any, *, root: Path, out: Path, data_step: str) -> tuple[dict, dict]:
    """Every NLQ run for every seed; returns ({run: R}, {run: first seed's eval dir})."""
    files = prepare_nlq_data(runner, cfg, root=root, out=out, data_step=data_step)
    ablation = str(cfg.nlq.model)
    full = nlq_runs.NLQSettings.for_model(cfg.nlq, ablation)
    fewshot = dataclasses.replace(full, epochs={**full.epochs, **dict(cfg.nlq.fewshot.get("epochs") or {})})
    seeds = [int(s) for s in cfg.nlq.seeds]
    ablation_seeds = [int(s) for s in (cfg.nlq.get("ablation_seeds") or seeds)]
    runs = [(key, arm, fewshot if is_fewshot else full, is_fewshot, seeds if key in MODEL_RUNS else ablation_seeds)
            for key, (arm, is_fewshot) in NLQ_RUNS.items()]
    for model in cfg.nlq.get("models") or ():
        if str(model) != ablation:
            settings = nlq_runs.NLQSettings.for_model(cfg.nlq, str(model))
            runs += [(run_key(str(model), arm, ablation), arm, settings, False, seeds) for arm in MODEL_RUNS]
    results, eval_dirs = {}, {}
    for key, arm, settings, is_fewshot, run_seeds in runs:
        naq_file = files["fewshot_naq"] if is_fewshot else files["naq"]
        depends = [data_step, "fewshot_split", "fewshot_naq"] if is_fewshot else [data_step, "naq"]
        per_seed = {}
        for seed in run_seeds:
            base, name = out / "nlq" / key / f"seed{seed}", f"nlq_{key}_s{seed}"
            checkpoint, last = nlq_runs.train_arm(
                runner, name, arm, settings, data_root=root, output_dir=base, seed=seed, naq_file=naq_file,
                train_file=files["fewshot_train"] if is_fewshot else None, depends=depends)
            eval_dir = nlq_runs.evaluate(runner, f"{name}_eval", settings, checkpoint=checkpoint, data_root=root,
                                         split="val", output_dir=base / "eval_val", depends=[last])
            per_seed[seed] = nlq_runs.nlq_metrics(eval_dir)
            eval_dirs.setdefault(key, eval_dir)
        results[key] = mean_over_seeds(per_seed)
    return results, eval_dirs


# Findings ---------------------------------------------------------------------------------------
def _shows(delta: float | None, before: float | None, direction: str) -> bool | None:
    """Whether a measured change has the paper's direction: "up", "down", or "same" (within
    10% of the value before, relative: the paper's 0.7 points are 2.6% of AP 27, while a
    from-scratch detector's AP can be 2). Changes below 1e-6 count as no change."""
    if delta is None:
        return None
    if direction == "same":
        return abs(delta) <= max(1e-6, 0.1 * abs(before or 0.0))
    return delta > 1e-6 if direction == "up" else delta < -1e-6


def seed_spread(run: Mapping, metric: str) -> float | None:
    """Standard deviation of ``metric`` over a run's seeds (None with one seed)."""
    values = [m.get(metric) for m in (run.get("per_seed") or {}).values()]
    values = [v for v in values if isinstance(v, (int, float))]
    return float(np.std(values)) if len(values) > 1 else None


def _finding(claim: str, paper: str, runs: tuple[str, str], metric: str, results: Mapping, direction: str) -> dict:
    """One paper effect: ``metric`` of run ``runs[1]`` vs run ``runs[0]``; ``beyond_spread``:
    the change exceeds the mean seed-to-seed standard deviation of the two runs."""
    before, after = results[runs[0]].get(metric), results[runs[1]].get(metric)
    delta = None if before is None or after is None else after - before
    spreads = [seed_spread(results[r], metric) for r in runs]
    spread = None if None in spreads else float(np.mean(spreads))
    return {"claim": claim, "paper": paper, "metric": metric, "from": runs[0], "to": runs[1], "before": before,
            "after": after, "delta": delta, "shows": _shows(delta, before, direction), "seed_spread": spread,
            "beyond_spread": None if spread is None or delta is None else abs(delta) > spread}


def findings(results: Mapping, ablation: str = "vslnet") -> list[dict]:
    """The seed papers' effects (docs/vq2d.md#negative-frames and docs/nlq.md#training-recipe) and whether the
    synthetic runs show them; with the other models' runs (``<model>_nlq_only`` ...), the NaQ gain of each
    and whether SnAG + NaQ beats the others + NaQ (docs/nlq.md#snag)."""
    vq, nlq = results["vq2d"], results["nlq"]
    neg = ("no_negatives", "negatives")
    out = [
        _finding("negatives raise frame AP on positive + negative frames", "25.95 -> 31.98", neg, "ap_posneg", vq,
                 "up"),
        _finding("negatives lower the best score on frames without the object", "the mechanism", neg,
                 "bg_peak_score", vq, "down"),
        _finding("frame AP on positive frames stays about the same", "26.99 -> 26.28", neg, "ap_pos", vq, "same"),
        _finding("negatives raise stAP@0.25", "0.14 -> 0.15", neg, "stAP@0.25", vq, "up"),
        _finding("negatives raise tAP@0.25", "0.21 -> 0.22", neg, "tAP@0.25", vq, "up"),
        _finding("negatives raise success", "improved baseline 43.24 -> 47.90", neg, "success", vq, "up"),
        _finding("negatives raise recovery", "improved baseline 32.92 -> 37.88", neg, "recovery", vq, "up"),
    ]
    gains = {}
    for metric in ("R@1_IoU0.3", "R@5_IoU0.3", "mIoU"):
        full = _finding("NLQ + NaQ beats NLQ only", "VSLNet gains at every metric", ("nlq_only", "nlq_naq"),
                        metric, nlq, "up")
        few = _finding("few-shot: NLQ + NaQ beats NLQ only", "gains grow as NLQ data shrinks",
                       ("fewshot_nlq_only", "fewshot_nlq_naq"), metric, nlq, "up")
        out += [full, few]
        gains[metric] = (full["delta"], few["delta"])
    full_gain, few_gain = gains["R@1_IoU0.3"]
    delta = None if full_gain is None or few_gain is None else few_gain - full_gain
    out.append({"claim": "the NaQ gain is larger with the few-shot NLQ split", "paper": "yes",
                "metric": "R@1_IoU0.3 gain", "from": "full", "to": "few-shot", "before": full_gain,
                "after": few_gain, "delta": delta, "shows": _shows(delta, full_gain, "up")})
    zero = nlq["naq_zero_shot"].get("R@1_IoU0.3")
    out.append({"claim": "NaQ alone (zero-shot) gives non-trivial recall", "paper": "yes", "metric": "R@1_IoU0.3",
                "from": "-", "to": "naq_zero_shot", "before": None, "after": zero, "delta": None,
                "shows": None if zero is None else zero > 0})
    for model, name in MODEL_NAMES.items():
        runs = (run_key(model, "nlq_only", ablation), run_key(model, "nlq_naq", ablation))
        if model != ablation and all(r in nlq for r in runs):
            out += [_finding(f"{name}: NLQ + NaQ beats NLQ only", "NaQ gains for every model", runs, metric, nlq, "up")
                    for metric in ("R@1_IoU0.3", "R@5_IoU0.3", "mIoU")]
    snag = run_key("snag", "nlq_naq", ablation)
    for model, name in MODEL_NAMES.items():
        other = run_key(model, "nlq_naq", ablation)
        if model != "snag" and snag in nlq and other in nlq:
            out += [_finding(f"SnAG + NaQ beats {name} + NaQ", "single-stage models lead Ego4D NLQ", (other, snag),
                             metric, nlq, "up") for metric in ("R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5")]
    return out


def format_findings(rows: Sequence[Mapping]) -> list[str]:
    """Markdown table lines of :func:`findings`."""
    def num(v):
        return "-" if v is None else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"

    def yes_no(v, no="**no**"):
        return {True: "yes", False: no, None: "-"}[v]

    lines = ["| effect (paper) | metric | runs | before | after | change | shows | beyond seed spread |",
             "|---|---|---|---|---|---|---|---|"]
    for f in rows:
        lines.append(f"| {f['claim']} ({f['paper']}) | {f['metric']} | {f['from']} -> {f['to']} "
                     f"| {num(f['before'])} | {num(f['after'])} | {num(f['delta'])} | {yes_no(f['shows'])} "
                     f"| {yes_no(f.get('beyond_spread'), 'no')} |")
    return lines


# The recipe ---------------------------------------------------------------------------------------
def run_reproduce(cfg: Any) -> dict:
    """Run the reproduce recipe (module docstring) as ``cfg`` (configs/reproduce.yaml) says;
    returns the results dict also written to OUT/results.json."""
    run = RecipeRun.begin("reproduce", cfg)
    # the NLQ trainings on the core that VQ2D training leaves idle (configs/reproduce.yaml parallel)
    (vq2d, vq2d_dirs), (nlq, nlq_dirs) = run.side_by_side(partial(run_vq2d, cfg=cfg), partial(run_nlq, cfg=cfg),
                                                          parallel=bool(cfg.get("parallel", False)))
    results = run.finish(vq2d, nlq)
    write_reproduce_report(cfg, run.out, results, run.runner.timings(), vq2d_dirs, nlq_dirs)
    return results


def _per_seed_rows(runs: Mapping[str, Mapping]) -> dict:
    return {f"{name} (seed {seed})": m for name, r in runs.items() for seed, m in r["per_seed"].items()}


def write_reproduce_report(cfg: Any, out: Path, results: dict, timings: list, vq2d_dirs: Mapping,
                           nlq_dirs: Mapping) -> None:
    """Charts, pictures, findings.json, the tables on stdout and OUT/README.md."""
    pictures_dir = out / PICTURES_DIR
    charts = [bar_chart(pictures_dir / "vq2d_metrics.png", vq2d_panels(results["vq2d"]),
                        "VQ2D: detector trained with vs without negative frames (synthetic val)"),
              bar_chart(pictures_dir / "nlq_metrics.png", nlq_panels(results["nlq"]),
                        "NLQ: with and without NaQ (synthetic val)")]
    pictures = [("VQ2D metrics, with vs without negative frames", charts[0]),
                ("NLQ metrics of every training", charts[1])]
    curves = vq2d_runs.choose_curves(list(vq2d_dirs.values()), int(cfg.pictures.curves))
    for variant, eval_dir in vq2d_dirs.items():
        for what, path in vq2d_runs.pick_pictures(eval_dir, pictures_dir, f"vq2d_{variant}", curves):
            pictures.append((f"VQ2D {variant}: " + ("false positives on frames without the object"
                                                    if what == "false_positives" else f"score curve of {what}"), path))
    for key in ("nlq_only", "nlq_naq"):
        timeline = nlq_dirs[key] / "plots" / "timeline.png"
        if timeline.is_file():
            pictures.append((f"NLQ {key}: predicted vs GT windows",
                             publish(timeline, pictures_dir / f"nlq_{key}_timeline.png")))
    found = findings(results, str(cfg.nlq.model))
    atomic_write_json(out / FINDINGS_FILE, found, indent=1)
    tables = results_tables(results["vq2d"], results["nlq"])
    models = model_rows(results["nlq"], str(cfg.nlq.model))
    if len(models) > 2:
        tables += ("\n\nNLQ models side by side (val, same data and seeds; recall and mIoU in %)\n"
                   + format_table(models, NLQ_COLUMNS, "model"))
    if len(cfg.vq2d.seeds) > 1 or len(cfg.nlq.seeds) > 1:
        tables += ("\n\nPer seed\n" + format_table(_per_seed_rows(results["vq2d"]), VQ2D_COLUMNS, "detector")
                   + "\n\n" + format_table(_per_seed_rows(results["nlq"]), NLQ_COLUMNS, "training"))
    print(f"\n{tables}\n", flush=True)
    print("\n".join(format_findings(found)), flush=True)
    print(f"\ntotal {results['seconds']:.0f} s; outputs in {out} (README.md, results.json)", flush=True)
    summary = [
        "The seed papers' findings measured on the synthetic mini-Ego4D val split "
        f"(data `{cfg.data.root}`, seed {cfg.seed}, preset {cfg.preset}, generator overrides "
        f"`{dict(cfg.get('synthetic') or {})}`).",
        "",
        f"* VQ2D: tiny SiamRCNN ({cfg.vq2d.preset} preset, {cfg.vq2d.max_iter} iterations), trained with and "
        f"without negative frames, seeds {list(cfg.vq2d.seeds)}; frame AP from the trainer (`detection_ap.json`), "
        "the rest from `tools/eval_vq2d.py` on val (full pipeline); `bg_peak_score` = mean over val queries of "
        "the highest detection score on search-window frames outside the GT track.",
        f"* NLQ: {', '.join(MODEL_NAMES.get(str(m), str(m)) for m in cfg.nlq.get('models') or [cfg.nlq.model])} "
        f"({cfg.nlq.preset} preset) on NLQ only and NLQ + NaQ, seeds {list(cfg.nlq.seeds)}, epochs per stage "
        f"{dict(cfg.nlq.epochs)} (per model: "
        f"{ {str(m): dict(v.get('epochs') or {}) for m, v in (cfg.nlq.get('per_model') or {}).items()} }); "
        f"{MODEL_NAMES.get(str(cfg.nlq.model), cfg.nlq.model)} also on NaQ only (zero-shot) and few-shot, seeds "
        f"{list(cfg.nlq.get('ablation_seeds') or cfg.nlq.seeds)}; few-shot = the NLQ train queries of {cfg.nlq.fewshot.fraction:.0%} of the NLQ train "
        f"{cfg.nlq.fewshot.get('unit', 'clip')}s "
        f"(subset seed {cfg.nlq.fewshot.seed}), NaQ unchanged. Best checkpoint by val R@1 IoU0.3 (as the paper's "
        "recipe), then scored on val by `tools/eval_nlq.py`.",
        "",
        f"Total wall time: {results['seconds']:.0f} s. Values are means over the seeds; `results.json` has every "
        "seed. Effects are reported as they come out, also where they do not show.",
    ]
    notes = ["Does each paper effect show here? (\"shows\": the change has the paper's sign; with few seeds and "
             "small val splits, small changes are within noise.)", "", *format_findings(found)]
    write_readme(out / "README.md", title="make reproduce", summary=summary, tables=tables,
                 pictures=[(c, Path(p).relative_to(out).as_posix()) for c, p in pictures], notes=notes,
                 timings=timings)
