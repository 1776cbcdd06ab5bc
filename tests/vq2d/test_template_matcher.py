"""The template-matcher baseline: peak and track on a hand-made clip, the split runner on a
tiny generated split (scored like tools/eval_vq2d.py), failures counted, the tool end to end."""
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from episodic.errors import DataError
from vq2d.baselines.evaluate import answer_clip, evaluate_template_matcher
from vq2d.baselines.template_matcher import DEFAULT_SCALES, TemplateMatcher, cut_template
from vq2d.data.annotations import load_vq_annotations
from vq2d.data.synthetic import generate_vq2d
from vq2d.evaluation.scoring import score_predictions_file
from vq2d.evaluation.validate import validate_submission_file
from vq2d.inference.frame_source import ClipFrames, original_size_of
from vq2d.inference.pool import queries_by_clip

REPO = Path(__file__).resolve().parents[2]
W, H = 120, 90
PATCH_W, PATCH_H = 16, 12


def _hand_made_clip():
    """12 gray frames [H, W] of smooth noise with a textured 16x12 patch (the template) pasted,
    resized as the matcher resizes it, at 1.5x on frames 0 and 3, 4, 6, 7 and at 1.05x on
    frame 5 (scales 0.6-1.5 do not include 1.0), moving 3 px right and 2 px down per frame;
    absent on 1, 2 and 8..11. Frame 0 holds an exact copy, frame 7 a slightly noisy one,
    frames 3..6 noisier ones. Returns (frames, patch, {frame: box})."""
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (PATCH_H, PATCH_W)).astype(np.uint8)
    frames, boxes = [], {}
    for t in range(12):
        frame = cv2.GaussianBlur(rng.integers(60, 200, (H, W)).astype(np.uint8), (9, 9), 3)
        if t == 0 or 3 <= t <= 7:
            x, y = 10 + 3 * t, 20 + 2 * t
            size = (17, 13) if t == 5 else (24, 18)  # round(16 * 1.05), round(12 * 1.05); 1.5x
            p = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR).astype(np.float64)
            p += rng.normal(0, {0: 0, 7: 8}.get(t, 25), p.shape)
            p = np.clip(p, 0, 255).astype(np.uint8)
            frame[y:y + size[1], x:x + size[0]] = p
            boxes[t] = (x, y, x + size[0], y + size[1])
        frames.append(frame)
    return frames, patch, boxes


def test_hand_made_clip_peak_is_the_latest_sighting_and_the_track_covers_only_it():
    frames, patch, boxes = _hand_made_clip()
    result = TemplateMatcher().match(patch, frames)
    assert result.scores[0] == pytest.approx(1.0, abs=1e-4)  # the exact copy: the clip's best
    assert 0.98 < result.scores[7] < result.scores[0] and result.scores[3:7].min() > 0.85
    assert result.scores[[1, 2, 8, 9, 10, 11]].max() < 0.6  # the object is absent
    assert result.peak_frame == 7  # the latest local maximum within 85 % of the best, not the best
    assert [row[0] for row in result.track] == [3, 4, 5, 6, 7]
    for row in result.track:
        assert tuple(row[1:]) == boxes[row[0]]  # each frame's box: its best scale's footprint
    assert result.score == result.scores[7]


def test_peak_is_the_latest_local_maximum_within_peak_ratio_of_the_best():
    m = TemplateMatcher(peak_ratio=0.85)
    scores = np.array([0.2, 0.9, 0.3, 1.0, 0.4, 0.84, 0.5, 0.86, 0.87, 0.1])
    assert m.find_peak(scores) == 8  # 0.84 is below 0.85 * 1.0; 0.86 (frame 7) is no local maximum
    assert TemplateMatcher(peak_ratio=1.0).find_peak(scores) == 3
    assert m.find_peak(np.array([-0.3, -0.1, -0.2])) == 1  # nothing matches: the best frame
    assert m.find_peak(np.array([0.5])) == 0


