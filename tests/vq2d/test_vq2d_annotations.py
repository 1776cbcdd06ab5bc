"""VQ2D annotation loading on the real Ego4D samples, round trips and validation errors."""
import copy
import json

import pytest

from episodic.errors import AnnotationError, DataError
from vq2d.data.annotations import (BBox, QueryKey, load_vq_annotations, parse_vq_annotations,
                                   write_vq_annotations)


def _box(frame, x=10.0, y=20.0, w=30.0, h=40.0):
    return {"frame_number": frame, "x": x, "y": y, "width": w, "height": h, "rotation": 0,
            "original_width": 320, "original_height": 240, "video_frame_number": 6 * frame}


def _minimal():
    qs = {"is_valid": True, "errors": 0, "warnings": 0, "query_frame": 50, "query_video_frame": 300,
          "object_title": "mug", "visual_crop": _box(60), "response_track": [_box(10), _box(11), _box(12)]}
    return {"version": "2", "date": "260101", "description": "t", "manifest": "m", "videos": [
        {"video_uid": "v0", "split": "val", "clips": [
            {"clip_uid": "c0", "video_start_sec": 0.0, "video_end_sec": 20.0, "video_start_frame": 0,
             "video_end_frame": 600, "clip_fps": 5.0, "annotations": [
                 {"annotation_uid": "a0", "query_sets": {"1": qs, "2": {**copy.deepcopy(qs), "is_valid": False}}}]}]}]}


def test_real_val_sample_counts(ego4d_samples):
    ann = load_vq_annotations(ego4d_samples / "vq_val_sample_v1.json")
    queries = ann.queries()
    assert ann.version == "1"
    assert len(queries) == 228
    assert len({q.key for q in queries}) == 228
    assert sum(len(c.annotations) for _, c in ann.clips()) == 76
    assert len(list(ann.clips())) == 44
    assert sum(q.visual_crop.frame_number > q.query_frame for q in queries) == 151
    negative = sum(any(min(b.x, b.y) < 0 for b in q.response_track) or min(q.visual_crop.x, q.visual_crop.y) < 0
                   for q in queries)
    assert negative > 0  # negative coordinates are kept, not rejected or clipped
    assert all(q.annotation_uid is None for q in queries)  # v1: no annotation_uid
    assert all(q.response_track[-1].frame_number < q.query_frame for q in queries)
    q = queries[0]
    assert q.visual_crop.original_width == 1920 and q.visual_crop.original_height == 1080


def test_real_test_sample_has_no_tracks(ego4d_samples):
    ann = load_vq_annotations(ego4d_samples / "vq_test_unannotated_sample_v1.json")
    queries = ann.queries()
    assert len(queries) == 368  # one of the 369 query sets is invalid and skipped
    assert all(q.response_track is None for q in queries)
    assert all(q.annotation_uid for q in queries)


def test_round_trip_real_sample(ego4d_samples, tmp_path):
    ann = load_vq_annotations(ego4d_samples / "vq_val_sample_v1.json")
    write_vq_annotations(ann, tmp_path / "out.json")
    again = load_vq_annotations(tmp_path / "out.json")
    assert again.queries() == ann.queries()
    assert again.to_dict() == ann.to_dict()
    assert not list(tmp_path.glob(".*tmp"))


def test_round_trip_keeps_invalid_query_sets_and_uids(tmp_path):
    ann = parse_vq_annotations(_minimal())
    assert [q.key for q in ann.queries()] == [QueryKey("c0", 0, "1")]
    write_vq_annotations(ann, tmp_path / "a.json")
    raw = json.loads((tmp_path / "a.json").read_text())
    assert raw["videos"][0]["clips"][0]["annotations"][0]["query_sets"]["2"]["is_valid"] is False
    assert raw["videos"][0]["clips"][0]["annotations"][0]["annotation_uid"] == "a0"
    assert load_vq_annotations(tmp_path / "a.json").queries() == ann.queries()


def test_box_geometry():
    b = BBox(frame_number=3, x=-5.0, y=2.0, width=10.0, height=4.0)
    assert b.xyxy == (-5.0, 2.0, 5.0, 6.0)
    assert b.area == 40.0


def test_canonical_frame_mapping():
    ann = parse_vq_annotations(_minimal())
    clip = ann.videos[0].clips[0]
    clip.video_start_frame = 54000
    assert clip.canonical_frame(0) == 54000
    assert clip.canonical_frame(7) == 54042


def _qs(data):
    return data["videos"][0]["clips"][0]["annotations"][0]["query_sets"]["1"]


WHERE = 'videos[0].clips[0].annotations[0].query_sets["1"]'


@pytest.mark.parametrize("mutate, where, problem", [
    (lambda d: _qs(d)["response_track"][1].update(width=0), WHERE + ".response_track[1].width", "must be > 0"),
    (lambda d: _qs(d)["response_track"][2].update(height=-3), WHERE + ".response_track[2].height", "must be > 0"),
    (lambda d: _qs(d)["response_track"][2].update(frame_number=14), WHERE + ".response_track[2]", "non-contiguous"),
    (lambda d: _qs(d)["response_track"][0].pop("x"), WHERE + ".response_track[0]", "missing field 'x'"),
    (lambda d: _qs(d)["visual_crop"].update(y="12"), WHERE + ".visual_crop.y", "expected a number, got a string"),
    (lambda d: _qs(d).pop("query_frame"), WHERE, "missing field 'query_frame'"),
    (lambda d: _qs(d).update(query_frame=11), WHERE + ".response_track[2]", "not before the query frame"),
    (lambda d: _qs(d).update(response_track=[]), WHERE + ".response_track", "empty response track"),
    (lambda d: _qs(d)["response_track"][0].update(x=float("nan")), WHERE + ".response_track[0].x", "finite"),
    (lambda d: _qs(d)["visual_crop"].update(frame_number=-1), WHERE + ".visual_crop.frame_number", ">= 0"),
    (lambda d: d.update(version="7"), "version", "unknown version"),
    (lambda d: d.pop("videos"), "", "missing field 'videos'"),
    (lambda d: d["videos"][0]["clips"][0].pop("clip_uid"), "videos[0].clips[0]", "missing field 'clip_uid'"),
    (lambda d: d["videos"][0]["clips"][0].update(clip_fps=0), "videos[0].clips[0].clip_fps", "must be > 0"),
    (lambda d: d["videos"][0].update(clips={}), "videos[0].clips", "expected a list, got an object"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0].update(query_sets=[]),
     "videos[0].clips[0].annotations[0].query_sets", "expected an object"),
])
def test_validation_errors_name_file_place_and_problem(mutate, where, problem):
    data = _minimal()
    mutate(data)
    with pytest.raises(AnnotationError) as info:
        parse_vq_annotations(data, file="vq_val.json")
    err = info.value
    assert err.file == "vq_val.json"
    assert err.where == where
    assert problem in err.problem
    assert str(err).startswith("vq_val.json: ")


def test_lenient_mode_skips_bad_query_set_and_reports():
    data = _minimal()
    _qs(data)["response_track"][1]["width"] = 0
    ann = parse_vq_annotations(data, file="f.json", strict=False)
    assert ann.queries() == []
    assert len(ann.problems) == 1 and "width" in str(ann.problems[0])


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"version": "1", "videos": [')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON at line 1"):
        load_vq_annotations(bad)
    with pytest.raises(DataError, match="file not found"):
        load_vq_annotations(tmp_path / "nope.json")
