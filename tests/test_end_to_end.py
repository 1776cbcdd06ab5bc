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
    assert set(results) == {"vq2d", "nlq", "seconds"}
    assert VQ2D_KEYS <= set(results["vq2d"]) and NLQ_KEYS <= set(results["nlq"])
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
