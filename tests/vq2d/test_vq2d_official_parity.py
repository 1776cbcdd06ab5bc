"""Our VQ2D scorer against golden values of the official EGO4D scorer.

tests/vq2d/golden/ holds small hand-made annotation and predictions files (float, negative,
out-of-frame and flipped boxes, unsorted tracks and GT, a frame given twice, integer and
tied scores, a NaN score, an empty track, a negative-width GT box) and the numbers the
official ``VQ2D/evaluate_vq.py`` of EGO4D/episodic-memory computed on them
(``official_scores.json``; no official code is part of this repository). Every case must
match to 1e-9, and the ground-truth rules must be the same in scoring and checkpoint mode.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from episodic.io import read_json
from vq2d.evaluation.ground_truth import official_ground_truth
from vq2d.evaluation.scoring import load_annotations_for_scoring, score_predictions_file, score_submission

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
OFFICIAL = json.loads((GOLDEN / "official_scores.json").read_text())["cases"]
KEYS = ("tAP", "tAP@0.25", "stAP", "stAP@0.25", "success", "recovery")


def _files(case):
    return GOLDEN / f"{case}_annotations.json", GOLDEN / f"{case}_predictions.json"


@pytest.mark.parametrize("case", ["handmade", "int_ties", "random"])
def test_metrics_equal_the_official_scorer(case, tmp_path):
    metrics = score_predictions_file(*_files(case), tmp_path)
    for key in KEYS:
        assert metrics[key] == pytest.approx(OFFICIAL[case]["metrics"][key], abs=1e-9, rel=0), key
    assert metrics["num_dropped"] == 0 and metrics["num_problems"] == metrics["num_unreadable"] == 0
    assert not (tmp_path / "problems.txt").exists()


def test_per_query_overlaps_equal_the_official_ones():
    annotations, raw = load_annotations_for_scoring(_files("handmade")[0])
    scores = score_submission(read_json(_files("handmade")[1]), annotations, raw)
    got = {f"{k.clip_uid}_{k.annotation_index}_{k.query_set}": r for k, r in scores.results.items()}
    expected = OFFICIAL["handmade"]["per_query"]
    assert set(got) == set(expected)
    for name, e in expected.items():
        r = got[name]
        assert (r.stiou, r.tiou) == pytest.approx((e["stiou"], e["tiou"]), abs=1e-12), name
        assert (r.recovered_frames, r.gt_frames) == (e["recovered_frames"], e["gt_frames"]), name


def test_suspicious_boxes_are_counted_and_named_but_scored_as_they_are(tmp_path):
    metrics = score_predictions_file(*_files("handmade"), tmp_path)
    # clipC_0_1 has boxes on frames 11 and 12 with query frame 11; clipF_0_1 two boxes far outside
    assert metrics["warnings"]["boxes_after_query_frame"] == {"boxes": 2, "queries": 1}
    assert metrics["warnings"]["boxes_outside_frame"] == {"boxes": 2, "queries": 1}
    assert metrics["warnings"]["file"] == 3  # a flipped box, a frame given twice, a NaN score
    text = (tmp_path / "warnings.txt").read_text()
    assert "query clipC_0_1: 2 boxes_after_query_frame" in text and "query clipF_0_1: 2 boxes_outside_frame" in text
    header, *rows = (tmp_path / "per_query.csv").read_text().splitlines()
    assert "boxes_after_query_frame" in header and len(rows) == metrics["num_queries"] == 11


def test_breakdowns_score_each_group_on_its_own(tmp_path):
    metrics = score_predictions_file(*_files("random"), tmp_path)
    by_size, by_length = metrics["by_size"], metrics["by_length"]
    assert sum(m["num_queries"] for m in by_size.values()) == metrics["num_queries"] == 60
    assert sum(m["num_queries"] for m in by_length.values()) == 60
    assert set(by_size) <= {"small", "medium", "large"} and set(by_length) <= {"1-8", "9-24", "25+"}
    # medium and large are the official area pairings ("all", "medium") / ("all", "large")
    for group, expected in OFFICIAL["random"]["area_pairings"].items():
        for key, value in expected.items():
            assert by_size[group][key] == pytest.approx(value, abs=1e-9, rel=0), (group, key)
    # success is a plain mean: the groups' successes, weighted by size, give the total
    total = sum(m["success"] * m["num_queries"] for m in by_size.values()) / 60
    assert total == pytest.approx(metrics["success"])


def test_eval_tool_equals_the_official_scorer(tmp_path):
    annotations, predictions = _files("random")
    proc = subprocess.run([sys.executable, "tools/eval_vq2d.py", f"annotations={annotations}",
                           f"predictions={predictions}", f"output_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert metrics[key] == pytest.approx(OFFICIAL["random"]["metrics"][key], abs=1e-9, rel=0), key
    assert "by_size/" in proc.stdout and "warnings" in proc.stdout


def test_validate_tool_accepts_float_negative_and_out_of_frame_files():
    annotations, predictions = _files("handmade")
    proc = subprocess.run([sys.executable, "tools/validate_submission.py", f"annotations={annotations}",
                           f"submission={predictions}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "OK" in proc.stdout and "3 warnings" in proc.stdout and "x2 <= x1" in proc.stdout


# The real Ego4D val sample ---------------------------------------------------------------------------------
def perturbed_predictions(annotations: dict) -> dict:
    """A predictions file for a decoded annotation file: every GT track shifted in time and
    space by deterministic amounts (float and negative corners, boxes up to 2.5x the GT
    size leaving the frame, tracks listed backwards, every tenth one empty, tied scores)."""
    videos, i = [], 0
    for v in annotations["videos"]:
        clips = []
        for c in v["clips"]:
            preds = []
            for a in c["annotations"]:
                qsets = {}
                for key, q in a["query_sets"].items():
                    i += 1
                    if not q.get("is_valid", True) or "response_track" not in q:
                        qsets[key] = {"bboxes": [], "score": 0.0}
                        continue
                    shift, dx, scale = i % 7 - 3, (i * 37) % 81 - 40.5, (1.0, 1.0, 2.5)[i % 3]
                    boxes = [{"fno": b["frame_number"] + shift, "x1": b["x"] + dx - 30, "y1": b["y"] + dx / 2,
                              "x2": b["x"] + dx + b["width"] * scale, "y2": b["y"] + dx / 2 + b["height"] * scale}
                             for b in reversed(q["response_track"])]
                    qsets[key] = {"bboxes": [] if i % 10 == 0 else boxes, "score": (i * 13 % 10) / 10}
                preds.append({"query_sets": qsets})
            clips.append({"clip_uid": c["clip_uid"], "predictions": preds})
        videos.append({"video_uid": v["video_uid"], "clips": clips})
    return {"version": annotations["version"], "challenge": "ego4d_vq2d_challenge", "results": {"videos": videos}}


def test_real_val_sample_with_perturbed_predictions_equals_the_official_scorer(ego4d_samples, tmp_path):
    annotations = ego4d_samples / "vq_val_sample_v1.json"
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(perturbed_predictions(json.loads(annotations.read_text()))))
    metrics = score_predictions_file(annotations, predictions, tmp_path)
    assert metrics["num_queries"] == 228 and metrics["num_unreadable"] == 0
    for key in KEYS:
        assert metrics[key] == pytest.approx(OFFICIAL["real_val_sample"]["metrics"][key], abs=1e-9, rel=0), key


# Ground truth: the official rules, drops named ---------------------------------------------------------
def _gt_variant(tmp_path, mutate):
    annotations, predictions = _files("handmade")
    raw = json.loads(annotations.read_text())
    mutate(raw["videos"][0]["clips"][0]["annotations"])
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(raw))
    return path, predictions


def test_gt_the_official_code_fails_on_is_dropped_by_name_and_counted(tmp_path):
    def mutate(anns):  # clipA_0_1: a gap in the GT track (official: raises); clipA_1_1: no track at all
        anns[0]["query_sets"]["1"]["response_track"][2]["frame_number"] = 99
        anns[1]["query_sets"]["1"]["response_track"] = []
    annotations, predictions = _gt_variant(tmp_path, mutate)
    metrics = score_predictions_file(annotations, predictions, tmp_path)
    assert metrics["num_queries"] == 9 and metrics["num_dropped"] == 2
    assert set(metrics["dropped_queries"]) == {"clipA_0_1", "clipA_1_1"}
    assert "not contiguous" in metrics["dropped_queries"]["clipA_0_1"]
    assert "empty" in metrics["dropped_queries"]["clipA_1_1"]


def test_unsorted_gt_and_gt_the_strict_loader_rejects_are_scored_as_the_official_code_does(tmp_path):
    def mutate(anns):  # unsorted GT (the official code sorts it); a zero-width box (the loader rejects it)
        anns[0]["query_sets"]["1"]["response_track"].reverse()
        anns[1]["query_sets"]["1"]["response_track"][0]["width"] = 0.0
    annotations, predictions = _gt_variant(tmp_path, mutate)
    metrics = score_predictions_file(annotations, predictions, tmp_path)
    assert metrics["num_queries"] == 11 and metrics["num_dropped"] == 0
    unsorted_only, _ = _gt_variant(tmp_path, lambda anns: anns[0]["query_sets"]["1"]["response_track"].reverse())
    sorted_metrics = score_predictions_file(unsorted_only, predictions, tmp_path)
    for key in KEYS:
        assert sorted_metrics[key] == pytest.approx(OFFICIAL["handmade"]["metrics"][key], abs=1e-9)


def test_gt_areas_outside_the_official_range_are_dropped_by_name():
    raw = json.loads(_files("handmade")[0].read_text())
    raw["videos"][0]["clips"][0]["annotations"][0]["query_sets"]["1"]["response_track"][0]["width"] = 2e10
    gt = official_ground_truth(raw)
    assert list(gt.dropped) == ["clipA_0_1"] and "leaves it out" in gt.dropped["clipA_0_1"]
    assert len(gt.tracks) == 10 and len(gt.valid) == 11
