"""NLQ metric (hand-made answers), submission round trip and validator, eval tool."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from episodic.errors import DataError
from nlq.data.annotations import NLQKey, load_nlq_annotations, parse_nlq_annotations
from nlq.evaluation.metrics import evaluate_nlq, metric_names, window_iou
from nlq.evaluation.scoring import score_predictions_file
from nlq.evaluation.submission import build_submission, read_predictions, validate_submission, write_submission

REPO = Path(__file__).resolve().parents[2]
KEYS = ["R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU", "MR@1", "MR@5"]

# Four GT queries in one clip and a fifth without text (scored when predicted, never required).
GT = {"version": "2.0", "videos": [{"video_uid": "v1", "clips": [{
    "clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 100.0, "clip_start_sec": 0.0, "clip_end_sec": 100.0,
    "annotations": [{"annotation_uid": "a1", "language_queries": [
        {"clip_start_sec": 0.0, "clip_end_sec": 10.0, "query": "q0?"},
        {"clip_start_sec": 20.0, "clip_end_sec": 30.0, "query": "q1?"},
        {"clip_start_sec": 40.0, "clip_end_sec": 50.0, "query": "q2?"},
        {"clip_start_sec": 60.0, "clip_end_sec": 63.0, "query": "q3?"},
        {"clip_start_sec": 80.0, "clip_end_sec": 90.0}]}]}]}]}


def _pred(idx, windows, clip="c1", ann="a1"):
    return {"clip_uid": clip, "annotation_uid": ann, "query_idx": idx, "predicted_times": windows}


FAR = [90.0, 95.0]


def test_window_iou():
    assert window_iou([0, 10], [5, 15]) == pytest.approx(1 / 3)
    assert window_iou([0, 1], [2, 3]) == 0.0
    assert window_iou([[0, 10], [0, 5], [2, 2]], [0, 10]).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert window_iou([3, 3], [3, 3]) == 0.0  # zero union: 0, not NaN


def test_strict_thresholds_and_topk():
    preds = [_pred(0, [[0.0, 20.0]] + [FAR] * 4),          # IoU exactly 0.5: counts at 0.3 only
             _pred(1, [[20.0, 30.0]] + [FAR] * 4),          # IoU 1
             _pred(2, [FAR, FAR, [40.0, 50.0], FAR, FAR]),  # hit at rank 3: R@5 only
             _pred(3, [[60.0, 70.0]] + [FAR] * 4)]          # IoU exactly 0.3: no hit at all
    metrics = evaluate_nlq(preds, GT)
    assert list(metrics) == KEYS + ["num_evaluated", "num_gt"] == metric_names() + ["num_evaluated", "num_gt"]
    assert window_iou([0.0, 20.0], [0.0, 10.0]) == 0.5 and window_iou([60.0, 70.0], [60.0, 63.0]) == 0.3
    assert metrics["R@1_IoU0.3"] == pytest.approx(50.0)
    assert metrics["R@1_IoU0.5"] == pytest.approx(25.0)
    assert metrics["R@5_IoU0.3"] == pytest.approx(75.0)
    assert metrics["R@5_IoU0.5"] == pytest.approx(50.0)
    assert metrics["mIoU"] == pytest.approx(100 * (0.5 + 1.0 + 0.0 + 0.3) / 4)
    assert (metrics["num_evaluated"], metrics["num_gt"]) == (4, 5)
    assert metrics["MR@1"] == pytest.approx(37.5) and metrics["MR@5"] == pytest.approx(62.5)
    wide = evaluate_nlq(preds, GT, thresholds=(0.01, 0.3, 0.5), topk=(1, 3, 5))
    assert list(wide) == metric_names((0.01, 0.3, 0.5), (1, 3, 5)) + ["num_evaluated", "num_gt"]
    assert wide["R@1_IoU0.01"] == pytest.approx(75.0)  # q3's IoU 0.3 counts at 0.01
    assert wide["R@3_IoU0.5"] == pytest.approx(50.0) and wide["MR@3"] == pytest.approx(62.5)
    assert "MR@1" not in evaluate_nlq(preds, GT, thresholds=(0.5,))


def test_mean_over_submitted_predictions_and_warnings():
    preds = [_pred(1, [[20.0, 30.0]] * 5), _pred(2, [FAR] * 5)]
    metrics, warnings = evaluate_nlq(preds, parse_nlq_annotations(GT), return_warnings=True)
    assert metrics["R@1_IoU0.5"] == pytest.approx(50.0) and metrics["num_evaluated"] == 2
    assert len(warnings) == 1 and warnings[0].startswith("2 of 4 GT queries have no prediction")
    assert "(c1, a1, 0)" in warnings[0] and "(c1, a1, 3)" in warnings[0]

    preds = [_pred(1, [[20.0, 30.0]] * 5), _pred(1, [FAR] * 5), _pred(0, [[0.0, 10.0]]),
             _pred(0, [[0.0, 10.0]], clip="nope"), _pred(9, [[0.0, 1.0]]), _pred(4, [[80.0, 90.0]])]
    metrics, warnings = evaluate_nlq(preds, GT, return_warnings=True)
    assert metrics["num_evaluated"] == 4  # duplicates count (as in the official script); the text-less one too
    assert metrics["R@1_IoU0.5"] == pytest.approx(75.0) and metrics["R@5_IoU0.5"] == pytest.approx(75.0)
    text = "\n".join(warnings)
    assert "1 queries predicted more than once" in text and "(c1, a1, 1)" in text
    assert "2 predictions for queries not in the GT file" in text and "(nope, a1, 0)" in text and "(c1, a1, 9)" in text
    assert "2 of 4 GT queries have no prediction" in text


def test_empty_and_malformed_predictions():
    metrics, warnings = evaluate_nlq([], GT, return_warnings=True)
    assert all(metrics[k] == 0.0 for k in KEYS) and metrics["num_evaluated"] == 0
    assert "no prediction matched" in warnings[0]
    with pytest.raises(DataError, match=r"predictions\[0\].*predicted_times"):
        evaluate_nlq([_pred(0, [[0.0, "x"]])], GT)
    with pytest.raises(DataError, match=r"predictions\[1\]"):
        evaluate_nlq([_pred(0, [[0.0, 1.0]]), {"clip_uid": "c1"}], GT)


def test_submission_round_trip_and_scoring(tmp_path):
    annotations = parse_nlq_annotations(GT)
    gt_windows = [[0.0, 10.0], [20.0, 30.0], [40.0, 50.0], [60.0, 63.0]]
    results = [{"key": NLQKey("c1", "a1", i), "windows": torch.tensor([w] * 5)} for i, w in enumerate(gt_windows)]
    sub = build_submission(results)
    assert validate_submission(sub, annotations) == []
    assert sub["results"][1] == _pred(1, [[20.0, 30.0]] * 5)
    path = tmp_path / "preds.json"
    write_submission(sub, path)
    assert read_predictions(path) == sub["results"]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(GT))
    metrics = score_predictions_file(gt_path, path, tmp_path / "out")
    assert {k: metrics[k] for k in KEYS + ["num_evaluated", "num_gt"]} == evaluate_nlq(sub["results"], annotations)
    assert metrics["complete"] is True and metrics["num_queries"] == metrics["num_answered"] == 4
    assert metrics["R@1_IoU0.5"] == 100.0 and metrics["mIoU"] == pytest.approx(100.0)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["R@5_IoU0.3"] == 100.0 and written["warnings"] == []
    (tmp_path / "bad.json").write_text(json.dumps({**sub, "challenge": "ego4d_vq2d_challenge"}))
    with pytest.raises(DataError, match="bad.json: challenge must be"):
        read_predictions(tmp_path / "bad.json")
    flat = build_submission([{"clip_uid": "c1", "annotation_uid": "a1", "query_idx": np.int64(2),
                              "predicted_times": np.array([[1.0, 2.0]] * 5)}])
    assert flat["results"][0]["query_idx"] == 2 and isinstance(flat["results"][0]["predicted_times"][0][0], float)


def test_validator_names_each_problem():
    annotations = parse_nlq_annotations(GT)
    good = [_pred(i, [[0.0, 1.0]] * 5) for i in range(4)]
    assert validate_submission({"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": good}, annotations) == []
    bad = [_pred(0, [[0.0, 1.0]] * 4),                       # 4 windows
           _pred(1, [[2.0, 1.0]] + [[0.0, 1.0]] * 4),        # ends before it starts
           _pred(2, [[0.0, float("nan")]] + [[0.0, 1.0]] * 4),  # not finite
           _pred(2, [[0.0, 1.0]] * 5),                       # duplicate
           _pred(7, [[0.0, 1.0]] * 5),                       # unknown query
           {**_pred(True, [[0.0, 1.0]] * 5)},                # bool query_idx
           "junk"]
    problems = validate_submission({"version": "2.0", "challenge": "x", "results": bad}, annotations)
    expected = ["'version' must be '1.0'", "'challenge' must be", "results[0] (c1, a1, 0): 'predicted_times' has 4 windows",
                "results[1] (c1, a1, 1): predicted_times[0] ends before it starts",
                "results[2] (c1, a1, 2): predicted_times[0] must be [start, end] finite numbers",
                "results[3]: query (c1, a1, 2) is answered more than once", "results[4]: query (c1, a1, 7) is not a query",
                "results[5]: 'query_idx' must be an integer", "results[6]: expected an object",
                "missing prediction for query (c1, a1, 3): 'q3?'"]
    assert len(problems) == len(expected)
    for line, start in zip(problems, expected):
        assert line.startswith(start), (line, start)
    assert validate_submission([], annotations) == ["submission must be a JSON object (got list)"]
    header = {"version": "1.0", "challenge": "ego4d_nlq_challenge"}
    missing = validate_submission({**header, "results": good[:3]}, annotations)
    assert missing == ["missing prediction for query (c1, a1, 3): 'q3?'"]
    excused = {NLQKey("c1", "a1", 3)}  # counted as failed elsewhere: not a problem of the file
    assert validate_submission({**header, "results": good[:3]}, annotations, unanswered=excused) == []


def test_partial_duplicated_and_odd_windows_are_said_and_counted(tmp_path):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "preds.json"
    gt_path.write_text(json.dumps(GT))
    preds = [_pred(0, [[0.0, 10.0]] * 5), _pred(0, [[0.0, 10.0]] * 5),  # a duplicate
             _pred(1, [[30.0, 20.0]] + [FAR] * 4),                      # a window ending before it starts
             _pred(2, [[40.0, 50.0]] * 3),                              # fewer than 5 windows
             _pred(3, [[60.0, 63.0], [95.0, 130.0]] + [FAR] * 3)]       # a window past the clip's end (100 s)
    write_submission({"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": preds}, pred_path)
    metrics = score_predictions_file(gt_path, pred_path, tmp_path)
    # the official number is unchanged: the mean over the 5 submitted predictions
    assert metrics["R@1_IoU0.5"] == pytest.approx(100 * 4 / 5) and metrics["num_evaluated"] == 5
    assert (metrics["num_queries"], metrics["num_answered"], metrics["num_duplicates"]) == (4, 4, 1)
    assert metrics["complete"] is False
    assert (metrics["num_windows_start_after_end"], metrics["num_fewer_than_5_windows"],
            metrics["num_windows_outside_clip"]) == (1, 1, 1)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["complete"] is False and written["num_queries"] == 4
    text = "\n".join(written["warnings"])
    assert "1 predictions have a window ending before it starts: (c1, a1, 1)" in text
    assert "fewer than 5 windows" in text and "window outside the clip: (c1, a1, 3)" in text
    from nlq.evaluation.scoring import format_metrics
    assert format_metrics(metrics)[0].startswith("INCOMPLETE predictions: 4 of 4 queries answered, 1 duplicates")
    whole = [_pred(i, [list(w)] * 5) for i, w in enumerate([(0, 10), (20, 30), (40, 50), (60, 63)])]
    write_submission({"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": whole}, pred_path)
    complete = score_predictions_file(gt_path, pred_path, tmp_path)
    assert complete["complete"] is True and complete["num_windows_outside_clip"] == 0
    assert not format_metrics(complete)[0].startswith("INCOMPLETE")


def test_real_val_file_scores_perfect_predictions(ego4d_samples):
    annotations = load_nlq_annotations(ego4d_samples / "nlq_val_v2.json")
    queries = annotations.queries()
    sub = build_submission([{"key": q.key, "predicted_times": [list(q.window)] * 5} for q in queries])
    assert validate_submission(sub, annotations) == []
    metrics, warnings = evaluate_nlq(sub["results"], annotations, return_warnings=True)
    assert (metrics["num_evaluated"], metrics["num_gt"]) == (4552, 4554)
    assert metrics["R@1_IoU0.3"] == 100.0
    assert metrics["mIoU"] == pytest.approx(100.0) and metrics["R@5_IoU0.5"] == 100.0
    assert warnings == []


def test_eval_tool_last_line_is_json(tmp_path):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "preds.json"
    gt_path.write_text(json.dumps(GT))
    write_submission(build_submission([_pred(i, [[20.0, 30.0]] * 5) for i in range(3)]), pred_path)
    proc = subprocess.run([sys.executable, "tools/eval_nlq.py", f"annotations={gt_path}", f"predictions={pred_path}",
                           f"output_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(KEYS + ["num_evaluated", "num_gt", "num_queries", "complete"]) <= set(result)
    assert result["R@1_IoU0.5"] == pytest.approx(100 / 3) and result["num_evaluated"] == 3
    assert result["num_queries"] == 4 and result["complete"] is False
    assert any("GT queries have no prediction" in line for line in lines[:-1])
    assert "INCOMPLETE predictions: 3 of 4 queries answered, 0 duplicates" in proc.stdout
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "eval_nlq_config.yaml").is_file()
    assert result["MR@1"] == pytest.approx((result["R@1_IoU0.3"] + result["R@1_IoU0.5"]) / 2)
    with pytest.raises(DataError, match="missing.json"):
        score_predictions_file(gt_path, tmp_path / "missing.json", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def _templated_gt():
    queries = [
        {"clip_start_sec": 0.0, "clip_end_sec": 10.0, "query": "where did i put the fire gun?",
         "template": "Place: Where did I put X?", "slot_x": "fire gun "},
        {"clip_start_sec": 20.0, "clip_end_sec": 30.0, "query": "where is the Knife?",
         "template": "Objects: Where is object X?", "slot_x": "the Knife!"},
        {"clip_start_sec": 40.0, "clip_end_sec": 50.0, "query": "who did i talk to?",
         "template": "People: Who did I interact with when I did activity X?", "slot_x": "talk"},
        {"clip_start_sec": 60.0, "clip_end_sec": 70.0, "query": "where is the cup?",
         "template": "Objects: Where is object X?", "slot_x": "cup"}]
    return {"version": "2.0", "videos": [{"video_uid": "v1", "clips": [{
        "clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 100.0, "clip_start_sec": 0.0,
        "clip_end_sec": 100.0, "annotations": [{"annotation_uid": "a1", "language_queries": queries}]}]}]}


def test_breakdown_per_template_and_object_set():
    from nlq.evaluation.metrics import evaluate_nlq_by_group, object_set_groups, template_groups

    gt = _templated_gt()
    preds = [_pred(0, [[0.0, 10.0]] * 5), _pred(1, [FAR] * 5), _pred(2, [[40.0, 50.0]] * 5), _pred(3, [[60.0, 70.0]] * 5)]
    by_template = evaluate_nlq_by_group(preds, gt, template_groups(gt))
    assert list(by_template) == ["Objects: Where is object X?", "Place: Where did I put X?",
                                 "People: Who did I interact with when I did activity X?"]  # largest first
    objects = by_template["Objects: Where is object X?"]
    assert objects["num_evaluated"] == 2 and objects["R@1_IoU0.3"] == 50.0 and objects["MR@1"] == 50.0
    assert by_template["Place: Where did I put X?"]["R@5_IoU0.5"] == 100.0
    sets = {"low": ["the knife", "fire gun"], "high": ["cup", "talk"]}  # "talk": not an object template
    groups = object_set_groups(gt, sets)
    assert sorted((k.query_idx, v) for k, v in groups.items()) == [(0, "low"), (1, "low"), (3, "high")]
    by_object = evaluate_nlq_by_group(preds, gt, groups)
    assert by_object["low"]["R@1_IoU0.3"] == 50.0 and by_object["high"]["R@1_IoU0.3"] == 100.0


def test_eval_tool_breakdowns_in_metrics_json(tmp_path):
    gt_path, pred_path, sets = tmp_path / "gt.json", tmp_path / "preds.json", tmp_path / "sets.json"
    gt_path.write_text(json.dumps(_templated_gt()))
    sets.write_text(json.dumps({"low": ["cup"]}))
    write_submission(build_submission([_pred(i, [[60.0, 70.0]] * 5) for i in range(4)]), pred_path)
    metrics = score_predictions_file(gt_path, pred_path, tmp_path / "out", thresholds=(0.01, 0.3, 0.5),
                                     topk=(1, 3, 5), breakdown=("template", "object"), object_sets=sets)
    assert metrics["MR@3"] == 25.0 and "by_template" not in metrics
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["by_object_set"]["low"]["R@1_IoU0.5"] == 100.0 and len(saved["by_template"]) == 3
    with pytest.raises(DataError, match="object_sets"):
        score_predictions_file(gt_path, pred_path, tmp_path / "out", breakdown=("object",))