def test_track_stops_at_a_low_score_or_a_jump():
    m = TemplateMatcher(track_ratio=0.7)
    scores = np.array([0.9, 0.69, 0.8, 0.9, 1.0, 0.95, 0.9, 0.75])
    boxes = np.array([[10, 10, 20, 20]] * 7 + [[50, 50, 60, 60]], np.float64)
    assert m.grow_track(scores, boxes, 4) == (2, 6)  # frame 1 scores 0.69 <= 0.7; frame 7 does not overlap
    assert TemplateMatcher(track_ratio=0.0).grow_track(scores, boxes, 4) == (0, 6)
    result = m.answer(scores, boxes)
    assert result.peak_frame == 4 and [r[0] for r in result.track] == [2, 3, 4, 5, 6]
    assert m.answer(np.zeros(0), np.zeros((0, 4))).track == []  # query frame 0: nothing searched


def test_bad_templates_and_settings_are_clear_errors():
    image = np.full((40, 50, 3), 90, np.uint8)
    with pytest.raises(DataError, match="flat"):
        cut_template(image, (5, 5, 15, 15))
    with pytest.raises(DataError, match="outside"):
        cut_template(image, (60, 50, 70, 60))
    with pytest.raises(DataError, match="larger than"):
        TemplateMatcher(scales=(2.0,)).scaled_templates(np.zeros((30, 30), np.uint8), (40, 50))
    with pytest.raises(ValueError, match="peak_ratio"):
        TemplateMatcher(peak_ratio=1.5)
    with pytest.raises(ValueError, match="scales"):
        TemplateMatcher(scales=())
    assert DEFAULT_SCALES == pytest.approx(tuple(np.linspace(0.6, 1.5, 5)))
    assert TemplateMatcher.from_config({"scales": [1.0], "track_ratio": 0.5}) == TemplateMatcher((1.0,), 0.85, 0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic split (3 val clips, 2 test clips of 96x64 frames)."""
    root = tmp_path_factory.mktemp("vq2d_tmatch")
    generate_vq2d(root, seed=3, preset="small", num_train_clips=1, num_val_clips=3, num_test_clips=2,
                  frame_size=(96, 64), frames_per_clip=(30, 40), invalid_prob=0.0)
    return root


def _cfg(root, out, **overrides):
    cfg = OmegaConf.load(REPO / "configs/vq2d/template_match.yaml")
    for key in ("defaults", "hydra"):
        cfg.pop(key)
    return OmegaConf.merge(cfg, {"data": {"root": str(root)}, "output_dir": None if out is None else str(out)},
                           overrides)


def test_answer_clip_searches_every_frame_before_each_query_frame(data):
    annotations = load_vq_annotations(data / "v2/annotations/vq_val.json")
    clip_uid, queries = max(queries_by_clip(annotations.queries()).items(), key=lambda kv: len(kv[1]))
    with ClipFrames(clip_uid, data / f"v2/clips/{clip_uid}.mp4", original_size=original_size_of(queries)) as frames:
        outcomes = answer_clip(queries, frames, TemplateMatcher())
    for q, o in zip(queries, outcomes):
        assert o.error is None and o.frames_accessed == q.query_frame
        track_frames = [r[0] for r in o.track]
        assert track_frames == list(range(track_frames[0], track_frames[-1] + 1))  # contiguous
        assert 0 <= track_frames[0] <= o.peak_frame <= track_frames[-1] < q.query_frame
        assert -1.0 <= o.score <= 1.0 and o.score == o.peak_score


def test_a_bad_query_fails_alone_and_the_others_of_its_clip_are_answered(data):
    annotations = load_vq_annotations(data / "v2/annotations/vq_val.json")
    clip_uid, queries = max(queries_by_clip(annotations.queries()).items(), key=lambda kv: len(kv[1]))
    with ClipFrames(clip_uid, data / f"v2/clips/{clip_uid}.mp4", original_size=original_size_of(queries)) as frames:
        num_frames = frames.num_frames
        q = queries[0]  # two broken copies of it (other annotation indices: other names)
        past_end = replace(q, annotation_index=90, query=replace(q.query, query_frame=num_frames + 5))
        outside = replace(q, annotation_index=91, query=replace(q.query, visual_crop=replace(
            q.visual_crop, x=500.0, y=400.0)))
        outcomes = answer_clip([past_end, outside, *queries], frames, TemplateMatcher())
    assert "past the end" in outcomes[0].error and outcomes[0].track == []
    assert "bad visual crop" in outcomes[1].error and "outside" in outcomes[1].error and outcomes[1].track == []
    assert [o.name for o in outcomes[2:]] == [q.name for q in queries]
    assert all(o.error is None and o.track for o in outcomes[2:])


def test_split_is_scored_as_eval_vq2d_scores_its_predictions_file(data, tmp_path):
    out = tmp_path / "val"
    metrics = evaluate_template_matcher(_cfg(data, out))
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {"stAP@0.25", "stAP", "tAP@0.25", "tAP", "success", "recovery", "num_queries"} <= set(metrics)
    assert metrics["num_queries"] == len(load_vq_annotations(data / "v2/annotations/vq_val.json").queries())
    assert metrics["num_failed"] == 0 and metrics["search_efficiency"] == 0.0
    rescored = score_predictions_file(data / "v2/annotations/vq_val.json", out / "predictions.json", tmp_path / "re")
    assert {k: rescored[k] for k in ("stAP@0.25", "stAP", "success", "recovery")} == \
        {k: metrics[k] for k in ("stAP@0.25", "stAP", "success", "recovery")}
    assert metrics["success"] > 0  # the generated objects are found in some clips
    assert (out / "per_query.csv").is_file() and (out / "config.yaml").is_file()
    assert OmegaConf.load(out / "config.yaml").matcher.peak_ratio == 0.85
    test_out = tmp_path / "test"
    summary = evaluate_template_matcher(_cfg(data, test_out, split="test_unannotated"))
    problems, num = validate_submission_file(data / "v2/annotations/vq_test_unannotated.json",
                                             test_out / "submission.json")
    assert problems == [] and num == summary["num_queries"] > 0


def test_tool_counts_a_missing_clip_as_failed_queries_and_exits_3(data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data / "v2", root / "v2")
    annotations = load_vq_annotations(root / "v2/annotations/vq_val.json")
    by_clip = queries_by_clip(annotations.queries())
    missing = next(iter(by_clip))
    (root / f"v2/clips/{missing}.mp4").unlink()
    out = tmp_path / "out"
    args = [f"data.root={root}", "split=val", f"output_dir={out}", "workers=2"]
    proc = subprocess.run([sys.executable, "tools/template_match_vq2d.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["num_failed"] == len(by_clip[missing])
    assert {f["id"] for f in metrics["failed"]} == {q.name for q in by_clip[missing]}
    assert all("clip file not found" in f["reason"] for f in metrics["failed"])
    rows = {r["name"]: r for r in json.loads((out / "per_query.json").read_text())}
    assert all(rows[q.name]["track_length"] == 0 for q in by_clip[missing])
    assert all(rows[q.name]["error"] is None and rows[q.name]["track_length"] > 0
               for c, qs in by_clip.items() if c != missing for q in qs)


def test_bad_settings_are_data_errors_before_anything_runs(data, tmp_path):
    with pytest.raises(DataError, match="peak_ratio"):
        evaluate_template_matcher(_cfg(data, tmp_path / "a", matcher={"peak_ratio": 2.0}))
    with pytest.raises(DataError, match="output_dir"):
        evaluate_template_matcher(_cfg(data, None))
    with pytest.raises(DataError, match="workers"):
        evaluate_template_matcher(_cfg(data, tmp_path / "b", workers=0))
    assert not (tmp_path / "a").exists()
