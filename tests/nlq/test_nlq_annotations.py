"""NLQ annotation loading on the real Ego4D files, round trips and validation errors."""
import pytest

from episodic.errors import AnnotationError
from nlq.data.annotations import NLQKey, load_nlq_annotations, parse_nlq_annotations, write_nlq_annotations


def _minimal():
    lq = {"clip_start_sec": 1.0, "clip_end_sec": 4.5, "video_start_sec": 11.0, "video_end_sec": 14.5,
          "template": "Place: Where did I put X?", "query": "Where did I put the mug?", "slot_x": "mug",
          "verb_x": "put", "raw_tags": []}
    return {"version": "2.0", "date": "x", "description": "d", "videos": [{"video_uid": "v", "split": "val", "clips": [
        {"clip_uid": "c", "video_start_sec": 10.0, "video_end_sec": 70.0, "clip_start_sec": 0.0, "clip_end_sec": 60.0,
         "annotations": [{"annotation_uid": "a", "language_queries": [lq, {**lq, "query": "  "}, dict(lq)]}]}]}]}


def test_real_val_counts(ego4d_samples):
    ann = load_nlq_annotations(ego4d_samples / "nlq_val_v2.json")
    queries = ann.queries()
    assert ann.num_language_queries() == 4554
    assert len(queries) == 4552  # two queries carry no text
    assert all(q.window is not None for q in queries)
    assert len({q.key for q in queries}) == len(queries)
    assert len(list(ann.clips())) == 415 and len(ann.videos) == 303


def test_real_val_keeps_query_idx_after_textless_queries(ego4d_samples):
    ann = load_nlq_annotations(ego4d_samples / "nlq_val_v2.json")
    seen = []
    for _, clip in ann.clips():
        for a in clip.annotations:
            for i, lq in enumerate(a.language_queries):
                if lq.query is None:
                    seen.append((clip.clip_uid, a.annotation_uid, i))
    assert len(seen) == 2
    keys = {q.key for q in ann.queries()}
    for clip_uid, ann_uid, idx in seen:
        assert NLQKey(clip_uid, ann_uid, idx) not in keys
        n = next(len(a.language_queries) for _, c in ann.clips() if c.clip_uid == clip_uid
                 for a in c.annotations if a.annotation_uid == ann_uid)
        if idx + 1 < n:
            assert NLQKey(clip_uid, ann_uid, idx + 1) in keys


def test_real_test_file(ego4d_samples):
    ann = load_nlq_annotations(ego4d_samples / "nlq_test_unannotated_v2.json")
    queries = ann.queries()
    assert ann.version == "1"
    assert len(queries) > 3000
    assert all(q.window is None for q in queries)


def test_skip_textless_and_round_trip(tmp_path):
    ann = parse_nlq_annotations(_minimal())
    assert [q.query_idx for q in ann.queries()] == [0, 2]
    q = ann.queries()[0]
    assert q.window == (1.0, 4.5) and q.clip_duration == 60.0 and q.video_start_sec == 10.0
    write_nlq_annotations(ann, tmp_path / "n.json")
    again = load_nlq_annotations(tmp_path / "n.json")
    assert again.queries() == ann.queries()
    assert again.to_dict() == ann.to_dict()


def test_real_val_round_trip(ego4d_samples, tmp_path):
    ann = load_nlq_annotations(ego4d_samples / "nlq_val_v2.json")
    write_nlq_annotations(ann, tmp_path / "v.json")
    assert load_nlq_annotations(tmp_path / "v.json").queries() == ann.queries()


LQ = "videos[0].clips[0].annotations[0].language_queries[0]"


@pytest.mark.parametrize("mutate, where, problem", [
    (lambda d: d.update(version=2), "version", "unknown version"),
    (lambda d: [d["videos"][0]["clips"][0].pop(k) for k in ("clip_end_sec", "video_end_sec")], "videos[0].clips[0]",
     "needs clip_end_sec, or video_start_sec and video_end_sec"),
    (lambda d: d["videos"][0]["clips"][0].update(video_end_sec=5.0), "videos[0].clips[0].video_end_sec", "ends before"),
    (lambda d: d["videos"][0]["clips"][0].update(clip_end_sec=0.0), "videos[0].clips[0].clip_end_sec", "ends before"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0].pop("annotation_uid"),
     "videos[0].clips[0].annotations[0]", "missing field 'annotation_uid'"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0].update(clip_end_sec=0.5),
     LQ + ".clip_end_sec", "window ends before it starts"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0].pop("clip_end_sec"),
     LQ, "needs both"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0].update(query=5),
     LQ + ".query", "expected a string"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0].update(language_queries={}),
     "videos[0].clips[0].annotations[0].language_queries", "expected a list"),
])
def test_validation_errors(mutate, where, problem):
    data = _minimal()
    mutate(data)
    with pytest.raises(AnnotationError) as info:
        parse_nlq_annotations(data, file="nlq_val.json")
    assert info.value.where == where
    assert problem in info.value.problem
    assert str(info.value).startswith("nlq_val.json: ")
