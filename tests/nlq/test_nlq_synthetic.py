"""Synthetic NLQ data: determinism, Ego4D formats, narrations, and a real feature signal."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nlq.data.synthetic import PRESETS, build_config, feature_model, generate_nlq
from nlq.data.synthetic_language import EGOCLIP_COLUMNS
from nlq.data.synthetic_world import OBJECTS, VERB_INDEX

# tiny but complete: every split, moments clips, textless queries, two feature views
TINY = dict(n_train_clips=3, n_val_clips=2, n_test_clips=2, n_moments_clips=2,
            clip_duration=(60.0, 80.0), feature_dim=32, clip_feature_dim=16)
ANNOTATIONS = ("nlq_train.json", "nlq_val.json", "nlq_test_unannotated.json", "moments_train.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth_nlq")
    return root / "v2", generate_nlq(root, seed=0, **TINY)


def _json(v2: Path, name: str) -> dict:
    return json.loads((v2 / "annotations" / name).read_text())


def _clips(data: dict):
    return [(v, c) for v in data["videos"] for c in v["clips"]]


def _text_files(v2: Path) -> dict[str, bytes]:
    files = [v2 / "annotations" / n for n in ANNOTATIONS] + [v2 / "narrations" / "egoclip.tsv"]
    files += sorted((v2 / "nlq_features").glob("*/feature_shapes.json"))
    return {str(p.relative_to(v2)): p.read_bytes() for p in files}


def test_same_seed_gives_identical_bytes_other_seed_differs(tiny, tmp_path):
    v2, summary = tiny
    again = generate_nlq(tmp_path / "a", seed=0, **TINY)
    other = generate_nlq(tmp_path / "b", seed=1, **TINY)
    assert again == summary
    first, second, third = _text_files(v2), _text_files(tmp_path / "a" / "v2"), _text_files(tmp_path / "b" / "v2")
    assert first == second
    assert all(first[k] != third[k] for k in first)
    uid = _clips(_json(v2, "nlq_val.json"))[0][1]["clip_uid"]
    assert torch.equal(torch.load(v2 / "nlq_features" / "synthetic" / f"{uid}.pt"),
                       torch.load(tmp_path / "a" / "v2" / "nlq_features" / "synthetic" / f"{uid}.pt"))


def test_summary_and_splits(tiny):
    v2, summary = tiny
    assert summary["feature_sets"] == {"synthetic": 32, "synthetic_clip": 16}
    for split, name, n in (("train", "nlq_train.json", 3), ("val", "nlq_val.json", 2),
                           ("test", "nlq_test_unannotated.json", 2), ("moments_train", "moments_train.json", 2)):
        data = _json(v2, name)
        assert data["version"] == "2.0" and set(data) >= {"date", "description", "videos"}
        assert summary[split]["clips"] == len(_clips(data)) == n
        assert summary[split]["queries"] == sum(len(a["language_queries"]) for _, c in _clips(data)
                                                for a in c["annotations"])
    assert summary["test"]["queries"] > 0 and summary["moments_train"]["queries"] == 0
    assert all(c["annotations"] == [] for _, c in _clips(_json(v2, "moments_train.json")))
    uids = [c["clip_uid"] for n in ANNOTATIONS for _, c in _clips(_json(v2, n))]
    assert len(uids) == len(set(uids)) == 9  # moments clips are extra clips, not NLQ ones
    train_videos = {v["video_uid"] for v in _json(v2, "nlq_train.json")["videos"]}
    val_videos = {v["video_uid"] for v in _json(v2, "nlq_val.json")["videos"]}
    assert not train_videos & val_videos


def test_every_clip_has_features_of_the_listed_length(tiny):
    v2, _ = tiny
    for view, dim in (("synthetic", 32), ("synthetic_clip", 16)):
        shapes = json.loads((v2 / "nlq_features" / view / "feature_shapes.json").read_text())
        clips = [c for n in ANNOTATIONS for _, c in _clips(_json(v2, n))]
        assert set(shapes) == {c["clip_uid"] for c in clips}
        for clip in clips:
            feat = torch.load(v2 / "nlq_features" / view / f"{clip['clip_uid']}.pt")
            assert feat.dtype == torch.float32 and feat.shape == (shapes[clip["clip_uid"]], dim)
            assert abs(feat.shape[0] - clip["clip_end_sec"] * 1.875) <= 1


def test_nlq_windows_and_times_are_consistent(tiny):
    v2, _ = tiny
    for name in ("nlq_train.json", "nlq_val.json"):
        for video, clip in _clips(_json(v2, name)):
            assert clip["clip_start_sec"] == 0 and 60 <= clip["clip_end_sec"] <= 80
            assert clip["video_end_sec"] - clip["video_start_sec"] == pytest.approx(clip["clip_end_sec"], abs=2e-3)
            assert clip["video_start_frame"] == round(clip["video_start_sec"] * 30)
            for ann in clip["annotations"]:
                assert ann["annotation_uid"]
                for q in ann["language_queries"]:
                    s, e = q["clip_start_sec"], q["clip_end_sec"]
                    assert 0 <= s and e <= clip["clip_end_sec"] and e - s > 1 / 30
                    assert q["video_start_sec"] == pytest.approx(clip["video_start_sec"] + s, abs=2e-3)
                    if "query" in q:
                        assert q["raw_tags"][:2] == [q["template"], q["query"]]
                        assert q["slot_x"] and q["verb_x"] and q["query"].endswith("?")


def test_textless_queries_keep_positions(tiny):
    v2, _ = tiny
    for name in ("nlq_train.json", "nlq_val.json"):
        textless = [(i, ann) for _, c in _clips(_json(v2, name)) for ann in c["annotations"]
                    for i, q in enumerate(ann["language_queries"]) if not q.get("query")]
        assert len(textless) == 1
        i, ann = textless[0]
        # a later query of the same annotation still has text: its query_idx is i+1 or more
        assert i < len(ann["language_queries"]) - 1 and ann["language_queries"][i + 1]["query"]
        assert "clip_start_sec" in ann["language_queries"][i]
    for _, clip in _clips(_json(v2, "nlq_test_unannotated.json")):
        for ann in clip["annotations"]:
            assert all(list(q) == ["query"] and q["query"] for q in ann["language_queries"])


def test_narrations_tsv(tiny):
    v2, summary = tiny
    with open(v2 / "narrations" / "egoclip.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert tuple(rows[0]) == EGOCLIP_COLUMNS and len(rows) == summary["narrations"] > 100
    assert [int(r["clip_idx"]) for r in rows] == list(range(len(rows)))
    assert all(r["clip_text"].startswith(("#C C ", "#O ")) for r in rows)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_uid"], []).append(r)
        t, s, e = float(r["narration_time"]), float(r["clip_start"]), float(r["clip_end"])
        assert (s + e) / 2 == pytest.approx(t, abs=1e-3) and 0 <= s < e <= float(r["video_dur"])
    # half window = beta_i / (2 alpha): beta_i the video's mean gap, alpha the mean of beta
    betas = {v: np.diff([float(r["narration_time"]) for r in rs]).mean() for v, rs in by_video.items()}
    alpha = np.mean(list(betas.values()))
    for v, rs in by_video.items():
        assert [int(r["narration_ind"]) for r in rs] == list(range(len(rs)))
        half = float(rs[0]["clip_end"]) - float(rs[0]["narration_time"])
        assert half == pytest.approx(betas[v] / (2 * alpha), abs=2e-3)
    # train and moments videos are narrated, and some narrations lie outside every clip
    clips = [(v["video_uid"], c) for n in ANNOTATIONS for v, c in _clips(_json(v2, n))]
    assert {v for v, _ in clips} <= set(by_video)
    outside = [r for r in rows if not any(v == r["video_uid"] and c["video_start_sec"] <= float(r["narration_time"])
                                          <= c["video_end_sec"] for v, c in clips)]
    assert 0 < len(outside) < len(rows)


def test_queries_use_the_narration_words(tiny):
    v2, _ = tiny
    texts = [r.split("\t")[8] for r in (v2 / "narrations" / "egoclip.tsv").read_text().splitlines()[1:]]
    queries = [q for _, c in _clips(_json(v2, "nlq_train.json")) for a in c["annotations"]
               for q in a["language_queries"] if q.get("template") == "Place: Where did I put X?"]
    assert queries
    for q in queries:
        assert any(f"puts the {q['slot_x']} " in t for t in texts)


def test_features_carry_the_activity_signal(tiny):
    """Inside a "where did I put X" window the mean feature points to the (put, X) embedding
    more than outside it, in both views."""
    v2, _ = tiny
    model = feature_model(0, build_config(**TINY))
    objects = {name: i for i, (name, _) in enumerate(OBJECTS)}
    margins = {"synthetic": [], "synthetic_clip": []}
    for _, clip in _clips(_json(v2, "nlq_train.json")) + _clips(_json(v2, "nlq_val.json")):
        for ann in clip["annotations"]:
            for q in ann["language_queries"]:
                if q.get("template") != "Place: Where did I put X?":
                    continue
                for view in margins:
                    feat = torch.load(v2 / "nlq_features" / view / f"{clip['clip_uid']}.pt").numpy()
                    emb = model.activity_embedding(view, VERB_INDEX["put"], objects[q["slot_x"]])
                    steps = (np.arange(len(feat)) + 0.5) / 1.875
                    inside = (steps >= q["clip_start_sec"]) & (steps <= q["clip_end_sec"])
                    cos = [float(x @ emb / np.linalg.norm(x) / np.linalg.norm(emb))
                           for x in (feat[inside].mean(0), feat[~inside].mean(0))]
                    margins[view].append(cos[0] - cos[1])
    for view, m in margins.items():
        assert len(m) >= 3 and min(m) > 0.05, (view, m)


def test_presets_and_bad_settings():
    assert set(PRESETS) == {"small", "large"}
    small, large = build_config("small"), build_config("large")
    assert 60 <= small.n_train_clips * np.mean(small.queries_per_clip) <= 100
    assert large.n_train_clips > small.n_train_clips and large.clip_duration[1] > small.clip_duration[1]
    assert build_config("small", feature_dim=8).feature_dim == 8
    with pytest.raises(ValueError, match="n_clips"):
        build_config("small", n_clips=3)
    with pytest.raises(ValueError, match="huge"):
        build_config("huge")
    with pytest.raises(ValueError, match="clip_duration"):
        build_config("small", clip_duration=(90.0, 60.0))
