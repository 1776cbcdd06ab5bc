"""NLQ data: feature pooling / loading, labels, NaQ expansion, collation, datasets from config."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from episodic.errors import DataError
from nlq.data.annotations import NLQQuery, load_nlq_annotations
from nlq.data.dataset import NLQCollator, NLQDataset, build_datasets, expand_window
from nlq.data.features import FeatureStore, pool_to_max_len
from nlq.data.labels import highlight_labels, normalize_query, span_iou, span_labels


def _tokenize(texts):
    return {"count": torch.tensor(len(texts)), "texts": list(texts)}


def _write_set(root, name, shapes: dict[str, int], dim: int, seed: int = 0, write_shapes: bool = True):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for uid, steps in shapes.items():
        torch.save(torch.randn(steps, dim, generator=gen), folder / f"{uid}.pt")
    if write_shapes:
        (folder / "feature_shapes.json").write_text(json.dumps(shapes))


def _query(clip, text, window, duration=20.0, idx=0, video="v0", video_start=0.0):
    return NLQQuery(video, clip, "ann", idx, text, window, duration, video_start)


# Features -----------------------------------------------------------------------------------
def test_pool_to_max_len_bin_edges_and_values():
    feat = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)  # [10, 2]
    pooled = pool_to_max_len(feat, 4)  # edges round([0, 2.5, 5, 7.5, 10]) = [0, 2, 5, 8, 10]
    assert pooled.shape == (4, 2)
    assert pooled[:, 0].tolist() == pytest.approx([0.5, 3.0, 6.0, 8.5])
    assert pool_to_max_len(feat, 10) is feat and pool_to_max_len(feat, 32).shape == (10, 2)
    big = torch.randn(1000, 3)
    pooled = pool_to_max_len(big, 128)
    edges = np.round(np.arange(129) / 128 * 1000).astype(int)
    assert torch.allclose(pooled[77], big[edges[77]:edges[78]].mean(0), atol=1e-6)
    assert torch.allclose(pooled[-1], big[edges[127]:].mean(0), atol=1e-6)


def test_feature_store_missing_file_names_clip_and_path(tmp_path):
    _write_set(tmp_path, "slowfast", {"clipA": 30}, dim=4)
    store = FeatureStore(tmp_path, ["slowfast"])
    assert store.clip_features("clipA").shape == (30, 4) and store.dims == [4]
    with pytest.raises(DataError, match="clip clipB.*" + re.escape(str(tmp_path / "slowfast" / "clipB.pt"))):
        store.clip_features("clipB")
    ds_queries = [_query("clipB", "where is it?", (1.0, 2.0))]
    with pytest.raises(DataError, match="clipB"):  # no feature_shapes entry -> loading fails early
        NLQDataset(ds_queries, store, max_len=16, train=True)


def test_feature_sets_concatenated_on_the_first_sets_time_grid(tmp_path):
    _write_set(tmp_path, "main", {"c": 40}, dim=6)
    _write_set(tmp_path, "clip", {"c": 39}, dim=2, seed=1)
    store = FeatureStore(tmp_path, ["main", "clip"], rate=1.875)
    feat = store.clip_features("c")
    assert feat.shape == (40, 8) and store.dims == [6, 2] and store.num_steps("c") == 40
    main, other = torch.load(tmp_path / "main" / "c.pt"), torch.load(tmp_path / "clip" / "c.pt")
    assert torch.equal(feat[:, :6], main)  # never cropped to the shortest
    assert torch.equal(feat[:39, 6:], other) and torch.equal(feat[39, 6:], other[38])  # same rate: step j = j
    _write_set(tmp_path, "fast", {"c": 80}, dim=3, seed=2)  # twice the rate: step j covers steps 2j, 2j+1
    fast = FeatureStore(tmp_path, ["main", "fast"], rates={"main": 1.875, "fast": 3.75})
    assert fast.rates == [1.875, 3.75] and fast.rate == 1.875
    aligned = fast.clip_features("c")
    assert aligned.shape == (40, 9)
    assert torch.equal(aligned[:, 6:], torch.load(tmp_path / "fast" / "c.pt")[1::2])  # centre (j+.5)/1.875 s
    with pytest.raises(DataError, match="'mystery': unknown rate.*data.features.rates.mystery"):
        FeatureStore(tmp_path, ["main", "mystery"], rates={"main": 1.875})
    assert FeatureStore(tmp_path, ["slowfast8x8_r101_k400", "egovlp", "internvideo", "clip"]).rates == [1.875] * 4


def test_per_video_features_are_sliced(tmp_path):
    _write_set(tmp_path, "sf", {"vidA": 100}, dim=3)
    store = FeatureStore(tmp_path, ["sf"], per="video", rate=1.875)
    feat = store.clip_features("clip1", "vidA", 10.0, 20.0)  # steps int(18.75)=18 .. int(37.5)+1=38
    assert torch.equal(feat, torch.load(tmp_path / "sf" / "vidA.pt")[18:38])
    assert store.check_clip("clip1", "vidA", 10.0, 20.0) == 20
    assert store.check_clip("clip3", "vidA", 40.0, 53.4) == 100 - 75  # ends one step short of int(53.4*1.875)=100
    with pytest.raises(DataError, match=r"clip clip2.*vidA\.pt has 100 steps.*\[50, 80\] s.*needs steps 93..150.*50 steps short"):
        store.check_clip("clip2", "vidA", 50.0, 80.0)
    assert store.num_steps("clip1", "vidA", 10.0, 20.0) == 20
    assert store.num_steps("clip2", "vidA", 50.0, 80.0) == 100 - 93  # video ends before the clip
    with pytest.raises(DataError, match="clip clip9.*vidZ.pt"):
        store.clip_features("clip9", "vidZ", 0.0, 5.0)


# Labels -------------------------------------------------------------------------------------
def test_span_labels_on_hand_made_windows():
    assert span_labels((2.0, 5.0), 10.0, 10) == (2, 4)  # exact steps 2..4
    assert span_labels((0.0, 10.0), 10.0, 10) == (0, 9)
    assert span_labels((9.5, 10.0), 10.0, 10) == (9, 9)
    assert span_labels((2.0, 5.0), 20.0, 10) == (1, 2)  # steps of 2 s: (2, 6) IoU .75 beats (2, 4) .67
    rng = np.random.default_rng(0)
    for _ in range(20):  # argmax-IoU over all spans j >= i (brute force)
        s, e = np.sort(rng.uniform(0, 30, 2))
        n = int(rng.integers(3, 25))
        best = max(((i, j) for i in range(n) for j in range(i, n)),
                   key=lambda ij: (span_iou(ij[0] * 30 / n, (ij[1] + 1) * 30 / n, (s, e)), -ij[0], -ij[1]))
        assert span_labels((s, e), 30.0, n) == best


def test_highlight_extension():
    assert np.flatnonzero(highlight_labels(2, 4, 10)).tolist() == [2, 3, 4]  # round(0.3) = 0
    assert np.flatnonzero(highlight_labels(10, 29, 40)).tolist() == list(range(8, 32))  # +-2 steps
    assert np.flatnonzero(highlight_labels(0, 19, 20)).tolist() == list(range(20))  # clipped
    assert highlight_labels(3, 3, 5).dtype == np.float32


def test_normalize_query():
    assert normalize_query("  Where did I put the Fire gun ? ") == "where did i put the fire gun?"


# Dataset ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    _write_set(tmp_path, "sf", {"c1": 37, "c2": 19, "short": 50}, dim=5)  # c1: 20 s at 1.875/s, c2: 10 s
    return FeatureStore(tmp_path, ["sf"], rate=1.875)


def test_naq_expansion_in_range_and_random_per_draw(store):
    queries = [_query("c1", "#C C picks a cup", (8.0, 10.0)), _query("c1", "where is the cup?", (8.0, 10.0), idx=1)]
    train = NLQDataset(queries, store, max_len=16, train=True, naq_expansion=2.5, seed=3,
                       naq_expansion_rule="seconds")
    windows = [train[0]["window"] for _ in range(30)]
    assert len(set(windows)) == 30  # a new expansion at every draw
    for s, e in windows:
        assert 0.0 <= s <= 8.0 and 10.0 <= e <= 20.0 and 2.0 <= e - s <= 5.0 + 1e-9
    assert train[1]["window"] == (8.0, 10.0)  # NLQ queries are never expanded
    assert NLQDataset(queries, store, max_len=16, train=False)[0]["window"] == (8.0, 10.0)
    assert NLQDataset(queries, store, max_len=16, train=True, naq_expansion=None)[0]["window"] == (8.0, 10.0)
    rng = np.random.default_rng(0)
    for _ in range(200):  # near the clip's edges and when S * w exceeds the duration
        s, e = expand_window((0.5, 19.0), 20.0, 5.0, rng)
        assert 0.0 <= s <= 0.5 and 19.0 <= e <= 20.0
    sample = train[0]
    assert sample["start_label"] <= sample["end_label"] and sample["highlight_label"].shape == (16,)


def test_naq_expansion_differs_across_dataloader_workers(store):
    queries = [_query("c1", "#C C cuts a carrot", (8.0, 10.0))] * 4
    loader = DataLoader(NLQDataset(queries, store, max_len=16, train=True, seed=0, naq_expansion_rule="seconds"),
                        batch_size=2,
                        num_workers=2, collate_fn=NLQCollator(_tokenize))
    windows = torch.cat([b["gt_window"] for b in loader])
    assert len({tuple(w.tolist()) for w in windows}) == 4


def test_collate_shapes_and_masks(store):
    queries = [_query("c1", "Where is the cup?", (2.0, 6.0)), _query("c2", "what did I open?", (1.0, 3.0), duration=10.0, idx=1)]
    dataset = NLQDataset(queries, store, max_len=64, train=True)
    batch = NLQCollator(_tokenize)([dataset[0], dataset[1]])
    assert batch["video"].shape == (2, 37, 5) and batch["video"].dtype == torch.float32
    assert batch["video_mask"].dtype == torch.bool and batch["video_mask"].sum(1).tolist() == [37, 19]
    assert batch["video"][1, 19:].abs().sum() == 0 and batch["highlight_label"][1, 19:].sum() == 0
    assert batch["feature_dims"] == [5] and batch["text"]["texts"] == ["Where is the cup?", "what did I open?"]
    assert batch["duration"].tolist() == pytest.approx([20.0, 10.0])
    assert batch["start_label"].dtype == torch.long and batch["end_label"].shape == (2,)
    assert batch["highlight_label"].shape == (2, 37) and batch["gt_window"].tolist() == [[2.0, 6.0], [1.0, 3.0]]
    assert [k.query_idx for k in batch["keys"]] == [0, 1]
    test_batch = NLQCollator(_tokenize)([NLQDataset([_query("c1", "x?", None)], store, 64, train=False)[0]])
    assert "start_label" not in test_batch and "gt_window" not in test_batch and test_batch["video"].shape == (1, 37, 5)
    pooled = NLQDataset(queries, store, max_len=8, train=True)[0]
    assert pooled["video"].shape == (8, 5) and pooled["highlight_label"].shape == (8,)


def test_short_windows_dropped_and_window_outside_features(store):
    queries = [_query("c1", "a?", (3.0, 3.0 + 1 / 30)), _query("c1", "b?", (3.0, 4.0), idx=1),
               _query("c1", "d?", (25.0, 28.0), idx=3)]  # window beyond the clip's features
    train = NLQDataset(queries, store, max_len=128, train=True)
    assert {k: train.stats[k] for k in ("queries", "dropped_short_window", "window_outside_features", "kept")} == \
        {"queries": 3, "dropped_short_window": 1, "window_outside_features": 1, "kept": 1}
    assert train[0]["window"] == (3.0, 4.0) and train[0]["duration"] == pytest.approx(20.0)
    assert len(NLQDataset(queries, store, max_len=128, train=False)) == 2  # kept (scored on the file)


def test_features_of_the_wrong_length_or_width_name_the_clip_and_file(store, tmp_path):
    """50 steps for a 100 s clip (187 expected at 1.875/s), as if feature_shapes.json said 187:
    an error naming the clip and the file (issue 11), or with skip_bad_features a counted skip."""
    (tmp_path / "sf" / "feature_shapes.json").write_text(json.dumps({"c1": 37, "c2": 19, "short": 187}))
    store = FeatureStore(tmp_path, ["sf"], rate=1.875)
    queries = [_query("c1", "b?", (3.0, 4.0)), _query("short", "c?", (5.0, 8.0), duration=100.0, idx=2),
               _query("short", "e?", (1.0, 2.0), duration=100.0, idx=4)]
    short_file = re.escape(str(tmp_path / "sf" / "short.pt"))
    with pytest.raises(DataError, match=f"clip short: {short_file} has 50 steps, but the clip lasts 100 s = 187 steps"):
        NLQDataset(queries, store, max_len=128, train=True)
    with pytest.raises(DataError, match="clip short"):
        NLQDataset(queries, store, max_len=128, train=False)
    skipped = NLQDataset(queries, store, max_len=128, train=False, skip_bad_features=True)
    assert len(skipped) == 1 and skipped.stats["bad_feature_clips"] == 1 and skipped.stats["bad_feature_queries"] == 2
    assert "short.pt" in skipped.bad_feature_examples[0] and "2 skipped in 1 clips" in skipped.summary()
    assert NLQDataset(queries[:1], store, max_len=128, train=True)[0]["video"].shape == (37, 5)
    torch.save(torch.randn(37, 7), tmp_path / "sf" / "wide.pt")  # a file of another width
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "sf" / "wide.pt")) + " has width 7, but set 'sf' has width 5"):
        NLQDataset([_query("wide", "w?", (1.0, 2.0))], store, max_len=128, train=True)


def test_real_nlq_val_loads_into_dataset(ego4d_samples, tmp_path):
    annotations = load_nlq_annotations(ego4d_samples / "nlq_val_v2.json")
    clips = [c for _, c in annotations.clips()][:3]
    _write_set(tmp_path, "slowfast", {c.clip_uid: int(c.duration * 1.875) for c in clips}, dim=8)
    wanted = {c.clip_uid for c in clips}
    queries = [q for q in annotations.queries() if q.clip_uid in wanted]
    dataset = NLQDataset(queries, FeatureStore(tmp_path, ["slowfast"]), max_len=128, train=False)
    assert dataset.stats["bad_feature_clips"] == 0
    short = sum(1 for q in queries if q.window[1] - q.window[0] <= 1 / 30)
    assert len(dataset) == len(queries) - short > 10 and dataset.stats["short_features"] == 0
    batch = NLQCollator(_tokenize)([dataset[i] for i in range(4)])
    assert batch["video"].shape == (4, 128, 8) and batch["video_mask"].all()
    for b in range(4):
        s, e = batch["gt_window"][b].tolist()
        n, d = 128, float(batch["duration"][b])
        i, j = int(batch["start_label"][b]), int(batch["end_label"][b])
        assert i * d / n <= e and (j + 1) * d / n >= s  # the label span overlaps the GT window


def test_build_datasets_from_config(tmp_path):
    ann = tmp_path / "v2" / "annotations"
    ann.mkdir(parents=True)
    lq = [{"clip_start_sec": 1.0, "clip_end_sec": 3.0, "query": "Where is it?"}, {"query": ""}]
    clip = {"clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 20.0, "clip_start_sec": 0.0,
            "clip_end_sec": 20.0, "annotations": [{"annotation_uid": "a1", "language_queries": lq}]}
    (ann / "nlq_val.json").write_text(json.dumps({"version": "2.0", "videos": [{"video_uid": "v", "clips": [clip]}]}))
    _write_set(tmp_path / "v2" / "nlq_features", "synthetic", {"c1": 37}, dim=4)
    datasets = build_datasets({"root": str(tmp_path), "max_len": 16}, splits=["val"])
    assert list(datasets) == ["val"] and len(datasets["val"]) == 1 and not datasets["val"].train
    assert datasets["val"][0]["video"].shape == (16, 4) and datasets["val"][0]["key"].query_idx == 0
    with pytest.raises(KeyError, match="data.features.nmes"):
        build_datasets({"root": str(tmp_path), "features": {"nmes": ["x"]}})
    with pytest.raises(DataError, match="nlq_train.json"):
        build_datasets({"root": str(tmp_path)}, splits=["train"])


def test_resolved_paths_are_absolute_for_a_relative_root(monkeypatch, tmp_path):
    """A relative data.root (the default `data/synthetic`) resolves once, even when the
    resolved config is resolved again (as checkpoint evaluation does)."""
    from nlq.data.dataset import resolve_data_config

    monkeypatch.chdir(tmp_path)
    once = resolve_data_config({"root": "data/synthetic"})
    assert once["features"]["root"] == str(tmp_path / "data/synthetic/v2/nlq_features")
    twice = resolve_data_config({k: once[k] for k in ("root", "annotations_dir", "features")})
    assert twice["features"]["root"] == once["features"]["root"]
    assert twice["annotations_dir"] == once["annotations_dir"]
