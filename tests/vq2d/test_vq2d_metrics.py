"""VQ2D metrics on hand-made cases whose answers are worked out in the comments."""
import math

import numpy as np
import pytest

from vq2d.data.annotations import BBox
from vq2d.evaluation.metrics import (
    METRIC_KEYS, average_precision, evaluate_tracks, frame_ious, interpolated_ap,
    query_result, spatiotemporal_iou, temporal_iou)
from vq2d.evaluation.tracks import PredictedTrack, track_arrays

BOX = (0.0, 0.0, 10.0, 10.0)  # area 100


def run(frames, box=BOX):
    return {f: box for f in frames}


# tIoU -------------------------------------------------------------------------------------------
def test_temporal_iou_identical_disjoint_adjacent():
    assert temporal_iou(run(range(10, 20)), run(range(10, 20))) == 1.0
    assert temporal_iou(run(range(0, 5)), run(range(50, 60))) == 0.0
    # inclusive intervals: [0, 4] and [5, 9] share no frame
    assert temporal_iou(run(range(0, 5)), run(range(5, 10))) == 0.0


def test_temporal_iou_partial_by_hand():
    # [10, 19] vs [15, 24]: inter = 19 - 15 + 1 = 5, union = 10 + 10 - 5 = 15
    assert temporal_iou(run(range(10, 20)), run(range(15, 25))) == pytest.approx(1 / 3)
    # [0, 1] inside [0, 3]: inter 2, union 4; plain frame lists and (start, end) pairs work too
    assert temporal_iou([0, 1], (0, 3)) == pytest.approx(0.5)
    # one shared frame of [0, 0] and [0, 9]
    assert temporal_iou({0: BOX}, run(range(10))) == pytest.approx(0.1)


def test_temporal_iou_empty_is_zero():
    assert temporal_iou({}, run(range(3))) == 0.0
    assert temporal_iou(PredictedTrack.empty(), run(range(3))) == 0.0


# stIoU ------------------------------------------------------------------------------------------
def test_spatiotemporal_iou_identical_and_disjoint():
    gt = {0: (0, 0, 10, 10), 1: (2, 2, 12, 14)}
    assert spatiotemporal_iou(gt, gt) == pytest.approx(1.0)
    assert spatiotemporal_iou(run([5, 6]), gt) == 0.0  # no shared frame
    assert spatiotemporal_iou({0: (20, 20, 30, 30), 1: (50, 50, 60, 60)}, gt) == 0.0  # no overlap


def test_spatiotemporal_iou_partial_by_hand():
    # GT frames 0, 1 with (0,0,10,10); prediction frames 1, 2 with (5,0,15,10).
    # Only frame 1 is shared: inter = 5 * 10 = 50; union = 200 + 200 - 50 = 350.
    gt = run([0, 1])
    pred = run([1, 2], (5, 0, 15, 10))
    assert spatiotemporal_iou(pred, gt) == pytest.approx(50 / 350)


def test_spatiotemporal_iou_missing_frames_count_in_the_union():
    # The prediction matches GT frame 0 exactly and misses frame 1: 100 / (100 + 200 - 100)
    assert spatiotemporal_iou({0: BOX}, run([0, 1])) == pytest.approx(0.5)
    # ... and a prediction frame outside the GT adds its area to the union: 100 / (200 + 100 - 100)
    assert spatiotemporal_iou(run([0, 7]), {0: BOX}) == pytest.approx(0.5)


def test_box_area_has_no_plus_one():
    # (0,0,1,1) inside (0,0,2,2): 1 / 4 (with the +1 convention it would be 4 / 9)
    assert spatiotemporal_iou({3: (0, 0, 1, 1)}, {3: (0, 0, 2, 2)}) == pytest.approx(0.25)


def test_track_spellings_agree():
    as_dict = {4: (1.0, 2.0, 11.0, 22.0), 3: (0.0, 0.0, 10.0, 20.0)}
    as_array = np.array([[3, 0, 0, 10, 20], [4, 1, 2, 11, 22]], dtype=float)
    as_bboxes = [BBox(3, 0, 0, 10, 20), BBox(4, 1, 2, 10, 20)]
    gt = {3: (0, 0, 10, 10), 4: (0, 0, 10, 10)}
    expected = spatiotemporal_iou(as_dict, gt)
    assert spatiotemporal_iou(as_array, gt) == pytest.approx(expected)
    assert spatiotemporal_iou(as_bboxes, gt) == pytest.approx(expected)
    assert spatiotemporal_iou(PredictedTrack(as_dict, 1.0), gt) == pytest.approx(expected)
    frames, boxes = track_arrays(as_dict)
    assert frames.tolist() == [3, 4] and boxes.shape == (2, 4)


def test_track_with_a_frame_twice_is_rejected_unless_allowed():
    rows = np.array([[1, 0, 0, 1, 1], [1, 0, 0, 2, 2]])
    with pytest.raises(ValueError, match="same frame"):
        track_arrays(rows)
    assert track_arrays(rows, allow_repeats=True)[1][:, 2].tolist() == [1.0, 2.0]  # stable order


