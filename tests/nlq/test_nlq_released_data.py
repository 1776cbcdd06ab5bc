"""NaQ's released data rules: window expansion on step indices, the 1.875 Hz grid, pooling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nlq.data.annotations import NLQQuery
from nlq.data.dataset import NLQDataset, build_datasets
from nlq.data.features import FeatureStore, pool_to_max_len, pool_to_max_len_released
from nlq.data.labels import released_duration, released_grid, span_labels, steps_to_seconds
from nlq.data.naq import expand_span_steps


class ScriptedRng:
    """Returns the given uniform draws in order and records the bounds asked for."""

    def __init__(self, *draws):
        self.draws, self.bounds = list(draws), []

    def uniform(self, low, high):
        self.bounds.append((low, high))
        return self.draws.pop(0)


@pytest.mark.parametrize("span, num_steps, draws, translate, expected, bounds", [
    # w = 4, c = 11.5; w' = 8; t = 1.5 -> c = 13: rint(9) = 9, rint(17) = 17
    ((10, 13), 128, (2.0, 1.5), True, (9, 17), [(1.0, 2.5), (-2.0, 2.0)]),
    # w = 1, c = 3, w' = 3, no translation: rint(1.5) = 2, rint(4.5) = 4 (halves to even)
    ((3, 3), 128, (3.0,), False, (2, 4), [(1.0, 2.5)]),
    # w = 2, c = 4.5, w' = 3: rint(3.0) = 3, rint(6.0) = 6
    ((4, 5), 128, (1.5, 0.0), True, (3, 6), [(1.0, 2.5), (-0.5, 0.5)]),
    # clipped at the start: c = 1, w' = 7.5: max(rint(-2.75), 0) = 0, rint(4.75) = 5
    ((0, 2), 10, (2.5, 0.0), True, (0, 5), [(1.0, 2.5), (-2.25, 2.25)]),
    # clipped at the end: c = 8.5, w' = 4, t = -1: rint(5.5) = 6, min(rint(9.5) = 10, 9) = 9
    ((8, 9), 10, (2.0, -1.0), True, (6, 9), [(1.0, 2.5), (-1.0, 1.0)]),
])
def test_expansion_on_step_indices_hand_cases(span, num_steps, draws, translate, expected, bounds):
    rng = ScriptedRng(*draws)
    assert expand_span_steps(*span, num_steps, 2.5, translate, rng) == expected
    assert rng.bounds == bounds


def test_expansion_statistics_and_bad_scale():
    rng = np.random.default_rng(0)
    widths = []
    for _ in range(2000):
        s, e = expand_span_steps(60, 63, 128, 2.5, True, rng)
        assert 0 <= s <= e <= 127
        widths.append(e - s)  # ~ w' (w = e - s + 1 counts the end step; the new span then counts one more)
    assert min(widths) >= 4 and max(widths) <= 10 and 6.5 < np.mean(widths) < 7.5  # E[w'] = 4 * 1.75 = 7
    with pytest.raises(ValueError, match="> 1"):
        expand_span_steps(1, 2, 10, 1.0, True, rng)


def test_released_grid_and_duration():
    duration = released_duration(20.3, 1.875)  # int(38.06) = 38 steps
    assert duration == pytest.approx(38 / 1.875)
    assert released_grid((2.0, 6.0), duration, 1.875) == pytest.approx((3 / 1.875, 11 / 1.875))
    assert released_grid((1.1, 1.3), duration, 1.875) == pytest.approx((2 / 1.875, 2 / 1.875))  # empty
    assert released_grid((19.0, 20.3), duration, 1.875) == pytest.approx((35 / 1.875, duration))
    start, end = released_grid((1.1, 1.3), duration, 1.875)
    assert span_labels((start, end), duration, 64) == (0, 0)  # an empty window: span (0, 0), as released


def test_released_pooling_leaves_the_last_step_out():
    feat = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)
    # edges round([0, 2.5, 5, 7.5, 10]) = [0, 2, 5, 8, 10] -> [0, 2, 5, 8, 9]
    assert pool_to_max_len_released(feat, 4)[:, 0].tolist() == [0.5, 3.0, 6.0, 8.0]
    assert pool_to_max_len(feat, 4)[:, 0].tolist() == [0.5, 3.0, 6.0, 8.5]  # ours: every step counted
    five = torch.arange(5, dtype=torch.float32)[:, None]
    # edges round([0, 1.25, 2.5, 3.75, 5]) = [0, 1, 2, 4, 5] -> [0, 1, 2, 4, 4]: the last bin is empty
    assert pool_to_max_len_released(five, 4)[:, 0].tolist() == [0.0, 1.0, 2.5, 4.0]
    assert pool_to_max_len_released(feat, 10) is feat
    big = torch.randn(1000, 3)
    pooled = pool_to_max_len_released(big, 128)
    edges = np.minimum(np.round(np.arange(129) / 128 * 1000).astype(int), 999)
    assert torch.allclose(pooled[5], big[edges[5]:edges[6]].mean(0), atol=1e-6)


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "sf"
    folder.mkdir()
    torch.save(torch.randn(37, 5, generator=torch.Generator().manual_seed(0)), folder / "c1.pt")
    (folder / "feature_shapes.json").write_text(json.dumps({"c1": 37}))
    return FeatureStore(tmp_path, ["sf"], rate=1.875)


def _query(text, window, idx=0):
    return NLQQuery("v0", "c1", "ann", idx, text, window, 20.0, 0.0)


def test_dataset_released_preparation(store):
    queries = [_query("where is the cup?", (2.0, 6.0))]
    released = NLQDataset(queries, store, max_len=16, train=False, preparation="released")[0]
    exact = NLQDataset(queries, store, max_len=16, train=False)[0]
    assert released["duration"] == pytest.approx(37 / 1.875) and exact["duration"] == 20.0
    assert released["window"] == pytest.approx((3 / 1.875, 11 / 1.875)) and exact["window"] == (2.0, 6.0)
    feat = torch.load(store.path("sf", "c1"))
    assert torch.allclose(released["video"], pool_to_max_len_released(feat, 16))
    assert not torch.allclose(released["video"][-1], exact["video"][-1])
    assert (released["start_label"], released["end_label"]) == span_labels(released["window"], released["duration"], 16)
    with pytest.raises(ValueError, match="preparation"):
        NLQDataset(queries, store, max_len=16, train=False, preparation="nope")


def test_dataset_expands_naq_labels_on_steps_by_default(store):
    queries = [_query("#C C picks a cup", (8.0, 10.0)), _query("where is the cup?", (8.0, 10.0), idx=1)]
    train = NLQDataset(queries, store, max_len=16, train=True, naq_expansion=2.5, seed=3)
    base = span_labels((8.0, 10.0), 20.0, 16)  # (6, 7) on 16 steps of 1.25 s
    spans = set()
    for _ in range(50):
        sample = train[0]
        s, e = sample["start_label"], sample["end_label"]
        spans.add((s, e))
        assert 0 <= s <= e <= 15 and 2 <= e - s + 1 <= 6  # w = 2 -> w' <= 5, +1 from rounding
        assert sample["window"] == pytest.approx(steps_to_seconds(s, e, 20.0, 16))
        assert sample["highlight_label"].sum() >= e - s + 1
    assert len(spans) > 2 and base in spans or len(spans) > 3
    assert (train[1]["start_label"], train[1]["end_label"]) == base  # NLQ queries are not expanded
    fixed = NLQDataset(queries, store, max_len=16, train=True, naq_expansion=2.5, seed=3, naq_translate=False)
    for _ in range(20):  # without translation the span grows symmetrically around its centre
        s, e = fixed[0]["start_label"], fixed[0]["end_label"]
        assert s <= 6 and e >= 7 and abs((s + e) / 2 - 6.5) <= 0.5


def test_data_config_keys(tmp_path, store):
    ann = tmp_path / "v2" / "annotations"
    ann.mkdir(parents=True)
    clip = {"clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 20.0, "clip_start_sec": 0.0, "clip_end_sec": 20.0,
            "annotations": [{"annotation_uid": "a", "language_queries": [
                {"clip_start_sec": 2.0, "clip_end_sec": 6.0, "query": "Where is it?"}]}]}
    (ann / "nlq_val.json").write_text(json.dumps({"version": "2.0", "videos": [{"video_uid": "v", "clips": [clip]}]}))
    features = tmp_path / "v2" / "nlq_features" / "synthetic"
    features.mkdir(parents=True)
    torch.save(torch.randn(37, 4), features / "c1.pt")
    val = build_datasets({"root": str(tmp_path), "max_len": 16, "preparation": "released",
                          "naq_expansion_rule": "seconds", "naq_translate": False}, splits=["val"])["val"]
    assert val.preparation == "released" and val.naq_expansion_rule == "seconds" and not val.naq_translate
    with pytest.raises(ValueError, match="naq_expansion_rule"):
        build_datasets({"root": str(tmp_path), "naq_expansion_rule": "minutes"}, splits=["val"])


def test_clip_lists_subsample_nlq_and_naq_queries_by_clip(tmp_path):
    from episodic.errors import DataError
    from nlq.engine.build import subsample_by_clip_lists

    queries = [NLQQuery("v", clip, "a", i, text, (1.0, 2.0), 20.0, 0.0)
               for i, (clip, text) in enumerate([("c1", "where?"), ("c1", "#C C x"), ("c2", "what?"), ("c2", "#C C y"),
                                                 ("c3", "who?")])]
    (tmp_path / "nlq.json").write_text(json.dumps(["c1", "c3"]))
    (tmp_path / "naq.json").write_text(json.dumps(["c2"]))
    kept, counts = subsample_by_clip_lists(queries, str(tmp_path / "nlq.json"), None)
    assert [q.query_idx for q in kept] == [0, 1, 3, 4]  # NaQ untouched, NLQ of c2 dropped
    assert counts == {"nlq": {"file": str(tmp_path / "nlq.json"), "clips": 2, "queries": 3, "kept": 2}}
    kept, counts = subsample_by_clip_lists(queries, str(tmp_path / "nlq.json"), str(tmp_path / "naq.json"))
    assert [q.query_idx for q in kept] == [0, 3, 4] and counts["naq"]["kept"] == 1
    assert subsample_by_clip_lists(queries, None, None) == (queries, {})
    (tmp_path / "bad.json").write_text(json.dumps({"c1": 1}))
    with pytest.raises(DataError, match="bad.json"):
        subsample_by_clip_lists(queries, str(tmp_path / "bad.json"), None)
