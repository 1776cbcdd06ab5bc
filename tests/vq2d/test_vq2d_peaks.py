"""Peak detection on score curves (docs/vq2d.md#peaks) and the no-peak fallback of the pipeline."""
import numpy as np
import pytest

from vq2d.data.annotations import BBox, QuerySet, VQQuery
from vq2d.inference.detection_pass import QueryDetections
from vq2d.inference.peaks import PeakParams, find_latest_peak, smooth_curve
from vq2d.inference.pipeline import TrackingSettings, answer_query


def _bump(curve, centre, height, half_width=4):
    curve[centre - half_width:centre + half_width + 1] = height
    return curve


def _query(query_frame):
    crop = BBox(frame_number=0, x=1.0, y=1.0, width=5.0, height=5.0, original_width=64, original_height=48)
    return VQQuery("video", "clip", 0, None, "1", 5.0, 0, QuerySet(query_frame=query_frame, visual_crop=crop))


def test_latest_peak_is_chosen_not_the_highest():
    curve = np.full(100, 0.1)
    _bump(curve, 20, 0.95)  # the most confident sighting, early
    _bump(curve, 70, 0.6)  # a weaker but more recent one
    result = find_latest_peak(curve, PeakParams())
    assert not result.fallback
    assert abs(result.frame - 70) <= 1
    assert len(result.peaks) == 2 and abs(result.peaks[0] - 20) <= 1
    assert result.smoothed_score == pytest.approx(0.6)


def test_min_score_and_height_drop_weak_late_peaks():
    curve = _bump(_bump(np.full(100, 0.1), 20, 0.95), 70, 0.4)
    assert abs(find_latest_peak(curve, PeakParams()).frame - 70) <= 1
    assert abs(find_latest_peak(curve, PeakParams(min_score=0.5)).frame - 20) <= 1
    assert abs(find_latest_peak(curve, PeakParams(height=0.5)).frame - 20) <= 1


def test_peaks_closer_than_distance_keep_one_and_spikes_are_filtered():
    curve = _bump(_bump(np.full(100, 0.1), 50, 0.9), 60, 0.8)  # 10 frames apart < distance 25
    result = find_latest_peak(curve, PeakParams())
    assert len(result.peaks) == 1 and abs(result.frame - 50) <= 1  # the higher of the two survives
    spiky = np.full(60, 0.1)
    spiky[30] = 1.0  # one-frame spike: the median filter removes it
    assert smooth_curve(spiky, 5).max() == pytest.approx(0.1)
    assert find_latest_peak(spiky, PeakParams()).fallback


def test_sightings_at_the_ends_of_the_curve_are_peaks_only_with_pad_edges():
    published = PeakParams(pad_edges=False)
    until_query = _bump(np.full(60, 0.05), 20, 0.5)
    until_query[50:] = 0.7  # in view until the last searched frame: the most recent sighting
    ours = find_latest_peak(until_query, PeakParams())
    assert not ours.fallback and 50 <= ours.frame <= 59
    theirs = find_latest_peak(until_query, published)
    assert abs(theirs.frame - 20) <= 1  # the earlier sighting, the only maximum inside the curve
    from_start = np.full(60, 0.05)
    from_start[:6] = 0.6  # seen when the clip starts, never again
    assert 0 <= find_latest_peak(from_start, PeakParams()).frame <= 5
    assert find_latest_peak(from_start, published).fallback
    low = np.full(60, 0.1)
    low[50:] = 0.25  # the ends count as the curve's minimum: still only 0.15 of prominence
    assert find_latest_peak(low, PeakParams()).fallback
    assert not find_latest_peak(low, PeakParams(prominence=0.1)).fallback


def test_no_peak_falls_back_to_the_best_frame_or_the_last_searched_frame():
    flat = np.full(40, 0.5)
    assert find_latest_peak(flat, PeakParams(pad_edges=False)).fallback
    result = find_latest_peak(flat, PeakParams())
    assert result.fallback and result.frame == 39 and result.peaks.size == 0  # the latest of equal maxima
    faint = np.full(60, 0.1)
    faint[20:25] = 0.25  # 0.15 of prominence: no peak
    faint[22] = 0.27
    best = find_latest_peak(faint, PeakParams())
    assert best.fallback and best.peaks.size == 0 and best.frame == 22  # the highest score, not the smoothed one
    last = find_latest_peak(faint, PeakParams(fallback="last_frame"))
    assert last.fallback and last.frame == 59
    empty = find_latest_peak(np.zeros(0), PeakParams())
    assert empty.frame is None and empty.fallback
    with pytest.raises(ValueError, match="odd"):
        PeakParams(kernel_size=4)


def test_pipeline_no_peak_tracks_from_the_best_frame_or_answers_the_last_frame():
    dets = QueryDetections.empty(30, 3)
    scores = np.full(30, 0.5)
    scores[8:13] = 0.6  # a faint sighting (0.1 of prominence) at frames 8-12, best at 10
    scores[10] = 0.62
    for t in range(30):
        boxes = np.array([[t, 1.0, t + 10, 11.0], [0, 0, 5, 5]], np.float32)
        dets.set_frame(t, boxes, np.array([scores[t], 0.2], np.float32))
    tracking = TrackingSettings(params={"min_score": 0.55})
    best = answer_query(_query(30), dets, peaks=PeakParams(), tracking=tracking)
    assert best.fallback and best.error is None and best.peak_frame == 10
    assert [r[0] for r in best.track] == [8, 9, 10, 11, 12]  # grown from the best frame as from a peak
    published = PeakParams(track_score="constant", fallback="last_frame")
    out = answer_query(_query(30), dets, peaks=published, tracking=tracking)
    assert out.fallback and out.error is None
    assert out.track == [[29, 29.0, 1.0, 39.0, 11.0]]  # one box, the top one of the last searched frame
    assert out.peak_frame == 29 and out.frames_accessed == 30 and out.score == 1.0
    last = answer_query(_query(30), dets, peaks=PeakParams(fallback="last_frame"), tracking=tracking)
    assert last.score == pytest.approx(0.5 - 0.5 * 0.62)  # distinct: the best score elsewhere is 0.62
    detection = answer_query(_query(30), dets, peaks=PeakParams(track_score="detection", fallback="last_frame"),
                             tracking=tracking)
    assert detection.score == pytest.approx(0.5)
    # query frame 0: nothing searched, an empty answer
    nothing = answer_query(_query(0), QueryDetections.empty(0, 3), peaks=PeakParams(), tracking=TrackingSettings())
    assert nothing.track == [] and nothing.score == 0.0 and nothing.error is None


def test_pipeline_tracks_from_the_latest_peak():
    dets = QueryDetections.empty(100, 2)
    scores = _bump(_bump(np.full(100, 0.1), 20, 0.95), 70, 0.6)
    for t in range(100):
        dets.set_frame(t, np.array([[10, 10, 30, 30]], np.float32), scores[t:t + 1].astype(np.float32))
    tracking = TrackingSettings(params={"min_iou": 0.5, "min_score": 0.5})
    out = answer_query(_query(100), dets, peaks=PeakParams(), tracking=tracking)
    frames = [row[0] for row in out.track]
    assert frames == list(range(66, 75))  # the later bump (frames 66..74), contiguous
    assert out.score == pytest.approx(0.6 - 0.5 * 0.95) and not out.fallback  # distinct: the 0.95 bump elsewhere
