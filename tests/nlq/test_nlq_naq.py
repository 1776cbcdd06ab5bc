"""NaQ creation: narrations inside / straddling / outside clips, uids, merge counts, output file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from episodic.errors import DataError
from nlq.data.annotations import load_nlq_annotations
from nlq.data.naq import EGOCLIP_COLUMNS, load_clip_pool, make_naq, match_narrations

REPO = Path(__file__).resolve().parents[2]


def _clip(uid, start, end, annotations=()):
    return {"clip_uid": uid, "video_start_sec": start, "video_end_sec": end, "clip_start_sec": 0.0,
            "clip_end_sec": end - start, "annotations": list(annotations)}


def _file(videos):
    return {"version": "2.0", "date": "240101", "description": "test",
            "videos": [{"video_uid": v, "split": "train", "clips": cs} for v, cs in videos.items()]}


NLQ_ANNOTATION = {"annotation_uid": "A1", "language_queries": [
    {"clip_start_sec": 1.0, "clip_end_sec": 4.0, "query": "Where is the cup?", "template": "Objects: Where is object X?"},
    {"clip_start_sec": 20.0, "clip_end_sec": 30.0, "query": "What did I cut?", "template": "Objects: What X did I Y?"}]}


def _row(video, start, end, text="#C C picks a cup", extra=""):
    return f"0\t{video}\t900\tnarration_pass_1\t0\t{start}\t{start}\t{end}\t{text}\t[0]\t[1]{extra}"


@pytest.fixture
def naq_inputs(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "nlq_train.json").write_text(json.dumps(_file({"V1": [_clip("C1", 100.0, 200.0, [NLQ_ANNOTATION])]})))
    (ann / "vq_train.json").write_text(json.dumps(_file({
        "V1": [_clip("C2", 150.0, 300.0), _clip("C1", 100.0, 200.0)],  # C1 again: counted once
        "V2": [_clip("C3", 0.0, 100.0)]})))
    (ann / "moments_train.json").write_text(json.dumps(_file({"V3": [_clip("C4", 50.0, 150.0)]})))
    rows = [
        _row("V1", 110, 112, "#C C picks a cup"),   # inside C1 only
        _row("V1", 160, 162, "#C C cuts a carrot"),  # inside C1 and C2
        _row("V1", 199, 201),                        # straddles C1's end, inside C2
        _row("V1", 290, 310),                        # straddles C2's end
        _row("V1", 400, 401),                        # outside every clip
        _row("V2", 10, 11, "#O A man opens the door"),  # inside C3
        _row("V4", 1, 2),                            # video without pool clips
        _row("V3", 40, 60),                          # straddles C4's start
        _row("V1", "abc", 112),                      # malformed: start not a number
        _row("V1", 110, 112, extra="\tsurplus"),     # malformed: 12 fields
        _row("V1", 120, 110),                        # malformed: ends before it starts
        _row("V3", 50, 150, "#C C washes hands"),    # exactly the clip C4: inside
    ]
    tsv = tmp_path / "egoclip.tsv"
    tsv.write_text("\t".join(EGOCLIP_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return tsv, ann


def test_naq_counts_uids_and_merge(naq_inputs, tmp_path):
    tsv, ann = naq_inputs
    out = tmp_path / "nlq_naq_train.json"
    stats = make_naq(tsv, ann, out, progress=False)
    assert (stats.narration_rows, stats.malformed, stats.narrations) == (12, 3, 9)
    assert (stats.inside_clip, stats.outside_clips, stats.queries_added) == (5, 4, 6)
    assert (stats.pool_clips, stats.clips_with_naq, stats.new_clips) == (4, 4, 3)
    assert stats.pool_sources == {"nlq_train.json": 1, "vq_train.json": 3, "moments_train.json": 1}
    assert stats.nlq_train_queries == 2

    loaded = load_nlq_annotations(out)
    clips = {c.clip_uid: (v.video_uid, c) for v, c in loaded.clips()}
    assert set(clips) == {"C1", "C2", "C3", "C4"}
    assert [v.video_uid for v in loaded.videos] == ["V1", "V2", "V3"]  # C2 added under V1
    c1 = clips["C1"][1]
    assert [a.annotation_uid for a in c1.annotations] == ["A1", "V1_C1"]  # NLQ first, NaQ appended
    assert [q.query for q in c1.annotations[1].language_queries] == ["#C C picks a cup", "#C C cuts a carrot"]
    assert c1.annotations[1].language_queries[0].window == pytest.approx((10.0, 12.0))
    c2 = clips["C2"][1]
    assert c2.annotations[0].annotation_uid == "V1_C2"
    assert [lq.window for lq in c2.annotations[0].language_queries] == [pytest.approx((10.0, 12.0)),
                                                                        pytest.approx((49.0, 51.0))]
    assert c2.duration == pytest.approx(150.0)
    assert clips["C4"][1].annotations[0].language_queries[0].window == pytest.approx((0.0, 100.0))
    assert {lq.template for _, c in loaded.clips() for a in c.annotations[1 if c.clip_uid == "C1" else 0:]
            for lq in a.language_queries} == {"NaQ"}
    queries = loaded.queries()
    assert len(queries) == 2 + 6
    assert sum(q.query.startswith("#") for q in queries) == 6
    meta = json.loads(out.read_text())["naq"]
    assert meta["counts"]["queries_added"] == 6


def test_naq_refuses_augmented_input_and_missing_pool(naq_inputs, tmp_path):
    tsv, ann = naq_inputs
    out = tmp_path / "first.json"
    make_naq(tsv, ann, out, progress=False)
    (ann / "nlq_train.json").write_text(out.read_text())
    with pytest.raises(DataError, match="already has annotation V1_C1"):
        make_naq(tsv, ann, tmp_path / "second.json", progress=False)
    with pytest.raises(DataError, match="none of"):
        load_clip_pool(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        make_naq(tmp_path / "nope.tsv", ann, tmp_path / "third.json", progress=False)
    assert not (tmp_path / "second.json").exists()


def test_naq_without_header_and_without_nlq_train(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "moments_train.json").write_text(json.dumps(_file({"V1": [_clip("C1", 0.0, 50.0)]})))
    tsv = tmp_path / "egoclip.tsv"
    tsv.write_text(_row("V1", 5, 6) + "\n" + _row("V1", 49, 51) + "\n")  # no header row
    stats = make_naq(tsv, ann, tmp_path / "out.json", progress=False)
    assert (stats.narrations, stats.queries_added, stats.nlq_train_queries) == (2, 1, 0)
    assert [q.window for q in load_nlq_annotations(tmp_path / "out.json").queries()] == [(5.0, 6.0)]


def test_vectorised_matching_equals_brute_force():
    rng = np.random.default_rng(0)
    videos = [f"v{i}" for i in range(6)]
    starts = rng.uniform(0, 500, 40)
    pool = pd.DataFrame({"video_uid": rng.choice(videos[:5], 40), "clip_uid": [f"c{i}" for i in range(40)],
                         "video_start_sec": starts, "video_end_sec": starts + rng.uniform(10, 200, 40)})
    t = rng.uniform(0, 700, 3000)
    narr = pd.DataFrame({"video_uid": rng.choice(videos, 3000), "start": t, "end": t + rng.uniform(0, 20, 3000),
                         "text": "#C C x"})
    n, c = match_narrations(narr, pool, chunksize=700, progress=False)
    clips = list(pool.itertuples(index=False))
    expected = sorted((j, i) for i, nv in enumerate(narr.itertuples(index=False)) for j, cl in enumerate(clips)
                      if nv.video_uid == cl.video_uid
                      and cl.video_start_sec - 1e-6 <= nv.start and nv.end <= cl.video_end_sec + 1e-6)
    assert list(zip(c.tolist(), n.tolist())) == expected
    assert len(expected) > 100


def test_make_naq_tool_writes_only_the_output(naq_inputs, tmp_path):
    tsv, ann = naq_inputs
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_naq.py"), f"narrations={tsv}",
                           f"annotations_dir={ann}", f"out={work / 'naq.json'}"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NaQ queries added: 6 in 4 clips" in proc.stdout
    assert sorted(p.name for p in work.iterdir()) == ["naq.json"]  # no outputs/ or .hydra/
    assert len(load_nlq_annotations(work / "naq.json").queries()) == 8


def test_clip_pool_reads_real_annotation_files(ego4d_samples, tmp_path):
    (tmp_path / "vq_train.json").write_bytes((ego4d_samples / "vq_val_sample_v1.json").read_bytes())
    (tmp_path / "nlq_train.json").write_bytes((ego4d_samples / "nlq_val_v2.json").read_bytes())
    pool, sources = load_clip_pool(tmp_path)
    assert sources == {"nlq_train.json": 415, "vq_train.json": 44}
    assert pool.clip_uid.is_unique and len(pool) <= 459
    assert (pool.video_end_sec > pool.video_start_sec).all()
