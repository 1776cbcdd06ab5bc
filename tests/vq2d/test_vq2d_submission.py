"""VQ2D challenge submissions: writer, reader, validator (one test per rule), scoring of a
predictions file, and the two tools."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vq2d.data.annotations import QueryKey, load_vq_annotations, parse_vq_annotations
from vq2d.evaluation.predictions import CHALLENGE, read_submission
from vq2d.evaluation.scoring import score_predictions_file, score_submission
from vq2d.evaluation.submission import build_submission, write_submission
from vq2d.evaluation.tracks import PredictedTrack
from vq2d.evaluation.validate import check_submission, validate_submission
from episodic.errors import DataError

REPO = Path(__file__).resolve().parents[2]
METRIC_KEYS = ["stAP@0.25", "stAP", "tAP@0.25", "tAP", "success", "recovery", "num_queries", "num_dropped",
               "dropped_queries", "num_problems", "num_unreadable", "unreadable_queries", "warnings", "by_size",
               "by_length"]


# Tiny annotation file: 2 videos, 3 clips; query set "3" of each annotation is invalid ----------
def _box(fno, x=10.0, y=20.0, w=30.0, h=40.0):
    return {"frame_number": fno, "x": x, "y": y, "width": w, "height": h, "rotation": 0,
            "original_width": 320, "original_height": 240}


def _query_set(start, length=3, query_frame=50):
    return {"is_valid": True, "query_frame": query_frame, "object_title": "mug",
            "visual_crop": _box(query_frame + 5),
            "response_track": [_box(start + i, x=10.0 + i) for i in range(length)]}


def _annotation(uid, start):
    return {"annotation_uid": uid, "query_sets": {
        "1": _query_set(start), "2": _query_set(start + 10, length=2), "3": {"is_valid": False}}}


def _clip(uid, n_annotations):
    return {"clip_uid": uid, "video_start_frame": 0, "video_end_frame": 3000, "clip_fps": 5.0,
            "annotations": [_annotation(f"{uid}-a{i}", 5 * i) for i in range(n_annotations)]}


def tiny_annotations():
    data = {"version": "2", "videos": [
        {"video_uid": "v0", "clips": [_clip("c0", 2), _clip("c1", 1)]},
        {"video_uid": "v1", "clips": [_clip("c2", 1)]}]}
    return parse_vq_annotations(data, "tiny_vq.json")


def tiny_raw():
    return tiny_annotations().to_dict()


def gt_results(annotations, score=1.0):
    return {q.key: PredictedTrack.from_bboxes(q.response_track, score) for q in annotations.queries()}


@pytest.fixture()
def tiny():
    return tiny_annotations()


@pytest.fixture()
def tiny_sub(tiny):
    return build_submission(tiny, gt_results(tiny))


# Writer -------------------------------------------------------------------------------------------
def test_build_mirrors_the_annotation_file_and_validates(tiny, tiny_sub):
    assert tiny_sub["version"] == "2" and tiny_sub["challenge"] == CHALLENGE
    videos = tiny_sub["results"]["videos"]
    assert [v["video_uid"] for v in videos] == ["v0", "v1"]
    assert [[c["clip_uid"] for c in v["clips"]] for v in videos] == [["c0", "c1"], ["c2"]]
    preds = videos[0]["clips"][0]["predictions"]
    assert [p["annotation_uid"] for p in preds] == ["c0-a0", "c0-a1"]
    assert set(preds[0]["query_sets"]) == {"1", "2", "3"}
    assert preds[0]["query_sets"]["3"] == {"bboxes": [], "score": 0.0}  # invalid set: empty entry
    box = preds[0]["query_sets"]["1"]["bboxes"][1]
    assert box == {"fno": 1, "x1": 11, "y1": 20, "x2": 41, "y2": 60}
    assert all(type(box[k]) is int for k in box)
    assert validate_submission(tiny_sub, tiny) == []


def test_build_writes_empty_answers_for_missing_results(tiny):
    results = gt_results(tiny)
    missing = QueryKey("c1", 0, "2")
    del results[missing]
    sub = build_submission(tiny, results)
    assert sub["results"]["videos"][0]["clips"][1]["predictions"][0]["query_sets"]["2"] == {
        "bboxes": [], "score": 0.0}
    assert validate_submission(sub, tiny) == []


def test_build_rounds_and_clips_boxes(tiny):
    key = QueryKey("c0", 0, "1")
    sub = build_submission(tiny, {key: PredictedTrack({7: (-3.2, 4.5, 0.2, 4.6)}, 0.5)})
    entry = sub["results"]["videos"][0]["clips"][0]["predictions"][0]["query_sets"]["1"]
    # x1 clipped at 0; x2 and y2 kept one pixel beyond x1 and y1
    assert entry == {"bboxes": [{"fno": 7, "x1": 0, "y1": 4, "x2": 1, "y2": 5}], "score": 0.5}
    assert validate_submission(sub, tiny) == []


def test_build_rejects_unwritable_results(tiny):
    with pytest.raises(DataError, match="no such valid query set"):
        build_submission(tiny, {QueryKey("c0", 0, "3"): PredictedTrack.empty()})
    with pytest.raises(DataError, match="contiguous"):
        build_submission(tiny, {QueryKey("c0", 0, "1"): PredictedTrack({1: (0, 0, 5, 5), 3: (0, 0, 5, 5)}, 1.0)})
    with pytest.raises(DataError, match="finite"):
        build_submission(tiny, {QueryKey("c0", 0, "1"): PredictedTrack({1: (0, 0, 5, 5)}, float("nan"))})


def test_write_then_read_round_trip(tiny, tmp_path):
    results = {QueryKey("c0", 1, "1"): PredictedTrack({3: (1, 2, 30, 40), 4: (2, 3, 31, 41)}, 0.75),
               QueryKey("c2", 0, "2"): PredictedTrack({}, 0.25)}
    path = tmp_path / "sub.json"
    write_submission(path, build_submission(tiny, results))
    tracks, problems, warnings = read_submission(json.loads(path.read_text()), tiny)
    assert problems == [] and warnings == []
    assert list(tracks) == [q.key for q in tiny.queries()]
    for key, track in tracks.items():
        expected = results.get(key, PredictedTrack.empty())
        assert track.boxes.tolist() == [[f, *b] for f, b in dict(expected.boxes).items()]
        assert track.score == expected.score


# Validator: one test per rule -----------------------------------------------------------------------
def _qs(sub, vi=0, ci=0, ai=0, key="1"):
    return sub["results"]["videos"][vi]["clips"][ci]["predictions"][ai]["query_sets"][key]


def _set_box(field, value):
    def mutate(sub):
        _qs(sub)["bboxes"][0][field] = value
    return mutate


def _pop(getter, key):
    def mutate(sub):
        getter(sub).pop(key)
    return mutate


RULES = {
    "version": (lambda s: s.update(version="1"), "version: expected '2'"),
    "challenge name": (lambda s: s.update(challenge="ego4d_nlq_challenge"), "challenge: expected"),
    "results object": (_pop(lambda s: s, "results"), "results: expected an object"),
    "videos list": (lambda s: s["results"].update(videos={}), "results.videos: expected a list"),
    "video count": (lambda s: s["results"]["videos"].append({"video_uid": "v9", "clips": []}),
                    "3 videos, the annotation file has 2"),
    "video order": (lambda s: s["results"]["videos"].reverse(), "expected video v0 here; found it at"),
    "video uid": (lambda s: s["results"]["videos"][1].update(video_uid="zz"), "expected video v1, found 'zz'"),
    "video uid present": (_pop(lambda s: s["results"]["videos"][1], "video_uid"), "missing field 'video_uid'"),
    "clip count": (lambda s: s["results"]["videos"][0]["clips"].pop(),
                   "1 clips, the annotation file has 2"),
    "clip uid": (lambda s: s["results"]["videos"][1]["clips"][0].update(clip_uid="zz"),
                 "expected clip c2, found 'zz'"),
    "annotation count": (lambda s: s["results"]["videos"][0]["clips"][0]["predictions"].pop(),
                         "1 annotations, the annotation file has 2"),
    "annotation uid": (lambda s: s["results"]["videos"][0]["clips"][1]["predictions"][0].update(
        annotation_uid="zz"), "expected annotation c1-a0, found 'zz'"),
    "query sets object": (lambda s: s["results"]["videos"][0]["clips"][0]["predictions"][0].update(
        query_sets=[]), "query_sets: expected an object"),
    "valid query set present": (
        _pop(lambda s: s["results"]["videos"][0]["clips"][0]["predictions"][0]["query_sets"], "2"),
        'query_sets["2"] (query c0_0_2: clip c0, annotation 0, query set "2"): missing'),
    "no unknown query set": (
        lambda s: s["results"]["videos"][0]["clips"][0]["predictions"][0]["query_sets"].update(
            {"7": {"bboxes": [], "score": 0.0}}), 'query set "7" is not in annotation 0'),
    "track object": (lambda s: s["results"]["videos"][0]["clips"][0]["predictions"][0]["query_sets"].update(
        {"1": [1, 2]}), "expected an object with 'bboxes' and 'score'"),
    "bboxes list": (lambda s: _qs(s).update(bboxes=None), ".bboxes: expected a list"),
    "box fields present": (_pop(lambda s: _qs(s)["bboxes"][0], "y2"), "missing field 'y2'"),
    "numeric coordinates": (_set_box("x1", "10"), ".x1: must be a finite number, got '10'"),
    "finite coordinates": (_set_box("y1", float("nan")), ".y1: must be a finite number, got nan"),
    "numeric frame number": (_set_box("fno", "0"), ".fno: must be a finite number, got '0'"),
    "whole frame number": (_set_box("fno", 0.5), ".fno: must be a whole frame number, got 0.5"),
    "contiguous frames": (_set_box("fno", 9), "frames not contiguous: 3 boxes on frames 1..9"),
    "one box per frame (when it breaks contiguity)": (_set_box("fno", 1), "3 boxes on frames 1..2"),
    "score present": (_pop(_qs, "score"), "missing field 'score'"),
    "score a number": (lambda s: _qs(s).update(score="high"), "score: must be a number, got 'high'"),
    "score not null": (lambda s: _qs(s).update(score=None), "score: must be a number, got None"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_validator_rule(rule, tiny, tiny_sub):
    mutate, expected = RULES[rule]
    mutate(tiny_sub)
    problems = validate_submission(tiny_sub, tiny)
    assert problems, f"rule {rule!r} not enforced"
    assert any(expected in p for p in problems), problems


def test_validator_rule_top_level_object(tiny):
    assert validate_submission([], tiny) == ["top level: expected an object, got list; every query is scored empty"]


def test_validator_accepts_unsorted_contiguous_boxes(tiny, tiny_sub):
    _qs(tiny_sub)["bboxes"].reverse()  # the official reader sorts boxes by frame
    assert validate_submission(tiny_sub, tiny) == []


def test_validator_accepts_what_the_official_scorer_accepts(tiny, tiny_sub):
    boxes = _qs(tiny_sub)["bboxes"]
    boxes[0].update(x1=-12.5, y1=-3, x2=1e4, y2=20.25)  # float, negative, beyond the frame
    boxes[1].update(x1=30, x2=10)  # flipped: a warning, scored as it is
    _qs(tiny_sub, ci=1)["score"] = float("nan")  # ranked first, as numpy sorts NaN
    _qs(tiny_sub, ci=1)["bboxes"][0]["fno"] = float(_qs(tiny_sub, ci=1)["bboxes"][0]["fno"])  # 5.0 is frame 5
    problems, warnings = check_submission(tiny_sub, tiny)
    assert problems == []
    assert any("x2 <= x1" in w and "query c0_0_1" in w for w in warnings)
    assert any(".score: nan" in w and "query c1_0_1" in w for w in warnings)


def test_problem_lists_stay_short_for_a_bad_track(tiny, tiny_sub):
    for box in _qs(tiny_sub)["bboxes"]:
        box.update(x1="1.5", y1="2.5")
    problems = validate_submission(tiny_sub, tiny)
    assert len(problems) == 4 and "and 3 more problems" in problems[-1]


def test_a_non_contiguous_track_is_named_and_scored_empty(tiny, tiny_sub):
    _qs(tiny_sub, ci=1)["bboxes"][0]["fno"] = 40  # c1, annotation 0, set "1"
    scores = score_submission(tiny_sub, tiny, tiny_raw())
    assert [p for p in scores.problems if "not contiguous" in p and "query c1_0_1" in p]
    assert scores.results[QueryKey("c1", 0, "1")].empty and scores.metrics["num_problems"] == 1
    assert scores.metrics["num_unreadable"] == 1 and scores.metrics["unreadable_queries"] == ["c1_0_1"]


# Reader: bad predictions are reported and scored empty ----------------------------------------------
def test_bad_predictions_are_reported_and_scored_empty(tiny, tiny_sub):
    _qs(tiny_sub, ci=1)["bboxes"][0]["x1"] = "-1.0"           # c1, annotation 0, set "1"
    tiny_sub["results"]["videos"][1]["clips"][0]["clip_uid"] = "zz"  # all of c2 unmatched
    scores = score_submission(tiny_sub, tiny, tiny_raw())
    metrics, results, problems = scores.metrics, scores.results, scores.problems
    assert any('clip c1, annotation 0, query set "1"' in p and "scored empty" in p for p in problems)
    assert any("clip c2" in p and "scored empty" in p for p in problems)
    empty = {k for k, r in results.items() if r.empty}
    assert empty == {QueryKey("c1", 0, "1"), QueryKey("c2", 0, "1"), QueryKey("c2", 0, "2")}
    assert metrics["num_queries"] == 8 and metrics["success"] == pytest.approx(100 * 5 / 8)
    assert sorted(metrics["unreadable_queries"]) == ["c1_0_1", "c2_0_1", "c2_0_2"]


def test_out_of_order_entries_are_still_matched_by_uid(tiny, tiny_sub):
    preds = tiny_sub["results"]["videos"][0]["clips"][0]["predictions"]
    preds.reverse()
    tracks, problems, _ = read_submission(tiny_sub, tiny)
    assert problems and all(not t.is_empty for t in tracks.values())


def test_reader_survives_garbage(tiny):
    for garbage in (None, [], {"results": {"videos": [None, 3]}}):
        tracks, problems, _ = read_submission(garbage, tiny)
        assert problems and all(t.is_empty for t in tracks.values())


# The real sample ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def val_sample_submission(ego4d_samples, tmp_path_factory):
    annotations_path = ego4d_samples / "vq_val_sample_v1.json"
    annotations = load_vq_annotations(annotations_path)
    path = tmp_path_factory.mktemp("vq2d_gt_sub") / "predictions.json"
    write_submission(path, build_submission(annotations, gt_results(annotations)))
    return annotations_path, path


def test_gt_submission_of_the_real_sample_scores_perfectly(val_sample_submission, tmp_path):
    annotations_path, path = val_sample_submission
    metrics = score_predictions_file(annotations_path, path, tmp_path)
    assert metrics["num_queries"] == 228
    # Integer rounding keeps every frame's IoU >= 0.5 and every stIoU >= 0.95 on this sample
    # (lowest 0.952), so even the averaged APs stay at 1.
    assert metrics["stAP@0.25"] == metrics["tAP@0.25"] == 1.0
    assert metrics["stAP"] == metrics["tAP"] == 1.0
    assert metrics["success"] == metrics["recovery"] == 100.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    rows = (tmp_path / "per_query.csv").read_text().splitlines()
    assert len(rows) == 229 and rows[0].startswith("query,clip_uid,annotation_index,query_set,tiou,stiou")
    assert not (tmp_path / "problems.txt").exists()


def test_submission_for_the_real_test_sample_carries_annotation_uids(ego4d_samples):
    annotations = load_vq_annotations(ego4d_samples / "vq_test_unannotated_sample_v1.json", strict=False)
    sub = build_submission(annotations, {})
    assert validate_submission(sub, annotations) == []
    first = annotations.videos[0].clips[0].annotations[0]
    assert sub["results"]["videos"][0]["clips"][0]["predictions"][0]["annotation_uid"] == first.annotation_uid
    assert sum(len(a["query_sets"]) for v in sub["results"]["videos"] for c in v["clips"]
               for a in c["predictions"]) >= len(annotations.queries()) == 368


def test_scoring_a_test_split_is_an_error(ego4d_samples, tmp_path):
    annotations = ego4d_samples / "vq_test_unannotated_sample_v1.json"
    path = tmp_path / "p.json"
    path.write_text("{}")
    with pytest.raises(DataError, match="no query set has a response_track"):
        score_predictions_file(annotations, path)


# Tools ----------------------------------------------------------------------------------------------------
def _run_tool(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_eval_tool_prints_metrics_json_last(val_sample_submission, tmp_path):
    annotations_path, path = val_sample_submission
    sub = json.loads(Path(path).read_text())
    _qs(sub)["score"] = "oops"  # one bad query: reported, scored empty, scoring continues
    bad = tmp_path / "preds.json"
    bad.write_text(json.dumps(sub))
    proc = _run_tool("tools/eval_vq2d.py", f"annotations={annotations_path}", f"predictions={bad}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert list(metrics) == METRIC_KEYS
    assert metrics["success"] == pytest.approx(100 * 227 / 228)
    assert any("score: must be a number" in line for line in lines[:-1])
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics  # default: beside predictions
    assert (tmp_path / "problems.txt").exists() and (tmp_path / "eval_vq2d_config.yaml").exists()
    # hydra runs in place and leaves no .hydra/ folder or log file behind
    assert not (tmp_path / ".hydra").exists() and not (REPO / ".hydra").exists()
    assert not (REPO / "eval_vq2d.log").exists()


def test_eval_tool_rejects_unknown_keys_and_missing_mode():
    assert _run_tool("tools/eval_vq2d.py", "no_such_key=1").returncode != 0
    proc = _run_tool("tools/eval_vq2d.py")
    assert proc.returncode != 0 and "predictions=" in proc.stderr


def test_validate_tool_exit_codes(val_sample_submission, tmp_path):
    annotations_path, path = val_sample_submission
    ok = _run_tool("tools/validate_submission.py", f"annotations={annotations_path}", f"submission={path}")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    sub = json.loads(Path(path).read_text())
    sub["challenge"] = "wrong"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(sub))
    proc = _run_tool("tools/validate_submission.py", f"annotations={annotations_path}", f"submission={bad}")
    assert proc.returncode != 0 and "challenge: expected" in proc.stdout