def test_a_frame_twice_reads_as_the_official_dict_and_volume():
    # pred frame 0 twice: (0,0,10,10) then (0,0,5,10). The official volume sums both (150);
    # the matched box is the last one (intersection 50 with the GT (0,0,10,10)).
    pred = np.array([[0, 0, 0, 10, 10], [0, 0, 0, 5, 10]], dtype=float)
    gt = {0: (0, 0, 10, 10)}
    assert spatiotemporal_iou(pred, gt) == pytest.approx(50 / (150 + 100 - 50))
    assert frame_ious(pred, gt) == pytest.approx([0.5])


def test_flipped_and_out_of_frame_boxes_are_taken_as_they_are():
    # a flipped box has a negative area that the volume sums: GT frames 0,1 of area 100;
    # prediction: an exact box on frame 0 and a flipped (10,10,0,0) box (area +100, inter 0)
    gt = run([0, 1])
    assert spatiotemporal_iou({0: BOX, 1: (10, 10, 0, 0)}, gt) == pytest.approx(100 / 300)
    # x flipped only: area -100 -> union 100 + 200 - 100... = 200 - 100 + 100 - 100
    assert spatiotemporal_iou({0: BOX, 1: (10, 0, 0, 10)}, gt) == pytest.approx(100 / (0 + 200 - 100))
    # negative, float and beyond-the-frame corners are not clipped
    assert spatiotemporal_iou({0: (-5.5, -5.5, 4.5, 4.5)}, {0: (-5.5, -5.5, 4.5, 4.5)}) == 1.0


def test_empty_track_scores_zero():
    assert spatiotemporal_iou({}, run([0, 1])) == 0.0
    assert frame_ious({}, run([0, 1])).tolist() == [0.0, 0.0]


# Per-frame IoU and recovery ---------------------------------------------------------------------
def test_frame_ious_and_recovered_frames():
    gt = run([0, 1, 2, 3])
    pred = {0: BOX, 1: (0, 0, 10, 5), 2: (0, 0, 10, 4)}  # IoU 1, 0.5 (counts), 0.4; frame 3 missing
    assert frame_ious(pred, gt) == pytest.approx([1.0, 0.5, 0.4, 0.0])
    r = query_result(PredictedTrack(pred, 0.3), gt)
    assert (r.recovered_frames, r.gt_frames, r.score, r.empty) == (2, 4, 0.3, False)


