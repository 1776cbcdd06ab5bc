"""ReLER training augmentations as released in NaQ (nlq.data.augment): sliding-window crop and
video splicing, their use in NLQDataset, the data config and one training step of ReLER on the
tiny preset.

Features encode where they come from: row i of clip c is ``[c * 1000 + i, ...]``, so the rows
under a GT window tell whether its content survived an augmentation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from episodic.distributed import DistInfo
from nlq.data.annotations import NLQQuery
from nlq.data.augment import AugmentSample, SlidingWindowCrop, VideoSplice, apply_augmentations, build_augmentations
from nlq.data.dataset import NLQDataset, build_datasets, resolve_data_config
from nlq.data.features import FeatureStore
from nlq.data.synthetic import generate_nlq
from nlq.engine.build import build_nlq_model, build_train_loader, build_training_data, resolve_train_config
from nlq.engine.optim import WarmupLinearSchedule, build_optimizer
from nlq.engine.trainer import train_one_epoch

REPO = Path(__file__).resolve().parents[2]
DIM = 3


def _features(num_steps: int, clip: int = 0) -> torch.Tensor:
    """[T, DIM]: every value of row i is clip * 1000 + i."""
    return (clip * 1000 + torch.arange(num_steps, dtype=torch.float32))[:, None].repeat(1, DIM)


def _gt_rows(sample: AugmentSample) -> torch.Tensor:
    first, last = sample.gt_steps()
    return sample.features[first:last + 1, 0]


def _random_sample(rng: np.random.Generator) -> AugmentSample:
    num_steps = int(rng.integers(5, 200))
    duration = float(rng.uniform(0.9, 1.1) * num_steps / 1.875)
    start, end = np.sort(rng.uniform(0.0, duration, 2))
    if rng.random() < 0.2:  # windows touching the clip's edges
        start, end = (0.0, end) if rng.random() < 0.5 else (start, duration)
    return AugmentSample(_features(num_steps), (float(start), float(end)), duration)


def _donors(num_steps: int = 40, clip: int = 7):
    return lambda rng: _features(num_steps, clip)


class ScriptedRng:
    """Stands in for numpy's Generator: returns the scripted ``uniform`` / ``integers`` values
    in order and records the ``integers`` ranges asked for."""

    def __init__(self, uniforms=(), integers=(), randoms=()):
        self.uniforms, self.integers_out, self.randoms = list(uniforms), list(integers), list(randoms)
        self.ranges = []

    def uniform(self, low, high):
        value = self.uniforms.pop(0)
        assert low <= value <= high
        return value

    def integers(self, low, high):
        self.ranges.append((low, high))
        value = self.integers_out.pop(0)
        assert low <= value < high
        return value

    def random(self):
        return self.randoms.pop(0)


# Crop and splice as released --------------------------------------------------------------------
def test_released_crop_hand_cases():
    # T = 100 steps of 0.5 s; GT (10, 20) s: s = floor(0.2 * 99) = 19, e = ceil(0.4 * 99) = 40
    sample = AugmentSample(_features(100), (10.0, 20.0), 50.0)
    rng = ScriptedRng(uniforms=[0.5], integers=[7])
    out = SlidingWindowCrop()(sample, rng)  # L = int(100 * 0.5) = 50, a ~ U{max(0, 40 - 50) .. min(19, 50) - 1}
    assert rng.ranges == [(0, 19)]
    assert torch.equal(out.features, sample.features[7:57])
    assert out.window == pytest.approx((6.5, 16.5)) and out.duration == pytest.approx(25.0)
    # a long GT (s = 3, e = 96: 94 steps): L = int(100 * 0.5) = 50 is too short, so L ~ U{94 .. 99}
    sample = AugmentSample(_features(100), (2.0, 48.0), 50.0)
    rng = ScriptedRng(uniforms=[0.5], integers=[97, 2])
    out = SlidingWindowCrop()(sample, rng)
    assert rng.ranges == [(94, 100), (0, 3)] and torch.equal(out.features, sample.features[2:99])
    assert out.window == pytest.approx((1.0, 47.0)) and out.duration == pytest.approx(48.5)
    # the GT spans the clip: nothing to slide, the sample is kept whole
    sample = AugmentSample(_features(40), (0.0, 20.0), 20.0)
    out = SlidingWindowCrop()(sample, ScriptedRng(uniforms=[0.4]))
    assert torch.equal(out.features, sample.features) and out.window == (0.0, 20.0) and out.duration == 20.0
    # a = e - L (the range's low end) leaves step e out, as released: the window is clipped to the run
    sample = AugmentSample(_features(10), (3.0, 5.5), 10.0)  # s = floor(0.3 * 9) = 2, e = ceil(0.55 * 9) = 5
    rng = ScriptedRng(uniforms=[0.5], integers=[0])  # L = 5, a ~ U{0, 1}
    out = SlidingWindowCrop()(sample, rng)
    assert rng.ranges == [(0, 2)] and torch.equal(out.features, sample.features[0:5])
    assert out.window == pytest.approx((3.0, 5.0)) and out.duration == pytest.approx(5.0)


def test_released_crop_every_sample_ratio_and_gt_bounds():
    crop = SlidingWindowCrop()  # prob 1: every sample, as released
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(300):
        sample = _random_sample(rng)
        out = crop(sample, rng)
        num_steps = sample.num_steps
        first = int(np.floor(min(sample.window[0] / sample.duration, 1.0) * (num_steps - 1)))
        last = int(np.ceil(min(sample.window[1] / sample.duration, 1.0) * (num_steps - 1)))
        offset, length = int(out.features[0, 0]), out.num_steps
        assert torch.equal(out.features, sample.features[offset:offset + length])
        assert out.duration == pytest.approx(length * sample.step_sec)
        assert 0.0 <= out.window[0] <= out.window[1] <= out.duration + 1e-9
        assert offset <= first and last <= offset + length  # the GT steps, but possibly step e itself
        if last - first + 1 < int(0.4 * num_steps):
            assert int(0.4 * num_steps) <= length <= int(0.8 * num_steps)
            ratios.append(length / num_steps)
    assert min(ratios) < 0.45 and max(ratios) > 0.75


def test_released_splice_inserts_the_sample_into_the_donor():
    sample = AugmentSample(_features(10), (1.0, 3.0), 5.0)  # 0.5 s steps
    rng = ScriptedRng(randoms=[0.2], integers=[2])
    out = VideoSplice(0.5)(sample, rng, _donors(num_steps=6))
    assert rng.ranges == [(1, 5)]  # k ~ U{1 .. T' - 2}
    assert out.features[:, 0].tolist() == [7000, 7001, *range(10), 7002, 7003, 7004, 7005]
    assert out.window == pytest.approx((2.0, 4.0)) and out.duration == pytest.approx(8.0)
    assert torch.equal(_gt_rows(out), _gt_rows(sample))
    assert VideoSplice(0.5)(sample, ScriptedRng(randoms=[0.7]), _donors()) is sample  # the coin says no
    assert VideoSplice(1.0)(sample, ScriptedRng(randoms=[0.0]), _donors(num_steps=2)) is sample  # donor too short
    rng = np.random.default_rng(1)
    spots = {int((VideoSplice(1.0)(sample, rng, _donors(num_steps=6)).features[:, 0] < 7000).nonzero()[0])
             for _ in range(200)}
    assert spots == {1, 2, 3, 4}


def test_released_crop_then_splice_compose():
    augs = build_augmentations({"crop_prob": 1.0, "splice_prob": 1.0})
    rng = np.random.default_rng(3)
    for _ in range(50):
        sample = _random_sample(rng)
        out = apply_augmentations(augs, sample, rng, _donors(num_steps=30))
        own = out.features[:, 0] < 7000
        assert int((~own).sum()) == 30 and 0 < int(own.sum()) <= sample.num_steps
        rows = own.nonzero().flatten()
        assert rows[-1] - rows[0] + 1 == len(rows)  # the cropped sample in one piece
        assert out.duration == pytest.approx(out.num_steps * sample.step_sec)
        assert 0.0 <= out.window[0] <= out.window[1] <= out.duration + 1e-9


def test_splice_without_donor_is_identity():
    sample = AugmentSample(_features(30), (3.0, 5.0), 16.0)
    rng = np.random.default_rng(0)
    assert VideoSplice(1.0)(sample, rng, None) is sample
    assert VideoSplice(1.0)(sample, rng, lambda r: None) is sample
    with pytest.raises(ValueError, match="donor features"):
        VideoSplice(1.0)(sample, rng, lambda r: torch.zeros(10, DIM + 1))


# Probability, seeding, config -----------------------------------------------------------------
def test_probability_zero_is_identity_and_draws_nothing():
    sample = AugmentSample(_features(50), (3.0, 5.0), 26.0)
    rng = np.random.default_rng(4)
    state = rng.bit_generator.state
    augs = [SlidingWindowCrop(0.0), VideoSplice(0.0)]
    assert apply_augmentations(augs, sample, rng, _donors()) is sample
    assert apply_augmentations(None, sample, rng, _donors()) is sample
    assert rng.bit_generator.state == state
    for augmentation in (SlidingWindowCrop(0.5), VideoSplice(0.5)):
        changed = sum(augmentation(sample, rng, _donors()) is not sample for _ in range(400))
        assert 150 < changed < 250, augmentation  # p = 0.5


def test_seeded_reproducibility():
    augs = [SlidingWindowCrop(0.7), VideoSplice(0.7)]
    sample = AugmentSample(_features(120), (10.0, 20.0), 64.0)

    def run(seed: int) -> list[AugmentSample]:
        rng = np.random.default_rng(seed)
        return [apply_augmentations(augs, sample, rng, _donors(60)) for _ in range(20)]

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(x.features, y.features) and x.window == y.window and x.duration == y.duration
               for x, y in zip(a, b))
    assert any(x.window != y.window or x.features.shape != y.features.shape for x, y in zip(a, c))


def test_build_augmentations_from_config():
    assert build_augmentations(None) is None
    assert build_augmentations({"crop_prob": 0.0, "splice_prob": 0.0}) is None
    augs = build_augmentations({"crop_prob": 0.5, "crop_ratio": [0.3, 0.6], "splice_prob": 0.25})
    assert [type(a) for a in augs] == [SlidingWindowCrop, VideoSplice]
    assert (augs[0].prob, augs[0].min_ratio, augs[0].max_ratio, augs[1].prob) == (0.5, 0.3, 0.6, 0.25)
    assert build_augmentations({"crop_prob": 1.0, "crop_ratio": None})[0].min_ratio == 0.4  # null: the default
    with pytest.raises(KeyError, match="data.augment.crop"):
        build_augmentations({"crop": 0.5})
    with pytest.raises(ValueError, match="min_ratio"):
        build_augmentations({"crop_prob": 1.0, "crop_ratio": [0.9, 0.4]})
    with pytest.raises(ValueError, match="prob"):
        SlidingWindowCrop(1.5)
    assert resolve_data_config({})["augment"]["crop_prob"] == 0.0  # off by default
    with pytest.raises(KeyError, match="data.augment.flip"):
        resolve_data_config({"augment": {"flip": 1.0}})


# Dataset ------------------------------------------------------------------------------------
CLIP_STEPS = {"c1": 60, "c2": 45, "c3": 80}


@pytest.fixture
def feature_root(tmp_path) -> Path:
    folder = tmp_path / "v2" / "nlq_features" / "sf"
    folder.mkdir(parents=True)
    for i, (uid, steps) in enumerate(CLIP_STEPS.items(), start=1):
        torch.save(_features(steps, clip=i), folder / f"{uid}.pt")
    (folder / "feature_shapes.json").write_text(json.dumps(CLIP_STEPS))
    return tmp_path


def _queries() -> list[NLQQuery]:
    out = []
    for i, (uid, steps) in enumerate(CLIP_STEPS.items()):
        duration = steps / 1.875
        for j, (s, e) in enumerate([(0.0, 2.0), (0.3 * duration, 0.5 * duration), (duration - 3.0, duration),
                                    (1.0, duration - 1.0)]):
            out.append(NLQQuery("v", uid, f"a{i}", j, "#C C opens a door" if j == 1 else "where?", (s, e),
                                duration, 0.0))
    return out


@pytest.mark.parametrize("max_len", [16, 256])  # pooled and not pooled (a splice adds at most 80 steps)
def test_dataset_with_augmentations_yields_valid_labels(feature_root, max_len):
    store = FeatureStore(feature_root / "v2/nlq_features", ["sf"], rate=1.875)
    augs = [SlidingWindowCrop(0.5), VideoSplice(0.5)]
    dataset = NLQDataset(_queries(), store, max_len=max_len, train=True, seed=0, augmentations=augs)
    plain = NLQDataset(_queries(), store, max_len=max_len, train=True, seed=0)
    durations, donor_seen = set(), False
    for _ in range(15):
        for index in range(len(dataset)):
            sample = dataset[index]
            steps = sample["video"].shape[0]
            start, end = sample["window"]
            assert 0.0 <= start <= end <= sample["duration"] + 1e-9
            assert 0 <= sample["start_label"] <= sample["end_label"] < steps <= max_len
            assert sample["highlight_label"].shape == (steps,)
            assert sample["highlight_label"][sample["start_label"]:sample["end_label"] + 1].all()
            durations.add(round(sample["duration"], 6))
            naq = dataset.queries[index].query.startswith("#")  # expanded after augmenting (may reach donor steps)
            if max_len == 256 and not naq:  # not pooled: GT rows are the query's clip's own steps
                clip = list(CLIP_STEPS).index(dataset.queries[index].clip_uid) + 1
                first, last = AugmentSample(sample["video"], (start, end), sample["duration"]).gt_steps()
                assert (sample["video"][first:last + 1, 0] // 1000 == clip).all()
                donor_seen |= bool((sample["video"][:, 0] // 1000 != clip).any())
    assert len(durations) > 3 * len(CLIP_STEPS)  # crops change the duration
    assert donor_seen or max_len == 16
    # evaluation ignores augmentations; NLQ queries' windows are as in the file without them
    evaluation = NLQDataset(_queries(), store, max_len=max_len, train=False, augmentations=augs)
    assert torch.equal(evaluation[0]["video"], plain[0]["video"]) and evaluation[2]["window"] == plain[2]["window"]


def test_dataset_single_clip_has_no_donor(feature_root):
    store = FeatureStore(feature_root / "v2/nlq_features", ["sf"], rate=1.875)
    queries = [q for q in _queries() if q.clip_uid == "c2"]
    dataset = NLQDataset(queries, store, max_len=128, train=True, seed=0,
                         augmentations=[VideoSplice(1.0)])
    assert all((dataset[i]["video"][:, 0] // 1000 == 2).all() for i in range(len(dataset)) for _ in range(3))


def test_build_datasets_augments_train_splits_only(feature_root):
    annotations = feature_root / "v2/annotations"
    annotations.mkdir(parents=True)
    clips = [{"clip_uid": uid, "video_start_sec": 0.0, "video_end_sec": steps / 1.875,
              "clip_start_sec": 0.0, "clip_end_sec": steps / 1.875,
              "annotations": [{"annotation_uid": f"a_{uid}", "language_queries": [
                  {"query": "where?", "clip_start_sec": 1.0, "clip_end_sec": 4.0,
                   "video_start_sec": 1.0, "video_end_sec": 4.0}]}]}
             for uid, steps in CLIP_STEPS.items()]
    (annotations / "nlq_train.json").write_text(json.dumps({"version": "1.0", "videos": [
        {"video_uid": "v", "clips": clips}]}))
    cfg = {"root": str(feature_root), "splits": {"train": "nlq_train.json", "val": "nlq_train.json"},
           "features": {"names": ["sf"], "rate": 1.875}, "augment": {"crop_prob": 1.0, "splice_prob": 0.5}}
    datasets = build_datasets(cfg)
    assert [type(a) for a in datasets["train"].augmentations] == [SlidingWindowCrop, VideoSplice]
    assert datasets["val"].augmentations is None
    assert build_datasets({**cfg, "augment": {}})["train"].augmentations is None


# Training config and one ReLER step -------------------------------------------------------------
def _train_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        return compose(config_name="train", overrides=["preset=tiny", "num_workers=0", *overrides])


def test_presets_turn_augmentations_on_for_reler_only():
    for preset in ("tiny", "paper"):
        reler = resolve_train_config(_train_config(f"preset={preset}", "model=reler"))
        assert reler.data.augment.crop_prob == 1.0 and reler.data.augment.splice_prob == 0.5  # as released
        assert list(reler.data.augment.crop_ratio) == [0.4, 0.8]
        assert resolve_train_config(reler) == reler  # idempotent
        vslnet = resolve_train_config(_train_config(f"preset={preset}", "model=vslnet"))
        assert vslnet.data.augment.crop_prob == 0.0 and vslnet.data.augment.splice_prob == 0.0
    off = resolve_train_config(_train_config("model=reler", "data.augment.splice_prob=0"))
    assert off.data.augment.splice_prob == 0.0 and off.data.augment.crop_prob > 0


def test_reler_tiny_preset_trains_a_step_with_augmentations(tmp_path):
    torch.manual_seed(0)
    generate_nlq(tmp_path, seed=3, n_train_clips=2, n_val_clips=1, n_test_clips=1, n_moments_clips=1,
                 clip_duration=(30.0, 40.0), feature_dim=24, clip_feature_dim=12, queries_per_clip=(6, 8))
    cfg = resolve_train_config(_train_config("model=reler", "stage=nlq_only", f"data.root={tmp_path}"))
    data = build_training_data(cfg)
    assert [type(a) for a in data.train.augmentations] == [SlidingWindowCrop, VideoSplice]
    assert data.val.augmentations is None
    model = build_nlq_model(cfg.model, cfg.text_encoder, sum(data.train.features.dims), train_texts=data.train_texts)
    loader, _ = build_train_loader(data.train, model.text_encoder.tokenizer, 8, 0, 0,
                                   DistInfo(0, 1, 0, torch.device("cpu")))
    batch = next(iter(loader))
    assert (batch["start_label"] <= batch["end_label"]).all()
    assert (batch["end_label"] < batch["video_mask"].sum(1)).all()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    means, step = train_one_epoch(model, [batch], optimizer, WarmupLinearSchedule(base_lr=1e-3, total_steps=10),
                                  torch.device("cpu"), global_step=0, grad_clip=cfg.grad_clip)
    assert step == 1 and np.isfinite(means["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
