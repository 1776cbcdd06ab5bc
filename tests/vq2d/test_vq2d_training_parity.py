"""Training settings as the originals: the baseline / improved presets against the two original
configs, crops cut from the rotated reference frame, shuffled extra references, the released
hard-negative mining (as an option), and frame AP on the clean validation frames."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from vq2d.data.annotations import BBox, QuerySet, VQQuery
from vq2d.data.crops import make_visual_crop, rotate_frame_with_box, rotated_visual_crop
from vq2d.data.frame_cache import FrameCache
from vq2d.data.samples import build_train_samples, eval_samples, extra_reference_boxes, strict_clean_track
from vq2d.data.train_dataset import PairMapper, collate_pairs
from vq2d.data.transforms import PairAugmentation
from vq2d.engine.build import build_augmentation, model_config
from vq2d.evaluation.detection_ap import FrameDetections, detection_ap, format_detection_ap
from vq2d.modeling.proposal_sampling import mine_hard_negatives

REPO = Path(__file__).resolve().parents[2]
W, H = 160, 120


def train_config(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs" / "vq2d"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# --------------------------------------------------------------------------- presets
def test_baseline_and_improved_presets_match_the_original_configs():
    base = train_config("preset=baseline")
    improved = train_config("preset=improved")
    for cfg in (base, improved):  # shared by configs/siam_rcnn_8_gpus.yaml and ..._e2e_125k.yaml
        assert cfg.batch_size == 64  # IMS_PER_BATCH
        assert cfg.model.rois_per_image == 64 and cfg.model.positive_fraction == 0.1  # ROI_HEADS
        assert cfg.model.hard_negatives_per_query == 64 and cfg.model.cross_batch_negatives  # HNM 64, cross batch
        assert cfg.samples.clean_filter and cfg.samples.extra_references == 10  # clean_aug, augmentation_limit 10
        assert list(cfg.augment.crop_rotation) == [-120, 120] and cfg.augment.crop_rotation_mode == "frame"
        assert list(cfg.augment.brightness) == [0.75, 1.333]
        assert cfg.model.weights.format == "detectron2"  # the COCO Mask R-CNN model-zoo .pkl
        assert cfg.model.stride_in_1x1 and cfg.model.input_format == "BGR"  # MSRA R-50 conventions
        assert cfg.solver.lr_head == 0.02 and cfg.hard_negatives.as_released is False
    assert base.negatives is False and improved.negatives is True  # clean_aug_train vs clean_aug_neg_train
    assert base.max_iter == 1_000_000 and list(base.solver.steps) == [200_000, 400_000]
    assert improved.max_iter == 125_000 and list(improved.solver.steps) == [50_000, 100_000]
    assert base.model.freeze_backbone and base.model.freeze_rpn
    assert not improved.model.freeze_backbone and not improved.model.freeze_rpn
    assert improved.solver.lr_backbone == 0.002
    # the tiny preset keeps the reference order it was tuned with
    assert train_config("preset=tiny").samples.extra_references_order == "track"


def test_hard_negatives_switch_reaches_the_model_config():
    cfg = train_config("preset=tiny", "hard_negatives.as_released=true")
    assert model_config(cfg)["hard_negatives_as_released"] is True
    assert model_config(train_config("preset=tiny"))["hard_negatives_as_released"] is False


# ----------------------------------------------------------------- hard-negative mining
def test_released_mining_indexes_the_negative_list_into_the_full_list():
    labels = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    logits = torch.tensor([[9.0, 0, 1, 2, 3, 4, 5, 6]])  # negatives at positions 1..7 score 0..6
    valid = torch.ones_like(labels, dtype=torch.bool)
    correct = mine_hard_negatives(logits, labels, valid, 2)
    assert torch.nonzero(correct[0]).flatten().tolist() == [0, 6, 7]  # positive + the two hardest
    released = mine_hard_negatives(logits, labels, valid, 2, as_released=True)
    # top-2 of the negative list are its entries 6 and 5, used as positions of the full list
    assert torch.nonzero(released[0]).flatten().tolist() == [0, 5, 6]
    # at most k negatives: everything kept, both ways
    few = mine_hard_negatives(logits[:, :3], labels[:, :3], valid[:, :3], 2, as_released=True)
    assert few.all()
    # the released rule may land on a positive: then fewer negatives enter the loss
    labels2 = torch.tensor([[0, 0, 0, 1, 0, 0]], dtype=torch.float32)
    logits2 = torch.tensor([[0.0, 1, 5, 9, 4, 3]])  # negatives (pos 0,1,2,4,5) score 0,1,5,4,3
    rel2 = mine_hard_negatives(logits2, labels2, torch.ones_like(labels2, dtype=torch.bool), 2, as_released=True)
    assert torch.nonzero(rel2[0]).flatten().tolist() == [2, 3]  # indices 2, 3 of the negative list; 3 is the positive


def test_released_mining_respects_invalid_pairs_without_cross_batch():
    labels = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.float32)
    valid = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    logits = torch.tensor([[5.0, 1, 2, 9, 9, 9], [9.0, 9, 9, 5, 2, 1]])
    keep = mine_hard_negatives(logits, labels, valid, 1, as_released=True)
    assert not (keep & ~valid).any()
    # row 0: pairs [0, 1, 2], negatives [1, 2]; the hardest is negative entry 1 -> pair entry 1 = position 1
    assert torch.nonzero(keep[0]).flatten().tolist() == [0, 1]
    # row 1: pairs [3, 4, 5], negatives [4, 5]; the hardest is negative entry 0 -> pair entry 0 = the positive
    assert torch.nonzero(keep[1]).flatten().tolist() == [3]
    assert torch.nonzero(mine_hard_negatives(logits, labels, valid, 1)[1]).flatten().tolist() == [3, 4]


# ------------------------------------------------------------------------ crop rotation
def test_rotating_the_frame_moves_the_box_with_it():
    image = np.zeros((40, 100, 3), np.uint8)
    image[10:20, 60:80] = 255  # the object: x 60..80, y 10..20
    rotated, box = rotate_frame_with_box(image, (60, 10, 80, 20), 90.0)
    assert rotated.shape[:2] == (100, 40)  # expanded canvas: width and height swap
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    assert (x2 - x1, y2 - y1) == (10, 20)
    inside = rotated[y1 + 2:y2 - 2, x1 + 2:x2 - 2]
    assert inside.min() > 200  # the object is where the box says
    same, box0 = rotate_frame_with_box(image, (60, 10, 80, 20), 0.0)
    assert same.shape == image.shape and np.allclose(box0, (60, 10, 80, 20))


def test_frame_rotation_crops_keep_real_context():
    image = np.full((300, 400, 3), 200, np.uint8)
    box = (180.0, 130.0, 220.0, 170.0)  # square box in the middle: its rotated context is real image
    frame_mode = rotated_visual_crop(image, box, 45.0, size=64)
    assert (frame_mode == 200).all()  # no pad value anywhere: the corners are image, not filler
    crop_mode = PairAugmentation(flip_prob=0.0, brightness=None, crop_rotation=(45, 45), crop_rotation_mode="crop")
    turned = crop_mode.crop(make_visual_crop(image, box, size=64), np.random.default_rng(0))
    assert tuple(turned[0, 0]) == (125, 125, 125)  # rotating the cut crop leaves pad-filled corners


def test_mapper_uses_the_rotated_reference_frame_and_keeps_rotation_off_draw_free(tmp_path):
    cache = FrameCache(tmp_path)
    rng = np.random.default_rng(0)
    for f in (10, 11, 65):
        cache.save("clip_a", f, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    q = _query(range(10, 12))
    sample = build_train_samples([q], negatives=False, extra_references=0)[0][0]
    cfg = train_config("preset=tiny", "augment.crop_rotation=[-120,120]", "augment.crop_rotation_mode=frame")
    aug = build_augmentation(cfg)
    assert aug.crop_rotation_mode == "frame"
    mapper = PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, augmentation=aug)
    a, b = mapper(sample, seed=3), mapper(sample, seed=3)
    assert torch.equal(a["crop"], b["crop"])  # reproducible from the key's seed
    assert not torch.equal(a["crop"], mapper(sample, seed=4)["crop"])
    # rotation off: the reference angle draws nothing (the tiny preset's stream is unchanged)
    off = PairAugmentation(crop_rotation=None, crop_rotation_mode="frame")
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    assert off.reference_rotation(g1) is None and g1.random() == g2.random()
    with pytest.raises(ValueError, match="crop_rotation_mode"):
        PairAugmentation(crop_rotation_mode="sideways")


def _cache_and_track_sample(tmp_path):
    """A frame cache of random frames and a training sample whose track spans frames 10-19."""
    cache = FrameCache(tmp_path)
    rng = np.random.default_rng(0)
    for f in [*range(10, 20), 65]:
        cache.save("clip_a", f, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return cache, build_train_samples([_query(range(10, 20))], negatives=False, extra_references=10)[0][0]


def test_mapper_cuts_k_crops_of_different_references(tmp_path):
    cache, sample = _cache_and_track_sample(tmp_path)
    assert len(sample.references) >= 4  # the visual crop + other frames of the track
    aug = PairAugmentation(crop_rotation=None, flip_prob=0.0, brightness=None)
    one = PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, augmentation=aug)
    four = PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, augmentation=aug, crops_per_pair=4)
    a, b = one(sample, seed=5), four(sample, seed=5)
    assert "extra_crops" not in a and b["extra_crops"].shape == (3, 3, 32, 32)
    assert torch.equal(a["crop"], b["crop"]) and torch.equal(a["image"], b["image"])  # k = 1's draws unchanged
    crops = torch.cat([b["crop"][None], b["extra_crops"]])
    assert len({c.numpy().tobytes() for c in crops}) == 4  # four different references
    batch = collate_pairs([b, four(sample, seed=6)])
    assert batch["crops"].shape == (8, 3, 32, 32) and torch.equal(batch["crops"][0], b["crop"])
    with pytest.raises(ValueError, match="crops_per_pair"):
        PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, crops_per_pair=0)


def test_pair_channel_shuffle_gives_frame_and_crops_one_channel_order(tmp_path):
    cache, sample = _cache_and_track_sample(tmp_path)
    plain_aug = PairAugmentation(crop_rotation=None, flip_prob=0.0, brightness=None)
    shuffle_aug = PairAugmentation(crop_rotation=None, flip_prob=0.0, brightness=None, pair_channel_shuffle=1.0)
    plain = PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, augmentation=plain_aug, crops_per_pair=3)
    shuffled = PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, augmentation=shuffle_aug,
                          crops_per_pair=3)
    orders = set()
    for seed in range(8):
        a, b = plain(sample, seed=seed), shuffled(sample, seed=seed)
        # the order that turns the plain frame into the shuffled one ...
        order = next(tuple(p) for p in itertools.permutations(range(3)) if torch.equal(a["image"][list(p)], b["image"]))
        orders.add(order)
        # ... is the order of the crop and of every extra crop too
        assert torch.equal(a["crop"][list(order)], b["crop"])
        assert torch.equal(a["extra_crops"][:, list(order)], b["extra_crops"])
    assert len(orders) > 2  # random orders
    assert plain_aug.pair_channels(np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="pair_channel_shuffle"):
        PairAugmentation(pair_channel_shuffle=2.0)


# ---------------------------------------------------------------- extra references
def _box(frame, w=30, h=20):
    return BBox(frame, 40, 30, w, h, original_width=W, original_height=H)


def _query(frames, name_index=0, query_frame=60, sizes=None):
    frames = list(frames)
    sizes = sizes or [(30, 20)] * len(frames)
    track = tuple(_box(f, *s) for f, s in zip(frames, sizes))
    qs = QuerySet(query_frame=query_frame, visual_crop=_box(65), object_title="mug", response_track=track)
    return VQQuery("video_a", "clip_a", name_index, None, "1", 5.0, 0, qs)


def test_extra_references_are_shuffled_before_taking_ten():
    q = _query(range(10, 40))  # 30 stricter-clean frames
    track_order = [b.frame_number for b in extra_reference_boxes(q, 10, "track")]
    assert track_order == list(range(10, 20))
    shuffled = [b.frame_number for b in extra_reference_boxes(q, 10, "shuffled", seed=0)]
    assert len(shuffled) == len(set(shuffled)) == 10 and shuffled != track_order
    assert set(shuffled) <= {b.frame_number for b in strict_clean_track(q.response_track)}
    assert shuffled == [b.frame_number for b in extra_reference_boxes(q, 10, "shuffled", seed=0)]  # deterministic
    assert shuffled != [b.frame_number for b in extra_reference_boxes(q, 10, "shuffled", seed=1)]
    few = _query(range(10, 15))  # no more than the limit: the same frames either way
    assert extra_reference_boxes(few, 10, "shuffled") == extra_reference_boxes(few, 10, "track")
    samples, _ = build_train_samples([q], negatives=False, extra_references=10)
    assert {r.frame_number for r in samples[0].references[1:]} <= set(shuffled)
    with pytest.raises(ValueError, match="extra_references_order"):
        extra_reference_boxes(q, 10, "random")


# ------------------------------------------------------------------- clean AP frames
def test_eval_frames_mark_the_clean_ones_and_ap_is_reported_on_them():
    sizes = [(30, 20)] * 5 + [(6, 4)]  # the last box is tiny: the clean filter drops it
    q = _query(range(10, 16), sizes=sizes, query_frame=30)
    samples, _ = eval_samples([q], negatives=True)
    positives = [s for s in samples if not s.is_negative]
    assert [s.clean for s in positives] == [True] * 5 + [False]
    assert all(s.clean for s in samples if s.is_negative)
    frames = []
    for s in samples:
        gt = np.zeros((0, 4)) if s.is_negative else np.array([s.box])
        # a perfect detector except on the unclean frame, where it misses
        boxes = gt if s.clean else np.array([[0, 0, 5, 5]])
        frames.append(FrameDetections(gt, boxes, np.ones(len(boxes)), clean=s.clean))
    result = detection_ap(frames)
    assert result["clean_positive"]["AP50"] == 100.0 and result["positive"]["AP50"] < 100.0
    assert result["num_clean_positive_frames"] == 5 and result["num_positive_frames"] == 6
    assert math.isfinite(result["clean_positive_negative"]["AP"])
    assert "clean_positive:" in format_detection_ap(result)


def test_pair_flip_mirrors_frame_and_all_crops_together(tmp_path):
    cache, sample = _cache_and_track_sample(tmp_path)

    def mapper(flip_prob, pair_flip=True):
        aug = PairAugmentation(crop_rotation=None, flip_prob=flip_prob, brightness=None, pair_flip=pair_flip)
        return PairMapper(cache=cache, crop_size=32, short_side=H, max_size=W, augmentation=aug, crops_per_pair=3)

    upright, half = mapper(0.0), mapper(0.5)  # with pair_flip both draw once per pair: the same stream
    states = set()
    for seed in range(10):
        a, b = upright(sample, seed=seed), half(sample, seed=seed)
        flipped = torch.equal(b["image"], a["image"].flip(-1))
        assert flipped or torch.equal(b["image"], a["image"])
        mirror = (lambda t: t.flip(-1)) if flipped else (lambda t: t)
        assert torch.equal(b["crop"], mirror(a["crop"]))  # the crop flipped with its frame ...
        assert torch.equal(b["extra_crops"], mirror(a["extra_crops"]))  # ... and every extra crop
        if flipped:  # the box flipped with the frame
            assert torch.allclose(b["boxes"][:, [0, 2]], W - a["boxes"][:, [2, 0]])
        states.add(flipped)
    assert states == {True, False}  # random per pair
    independent = mapper(0.5, pair_flip=False)  # the originals: frame and crop drawn on their own
    assert independent.augmentation.pair_flip_draw(np.random.default_rng(0)) is None
    disagree = 0
    for seed in range(10):
        a, c = upright(sample, seed=seed), independent(sample, seed=seed)  # same reference crop (first draw)
        disagree += torch.equal(c["image"], a["image"].flip(-1)) != torch.equal(c["crop"], a["crop"].flip(-1))
    assert disagree > 0  # some pairs show a crop mirrored against its frame
