"""VQ2D training samples (clean filter, extra references, negative frames, bad boxes), the
augmentation, the pair mapper over a hand-made frame cache, and the resumable sampler."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from episodic.errors import DataError
from vq2d.data.annotations import BBox, QuerySet, VQQuery
from vq2d.data.frame_cache import FrameCache
from vq2d.data.samples import (
    NEGATIVE,
    NEGATIVE_OTHER_VIDEO,
    POSITIVE,
    build_train_samples,
    clean_track,
    drop_missing_frames,
    eval_samples,
    frames_needed,
    negative_frames,
    strict_clean_track,
)
from vq2d.data.train_dataset import InfiniteSampler, PairDataset, PairMapper, collate_pairs
from vq2d.data.transforms import PairAugmentation, flip_horizontal, rotate_square, shrink_to

W, H = 160, 120


def box(frame: int, x: float = 40, y: float = 30, w: float = 30, h: float = 20) -> BBox:
    return BBox(frame, x, y, w, h, original_width=W, original_height=H)


def query(clip: str = "clip_a", video: str = "video_a", track_start: int = 10, sizes=None, query_frame: int = 60,
          crop: BBox | None = None, index: int = 0) -> VQQuery:
    sizes = sizes or [(30, 20)] * 6
    track = tuple(box(track_start + i, w=w, h=h) for i, (w, h) in enumerate(sizes))
    crop = crop or box(query_frame + 5)  # after the query frame: allowed
    qs = QuerySet(query_frame=query_frame, visual_crop=crop, object_title="mug", response_track=track)
    return VQQuery(video, clip, index, None, "1", 5.0, 0, qs)


# ----------------------------------------------------------------------------- samples
def test_clean_filter_drops_boxes_unlike_the_large_ones():
    sizes = [(30, 20)] * 5 + [(6, 4), (30, 5), (200, 110), (28, 21)]
    track = [box(i, w=w, h=h) for i, (w, h) in enumerate(sizes)]
    kept = {b.frame_number for b in clean_track(track)}
    assert kept == {0, 1, 2, 3, 4, 8}  # tiny (area 1/25), flat (aspect 4x) and huge (area 37x) removed
    strict = {b.frame_number for b in strict_clean_track([box(i, w=w, h=h) for i, (w, h) in
                                                          enumerate([(30, 20)] * 5 + [(30, 30), (40, 27)])])}
    assert strict == {0, 1, 2, 3, 4, 6}  # aspect 1.0 vs 1.5 is outside [0.85x, 1/0.85x]


def test_positive_samples_and_extra_references():
    q = query(sizes=[(30, 20)] * 14)
    samples, stats = build_train_samples([q], negatives=False, extra_references=10)
    assert [s.frame_number for s in samples] == list(range(10, 24))
    assert all(s.kind == POSITIVE and s.box == (40.0, 30.0, 70.0, 50.0) for s in samples)
    assert stats.positives == 14 and stats.extra_references == 10 and stats.negatives == 0
    for s in samples:
        assert s.references[0].frame_number == q.visual_crop.frame_number  # the visual crop first
        assert s.frame_number not in [r.frame_number for r in s.references[1:]]  # never its own frame
        assert 9 <= len(s.references) <= 11
    no_extra, _ = build_train_samples([q], negatives=False, extra_references=0)
    assert all(len(s.references) == 1 for s in no_extra)


def test_after_track_negatives_follow_the_reference_rule():
    q = query(track_start=10, sizes=[(30, 20)] * 6, query_frame=20)  # only f + 6 < 20 qualifies: f in 10..13
    frames = negative_frames(q, list(range(10, 16)), ratio=1.0, source="after_track", rng=np.random.default_rng(0))
    assert frames == [16, 17, 18, 19]
    samples, stats = build_train_samples([q], negatives=True)
    negatives = [s for s in samples if s.kind == NEGATIVE]
    assert [s.frame_number for s in negatives] == [16, 17, 18, 19] and stats.negatives == 4
    assert all(s.box is None and s.is_negative for s in negatives)
    off, stats_off = build_train_samples([q], negatives=False)
    assert all(not s.is_negative for s in off) and stats_off.negatives == 0


def test_outside_track_negatives_ratio_and_gap():
    q = query(track_start=30, sizes=[(30, 20)] * 6, query_frame=80, crop=box(10))
    rng = np.random.default_rng(0)
    frames = negative_frames(q, list(range(30, 36)), ratio=2.0, source="outside_track", rng=rng, min_gap=5)
    assert len(frames) == 12 and len(set(frames)) == 12
    assert all(f < 25 or 40 < f < 80 for f in frames)
    assert all(abs(f - 10) > 5 for f in frames)  # nor near the visual crop's frame
    everything = negative_frames(q, list(range(30, 36)), ratio=20.0, source="outside_track", rng=rng)
    assert 10 not in everything and len(everything) == 80 - 6 - 1
    with pytest.raises(ValueError, match="negative source"):
        negative_frames(q, [30], ratio=1.0, source="anywhere", rng=rng)


def test_other_video_negatives_come_from_other_videos():
    qa = query(clip="clip_a", video="video_a")
    qb = query(clip="clip_b", video="video_b", index=0)
    samples, stats = build_train_samples([qa, qb], negative_ratio=0.0, other_video_ratio=1.0)
    others = [s for s in samples if s.kind == NEGATIVE_OTHER_VIDEO]
    assert len(others) == stats.negatives_other_video == 12  # one per positive
    for s in others:
        assert s.box is None
        assert s.clip_uid != s.references[0].clip_uid  # the frame is from the other video


def test_bad_boxes_are_skipped_and_counted():
    outside = BBox(12, W + 10, 5, 30, 20, original_width=W, original_height=H)  # right of the frame
    sliver = BBox(13, -30, 10, 30.5, 20, original_width=W, original_height=H)  # 0.5 px left once clipped
    partly = BBox(14, -10, -10, 40, 30, original_width=W, original_height=H)  # clipped to (0, 0, 30, 20)
    q = query()
    track = tuple(b if b.frame_number not in (12, 13, 14) else {12: outside, 13: sliver, 14: partly}[b.frame_number]
                  for b in q.response_track)
    q = VQQuery(q.video_uid, q.clip_uid, 0, None, "1", 5.0, 0,
                QuerySet(query_frame=60, visual_crop=q.visual_crop, response_track=track))
    samples, stats = build_train_samples([q], clean=False, negatives=False)
    assert stats.bad_boxes == 2 and len(stats.problems) == 2 and "outside" in stats.problems[0]
    assert {s.frame_number: s.box for s in samples}[14] == (0.0, 0.0, 30.0, 20.0)
    bad_crop = query(crop=BBox(3, -50, -50, 20, 20, original_width=W, original_height=H))
    samples, stats = build_train_samples([bad_crop])
    assert samples == [] and stats.queries_bad_crop == 1 and "visual crop" in stats.problems[0]


def test_eval_samples_keep_every_response_frame_and_only_the_visual_crop():
    q = query(sizes=[(30, 20)] * 5 + [(4, 3)], query_frame=40)
    samples, _ = eval_samples([q, q], max_queries=1)
    positives = [s for s in samples if s.kind == POSITIVE]
    assert len(positives) == 6  # no clean filter
    assert all(len(s.references) == 1 for s in samples)
    assert any(s.is_negative for s in samples)


def test_missing_frames_drop_samples_or_extra_references():
    samples, _ = build_train_samples([query(sizes=[(30, 20)] * 4, query_frame=20)])
    needed = frames_needed(samples)
    cached = {c: set(f) for c, f in needed.items()}
    cached["clip_a"].discard(11)
    kept, problems = drop_missing_frames(samples, cached)
    assert 11 not in [s.frame_number for s in kept]
    assert len(problems) == 1 and "frame 11 of clip clip_a" in problems[0]
    assert all(11 not in [r.frame_number for r in s.references] for s in kept)
    cached["clip_a"].discard(25)  # the visual crop's frame
    kept, problems = drop_missing_frames(samples, cached)
    assert kept == [] and len(problems) == len(samples)


# -------------------------------------------------------------------------- transforms
def test_flip_moves_boxes_with_the_image():
    image = np.zeros((H, W, 3), np.uint8)
    image[30:50, 40:70] = 255
    flipped, boxes = flip_horizontal(image, np.array([[40.0, 30.0, 70.0, 50.0]]))
    assert boxes.tolist() == [[90.0, 30.0, 120.0, 50.0]]
    assert flipped[30:50, 90:120].min() == 255 and flipped[:, :90].max() == 0


def test_shrink_rotate_and_brightness():
    image = np.full((240, 320, 3), 100, np.uint8)
    small, scale = shrink_to(image, 128, 1000)
    assert small.shape == (128, 171, 3) and scale == pytest.approx(128 / 240)
    same, scale = shrink_to(image, 800, 1333)
    assert same is image and scale == 1.0  # never enlarged
    rotated = rotate_square(np.full((64, 64, 3), 200, np.uint8), 45.0)
    assert tuple(rotated[0, 0]) == (125, 125, 125) and tuple(rotated[32, 32]) == (200, 200, 200)
    aug = PairAugmentation(flip_prob=0.0, brightness=(1.3, 1.3), crop_rotation=None)
    bright, _ = aug.frame(image, np.zeros((0, 4)), np.random.default_rng(0))
    assert bright[0, 0, 0] == 130
    with pytest.raises(ValueError):
        PairAugmentation(flip_prob=1.5)


# ------------------------------------------------------------------ mapper and sampler
@pytest.fixture
def cache(tmp_path):
    cache = FrameCache(tmp_path / "cache")
    rng = np.random.default_rng(0)
    for frame in list(range(10, 22)) + [25]:
        cache.save("clip_a", frame, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return cache


def test_mapper_gives_pairs_and_negative_frames_have_no_box(cache):
    samples, _ = build_train_samples([query(query_frame=20)], extra_references=10)
    mapper = PairMapper(cache=cache, crop_size=32, short_side=60, max_size=100, augmentation=PairAugmentation())
    dataset = PairDataset(samples, mapper)
    positive = dataset[(0, (1, 2, 3))]
    assert positive["image"].shape == (3, 60, 80) and positive["image"].dtype == torch.uint8
    assert positive["crop"].shape == (3, 32, 32)
    assert positive["boxes"].shape == (1, 4) and positive["boxes"][0, 2] <= 80
    again = dataset[(0, (1, 2, 3))]
    assert torch.equal(positive["image"], again["image"]) and torch.equal(positive["crop"], again["crop"])
    negative_index = next(i for i, s in enumerate(samples) if s.is_negative)
    negative = dataset[(negative_index, (0,))]
    assert negative["boxes"].shape == (0, 4) and negative["kind"] == NEGATIVE
    batch = collate_pairs([positive, negative])
    assert batch["crops"].shape == (2, 3, 32, 32) and [t["boxes"].shape[0] for t in batch["targets"]] == [1, 0]


def test_mapper_rescales_boxes_when_the_cached_frame_has_another_size(cache):
    sample = build_train_samples([query(query_frame=20)], negatives=False)[0][0]
    cache.save("clip_a", sample.frame_number, np.zeros((2 * H, 2 * W, 3), np.uint8))
    mapper = PairMapper(cache=cache, crop_size=32, short_side=1000, max_size=1000)
    out = mapper(sample)
    assert out["image"].shape == (3, 2 * H, 2 * W)
    assert out["boxes"][0].tolist() == [80.0, 60.0, 140.0, 100.0]


def test_mapper_names_a_missing_frame(cache):
    sample = build_train_samples([query(query_frame=20)], negatives=False)[0][0]
    cache.path("clip_a", sample.frame_number).unlink()
    with pytest.raises(DataError, match=f"{sample.frame_number:06d}.jpg.*not in the frame cache"):
        PairMapper(cache=cache, crop_size=32, short_side=60, max_size=100)(sample)


def test_sampler_resumes_mid_stream_and_splits_ranks():
    full = list(itertools.islice(iter(InfiniteSampler(10, seed=3)), 25))
    resumed = list(itertools.islice(iter(InfiniteSampler(10, seed=3, start=13)), 12))
    assert resumed == full[13:]
    assert sorted(k[0] for k in full[:10]) == list(range(10))  # an epoch is a permutation
    assert [k[0] for k in full[:10]] != [k[0] for k in full[10:20]]  # reshuffled every epoch
    rank0 = [k[0] for k in itertools.islice(iter(InfiniteSampler(10, seed=3, rank=0, world_size=2)), 5)]
    rank1 = [k[0] for k in itertools.islice(iter(InfiniteSampler(10, seed=3, rank=1, world_size=2)), 5)]
    assert sorted(rank0 + rank1) == list(range(10))
    assert len({k[1] for k in full}) == len(full)  # every draw has its own augmentation seed