# AP ---------------------------------------------------------------------------------------------
def _reference_voc2011_ap(scores, ious, threshold, npos):
    """Slow, loop-based VOC-2011 AP written independently of the implementation."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = fp = 0
    points = []
    for i in ranked:
        if ious[i] >= threshold:
            tp += 1
        else:
            fp += 1
        points.append((tp / npos, tp / (tp + fp)))
    ap, prev_recall = 0.0, 0.0
    for k, (recall, _) in enumerate(points):
        if recall > prev_recall:
            best = max(p for _, p in points[k:])
            ap += (recall - prev_recall) * best
            prev_recall = recall
    return ap


def test_average_precision_hand_ranking():
    # ranked: TP, FP, TP, FP (given shuffled); npos 4.
    # precision 1, 1/2, 2/3, 1/2; recall 1/4, 1/4, 1/2, 1/2
    # AP = 1/4 * 1 + 1/4 * 2/3 = 5/12
    scores = [0.7, 0.9, 0.6, 0.8]
    ious = [0.6, 0.5, 0.1, 0.2]
    assert average_precision(scores, ious, 0.5, 4) == pytest.approx(5 / 12)
    # the threshold is inclusive: at 0.55 the 0.5 prediction is a FP -> FP, FP, TP, FP
    assert average_precision(scores, ious, 0.55, 4) == pytest.approx(1 / 4 * 1 / 3)


def test_average_precision_matches_a_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        scores = rng.permutation(n) / n  # distinct scores
        ious = rng.random(n)
        for t in (0.25, 0.5, 0.75, 0.95):
            assert average_precision(scores, ious, t, n) == pytest.approx(
                _reference_voc2011_ap(list(scores), list(ious), t, n))


def test_interpolated_ap_edges():
    assert interpolated_ap(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
    assert average_precision([], [], 0.5, 3) == 0.0
    assert average_precision([0.5], [1.0], 0.5, 0) == 0.0
    with pytest.raises(ValueError):
        average_precision([0.5, 0.2], [1.0], 0.5, 2)


def test_ties_rank_the_later_query_first_as_the_official_argsort_reverse():
    # Official ranking: np.argsort(scores)[::-1]. Equal scores [0.5, 0.5] sort to [0, 1], so
    # query 1 (FP) comes first: precision 0, 1/2; recall 0, 1/2 -> AP = 1/2 * 1/2.
    assert average_precision([0.5, 0.5], [1.0, 0.0], 0.5, 2) == pytest.approx(0.25)
    # ... and the other way round the TP leads: AP = 1/2 * 1
    assert average_precision([0.5, 0.5], [0.0, 1.0], 0.5, 2) == pytest.approx(0.5)
    # All five scores equal (the official baseline scores every track 1.0): the TP at query 0
    # comes last -> precision 1/5 at recall 1/5 -> AP = 0.04
    assert average_precision([1.0] * 5, [1, 0, 0, 0, 0], 0.5, 5) == pytest.approx(0.04)


def test_ties_between_equal_outcomes_do_not_matter():
    assert average_precision([0.5, 0.5, 0.1], [1.0, 1.0, 0.0], 0.5, 3) == pytest.approx(2 / 3)


# Whole evaluation -------------------------------------------------------------------------------
def _three_queries():
    gts = {"q1": run([0, 1, 2]), "q2": run([0, 1, 2, 3]), "q3": run([5, 6])}
    preds = {"q1": PredictedTrack(run([0, 1, 2]), 0.9),       # perfect
             "q2": PredictedTrack(run([0, 1]), 0.8),          # tIoU = stIoU = 2/4
             "q3": PredictedTrack.empty()}                    # empty, score 0
    return preds, gts


def test_evaluate_identical_tracks_is_perfect():
    _, gts = _three_queries()
    m = evaluate_tracks({k: PredictedTrack(v, 1.0) for k, v in gts.items()}, gts)
    assert list(m) == [*METRIC_KEYS, "num_queries"]
    assert [m[k] for k in METRIC_KEYS] == pytest.approx([1, 1, 1, 1, 100, 100])
    assert m["num_queries"] == 3


def test_evaluate_by_hand():
    preds, gts = _three_queries()
    m = evaluate_tracks(preds, gts)
    # IoUs [1, 0.5, 0] ranked by score: @0.25 and @0.5: TP, TP, FP -> AP 2/3;
    # @0.75 and @0.95: TP, FP, FP -> AP 1/3; mean 1/2. tIoU and stIoU coincide here.
    for name in ("stAP", "tAP"):
        assert m[f"{name}@0.25"] == pytest.approx(2 / 3)
        assert m[name] == pytest.approx(0.5)
    assert m["success"] == pytest.approx(200 / 3)          # 2 of 3 with stIoU >= 0.05
    assert m["recovery"] == pytest.approx(100 * 5 / 9)     # (3 + 2 + 0) of (3 + 4 + 2) GT frames
    assert "search_efficiency" not in m


def test_missing_prediction_counts_as_empty():
    preds, gts = _three_queries()
    del preds["q3"]
    assert evaluate_tracks(preds, gts) == evaluate_tracks({**preds, "q3": None}, gts)
    assert evaluate_tracks(preds, gts)["recovery"] == pytest.approx(100 * 5 / 9)
    assert evaluate_tracks({}, gts) == {**{k: 0.0 for k in METRIC_KEYS}, "num_queries": 3}


def test_success_threshold_is_inclusive():
    gt = {0: (0, 0, 100, 100)}
    pred = {0: (0, 0, 100, 5)}  # stIoU = 500 / 10000 = 0.05
    assert evaluate_tracks({"a": (pred, 1.0)}, {"a": gt})["success"] == 100.0
    pred = {0: (0, 0, 100, 4)}  # 0.04
    assert evaluate_tracks({"a": (pred, 1.0)}, {"a": gt})["success"] == 0.0


def test_search_efficiency():
    preds, gts = _three_queries()
    m = evaluate_tracks(preds, gts, query_frames={"q1": 10, "q2": 20, "q3": 10},
                        frames_accessed={"q1": 5, "q2": 20})  # q3 missing: looked at all 10
    # mean of 100 * (1 - 5/10), 100 * (1 - 20/20), 0
    assert m["search_efficiency"] == pytest.approx(50 / 3)
    assert list(m)[-2:] == ["search_efficiency", "num_queries"]
    with pytest.raises(ValueError, match="query_frames"):
        evaluate_tracks(preds, gts, frames_accessed={"q1": 5})


def test_bad_inputs_are_errors():
    preds, gts = _three_queries()
    with pytest.raises(ValueError, match="no ground truth"):
        evaluate_tracks({**preds, "other": PredictedTrack.empty()}, gts)
    with pytest.raises(ValueError, match="no ground-truth"):
        evaluate_tracks(preds, {**gts, "q4": None})
    with pytest.raises(ValueError, match="number"):
        evaluate_tracks({"q1": PredictedTrack(run([0]), None)}, gts)


def test_nan_score_ranks_first_as_in_the_official_argsort():
    # ascending argsort puts NaN last; reversed, the NaN-scored prediction is ranked first
    assert average_precision([0.9, math.nan], [0.0, 1.0], 0.5, 2) == pytest.approx(0.5)
    assert average_precision([0.9, 0.1], [0.0, 1.0], 0.5, 2) == pytest.approx(0.25)


def test_no_queries():
    m = evaluate_tracks({}, {})
    assert m["num_queries"] == 0 and m["success"] == 0.0 and m["stAP"] == 0.0
