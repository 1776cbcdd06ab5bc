"""The demo recipe end to end at instant sizes: `tools/demo.py` as a user runs it (every tool
a subprocess), into tmp_path; checks results.json and that both submissions validate."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INSTANT = [  # a few clips and queries, a few iterations/epochs
    "+synthetic.vq2d.num_train_clips=2", "+synthetic.vq2d.num_val_clips=1", "+synthetic.vq2d.num_test_clips=1",
    "+synthetic.vq2d.frames_per_clip=[36,44]", "+synthetic.vq2d.annotations_per_clip=[1,1]",
    "+synthetic.nlq.n_train_clips=2", "+synthetic.nlq.n_val_clips=1", "+synthetic.nlq.n_test_clips=1",
    "+synthetic.nlq.n_moments_clips=2",
    "vq2d.max_iter=2", "vq2d.workers=1",
    "vq2d.train_args=['eval.max_queries=2','data.num_workers=0']",
    "nlq.epochs.joint=1", "nlq.epochs.finetune=1",
]
VQ2D_KEYS = {"stAP@0.25", "stAP", "tAP@0.25", "tAP", "success", "recovery", "num_queries", "ap_pos", "ap_posneg",
             "bg_peak_score"}
NLQ_KEYS = {"R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU", "num_evaluated", "num_gt"}


def test_demo_recipe_end_to_end(tmp_path):
    from nlq.data.annotations import load_nlq_annotations
    from nlq.evaluation.submission import validate_submission as validate_nlq
    from vq2d.evaluation.validate import validate_submission_file

    out, root = tmp_path / "demo", tmp_path / "data"
    cmd = [sys.executable, "tools/demo.py", f"output_dir={out}", f"data.root={root}", *INSTANT]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "R@1_IoU0.3" in proc.stdout and "ap_posneg" in proc.stdout  # the results table

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"vq2d", "nlq", "vq2d_template_matcher", "seconds"}
    assert VQ2D_KEYS | {"ap50_pos"} <= set(results["vq2d"]) and NLQ_KEYS <= set(results["nlq"])
    baseline = results["vq2d_template_matcher"]  # the training-free baseline on the same val split
    assert baseline["num_queries"] == results["vq2d"]["num_queries"] and 0.0 <= baseline["success"] <= 100.0
    assert "template matcher (no training)" in proc.stdout
    assert results["seconds"] > 0
    assert results["vq2d"]["num_queries"] >= 1 and results["nlq"]["num_evaluated"] >= 1
    assert 0.0 <= results["vq2d"]["ap_posneg"] <= 100.0
    assert 0.0 <= results["vq2d"]["bg_peak_score"] <= 1.0

    problems, num = validate_submission_file(root / "v2/annotations/vq_test_unannotated.json",
                                             out / "vq2d_submission.json")
    assert problems == [] and num >= 1
    nlq_sub = json.loads((out / "nlq_submission.json").read_text())
    assert validate_nlq(nlq_sub, load_nlq_annotations(root / "v2/annotations/nlq_test_unannotated.json")) == []
    assert nlq_sub["results"]

    readme = (out / "README.md").read_text()
    assert "pictures/metrics.png" in readme and (out / "pictures" / "metrics.png").stat().st_size > 0
    assert (out / "pictures" / "nlq_timeline.png").is_file()
    assert (out / "logs" / "vq2d_train.log").is_file()


REPRODUCE_INSTANT = [  # keys reproduce.yaml already sets are overridden without "+"
    "+synthetic.vq2d.num_train_clips=2", "+synthetic.vq2d.num_val_clips=1", "+synthetic.vq2d.num_test_clips=1",
    "+synthetic.vq2d.frames_per_clip=[36,44]", "+synthetic.vq2d.annotations_per_clip=[1,1]",
    "+synthetic.nlq.n_train_clips=4", "synthetic.nlq.n_val_clips=1", "+synthetic.nlq.n_test_clips=1",
    "synthetic.nlq.n_moments_clips=2",
    "vq2d.max_iter=2", "vq2d.workers=1", "vq2d.seeds=[0]",
    "vq2d.train_args=['eval.max_queries=2','eval.period=0','data.num_workers=0']",
    "nlq.seeds=[0]", "nlq.epochs.nlq_only=1", "nlq.epochs.joint=1", "nlq.epochs.finetune=1", "nlq.epochs.naq_only=1",
    "nlq.fewshot.epochs.nlq_only=1", "nlq.fewshot.epochs.finetune=1", "pictures.curves=1",
    "nlq.per_model.reler.epochs={nlq_only:1,joint:1,finetune:1}",
    "nlq.per_model.snag.epochs={nlq_only:1,joint:1,finetune:1}",
]
NLQ_RUNS = {"nlq_only", "nlq_naq", "naq_zero_shot", "fewshot_nlq_only", "fewshot_nlq_naq",
            "reler_nlq_only", "reler_nlq_naq", "snag_nlq_only", "snag_nlq_naq"}


def test_reproduce_recipe_end_to_end(tmp_path):
    out, root = tmp_path / "reproduce", tmp_path / "data"
    cmd = [sys.executable, "tools/reproduce.py", f"output_dir={out}", f"data.root={root}", *REPRODUCE_INSTANT]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"vq2d", "nlq", "seconds"}
    assert set(results["vq2d"]) == {"negatives", "no_negatives"} and set(results["nlq"]) == NLQ_RUNS
    for metrics in results["vq2d"].values():
        assert VQ2D_KEYS <= set(metrics) and metrics["seeds"] == [0]
    for metrics in results["nlq"].values():
        assert NLQ_KEYS <= set(metrics) and metrics["seeds"] == [0]
        assert metrics["R@1_IoU0.3"] == metrics["per_seed"]["0"]["R@1_IoU0.3"]
    # the few-shot runs trained on fewer NLQ queries than the full ones (same data set)
    fewshot = json.loads((out / "nlq" / "fewshot_annotations" / "nlq_train.json").read_text())
    full = json.loads((root / "v2" / "annotations" / "nlq_train.json").read_text())
    count = lambda f: sum(len(a["language_queries"]) for v in f["videos"] for c in v["clips"] for a in c["annotations"])
    assert 1 <= count(fewshot) < count(full)

    findings = json.loads((out / "findings.json").read_text())
    assert {f["metric"] for f in findings} >= {"ap_posneg", "bg_peak_score", "R@1_IoU0.3"}
    readme = (out / "README.md").read_text()
    assert "naq_zero_shot" in readme and "| effect (paper) |" in readme
    assert "NLQ models side by side" in readme and "SnAG NLQ + NaQ" in readme and "ReLER NLQ only" in readme
    assert (out / "pictures" / "vq2d_negatives_false_positives.png").is_file()
    assert (out / "pictures" / "vq2d_no_negatives_false_positives.png").is_file()
