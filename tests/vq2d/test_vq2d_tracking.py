"""Trackers (docs/vq2d.md#tracking): association stop conditions, the bidirectional driver, OpenCV CSRT
on a tiny moving-square clip, and the plug-in registry."""
import numpy as np
import pytest

from vq2d.inference.detection_pass import QueryDetections
from vq2d.inference.tracking import TRACKERS, Tracker, make_tracker, register_tracker, track_bidirectional


def _moving_target_detections(num_frames=30, present=range(8, 20), score=0.9, step=2.0):
    """Per frame: the target (moving right by ``step`` px/frame) where present, plus a far distractor."""
    dets = QueryDetections.empty(num_frames, 4)
    for t in range(num_frames):
        boxes = [[60, 40, 70, 50]]  # distractor, never overlapping the target
        scores = [0.95]
        if t in present:
            x = 5 + step * t
            boxes.insert(0, [x, 5, x + 10, 15])
            scores.insert(0, score)
        order = np.argsort(scores)[::-1]
        dets.set_frame(t, np.array(boxes, np.float32)[order], np.array(scores, np.float32)[order])
    return dets


def _target_box(t, step=2.0):
    x = 5 + step * t
    return np.array([x, 5, x + 10, 15], float)


def _association(dets, **params):
    return lambda: make_tracker("association", {"min_iou": 0.3, "min_score": 0.3, **params}, dets)


def test_association_follows_the_target_and_stops_where_it_disappears():
    dets = _moving_target_detections()
    track = track_bidirectional(_association(dets), peak_frame=12, peak_box=_target_box(12), query_frame=30)
    assert sorted(track) == list(range(8, 20))  # backward + peak + forward, contiguous
    for t, box in track.items():
        assert box == pytest.approx(tuple(_target_box(t)))  # never jumps to the higher-scoring distractor


def test_association_stops_when_the_match_scores_too_low_or_moves_too_far():
    weak = _moving_target_detections(score=0.2)  # target present but below min_score
    track = track_bidirectional(_association(weak), peak_frame=12, peak_box=_target_box(12), query_frame=30)
    assert sorted(track) == [12]
    fast = _moving_target_detections(step=9.0)  # 9 px/frame on a 10 px box: IoU < 0.3 between frames
    track = track_bidirectional(_association(fast, max_center_shift=None), peak_frame=12,
                                peak_box=_target_box(12, 9.0), query_frame=30)
    assert sorted(track) == [12]
    # with a permissive IoU threshold the same target is followed
    track = track_bidirectional(_association(fast, min_iou=0.0, max_center_shift=None), peak_frame=12,
                                peak_box=_target_box(12, 9.0), query_frame=30)
    assert 13 in track


def test_association_follows_a_jump_within_max_center_shift_boxes():
    jumpy = _moving_target_detections(step=15.0)  # 15 px/frame on a 10 px box: no overlap, 1.5 box sizes
    start = dict(peak_frame=12, peak_box=_target_box(12, 15.0), query_frame=30)
    assert sorted(track_bidirectional(_association(jumpy, max_center_shift=None), **start)) == [12]  # IoU gate only
    assert sorted(track_bidirectional(_association(jumpy, max_center_shift=1.0), **start)) == [12]  # 1.5 > 1 box
    track = track_bidirectional(_association(jumpy), **start)  # the default: 2 box sizes
    assert sorted(track) == list(range(8, 20))  # and not on to the far distractor once the target is gone
    for t, box in track.items():
        assert box == pytest.approx(tuple(_target_box(t, 15.0)))
    with pytest.raises(ValueError, match="max_center_shift"):
        make_tracker("association", {"max_center_shift": -1.0}, jumpy)


def test_bidirectional_driver_respects_window_and_max_length():
    dets = _moving_target_detections(present=range(0, 30))
    full = track_bidirectional(_association(dets), peak_frame=12, peak_box=_target_box(12), query_frame=25)
    assert sorted(full) == list(range(0, 25))  # never reaches the query frame
    capped = track_bidirectional(_association(dets), peak_frame=12, peak_box=_target_box(12), query_frame=25,
                                 max_length=3)
    assert sorted(capped) == list(range(9, 16))
    with pytest.raises(ValueError, match="outside the search window"):
        track_bidirectional(_association(dets), peak_frame=25, peak_box=_target_box(0), query_frame=25)


class _Frames:
    """In-memory image source; counts the frames handed out."""

    def __init__(self, images):
        self.images, self.served = images, 0

    def iter_ordered(self, order, chunk_size=32):
        for i in order:
            self.served += 1
            yield i, self.images[i]


def _moving_square_clip(num_frames=24, visible=16, seed=0):
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    images, truth = [], {}
    for t in range(num_frames):
        img = np.full((64, 96, 3), 90, np.uint8) + rng.integers(0, 10, (64, 96, 3), dtype=np.uint8)
        if t < visible:
            x, y = 10 + 3 * t, 20 + t // 2
            img[y:y + 16, x:x + 16] = texture
            truth[t] = np.array([x, y, x + 16, y + 16], float)
        images.append(img)
    return images, truth


def _iou(a, b):
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_csrt_tracks_a_moving_square_and_loses_it_when_it_vanishes():
    images, truth = _moving_square_clip()
    source = _Frames(images)
    track = track_bidirectional(lambda: make_tracker("csrt", {}), peak_frame=8, peak_box=truth[8], query_frame=24,
                                images=source)
    frames = sorted(track)
    assert frames[0] == 0 and 14 <= frames[-1] <= 16  # square gone from frame 16 on
    assert all(_iou(track[t], truth[t]) > 0.6 for t in frames if t in truth)
    with pytest.raises(ValueError, match="needs frames"):
        track_bidirectional(lambda: make_tracker("csrt", {}), peak_frame=8, peak_box=truth[8], query_frame=24)


def test_opencv_lost_target_criteria():
    images, truth = _moving_square_clip()
    source = _Frames(images)

    def run(name, **params):
        return sorted(track_bidirectional(lambda: make_tracker(name, params), peak_frame=8, peak_box=truth[8],
                                          query_frame=24, images=source))

    assert len(run("kcf")) >= 10  # KCF follows the square too
    assert run("kcf", min_size_px=17) == [8]  # the 16 px square is "too small": lost at once
    assert run("csrt", psr_threshold=50.0) == [8]  # an unreachable peak-to-sidelobe ratio: lost at once
    served = source.served
    assert run("csrt", min_size_px=17) == [8] and source.served - served == 4  # peak + 1 frame each way


def test_registry_plugs_in_a_new_tracker():
    @register_tracker("test_constant")
    class Constant(Tracker):
        def __init__(self, *, detections=None, frames=2):
            self.left = frames

        def start(self, frame, box, image):
            self.box = box

        def step(self, frame, image):
            self.left -= 1
            return self.box if self.left >= 0 else None

    try:
        track = track_bidirectional(lambda: make_tracker("test_constant", {"frames": 2}), peak_frame=10,
                                    peak_box=np.array([0, 0, 4, 4.0]), query_frame=30)
        assert sorted(track) == list(range(8, 13))
        with pytest.raises(ValueError, match="already registered"):
            register_tracker("test_constant")(type("Other", (Constant,), {}))
    finally:
        TRACKERS.pop("test_constant", None)
    with pytest.raises(ValueError, match="unknown tracker"):
        make_tracker("no_such_tracker")
