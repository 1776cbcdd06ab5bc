"""vq2d.evaluation.detector_diagnostics on hand-made frames."""
import math

import numpy as np
import pytest

from vq2d.evaluation.detector_diagnostics import (FrameProposalScores, detector_diagnostics, format_diagnostics,
                                                  separation_auc)
from vq2d.evaluation.metrics import box_iou_one_to_many

GT = np.array([[10.0, 10.0, 30.0, 30.0]])


def frame(gt, proposals, scores):
    return FrameProposalScores(np.asarray(gt, float).reshape(-1, 4), np.asarray(proposals, float).reshape(-1, 4),
                               np.asarray(scores, float))


def test_box_iou_hand_values():
    iou = box_iou_one_to_many(GT[0], [[10, 10, 30, 30], [20, 10, 40, 30], [50, 50, 60, 60], [5, 5, 5, 9]])
    assert iou.shape == (4,)
    np.testing.assert_allclose(iou, [1.0, 200 / 600, 0.0, 0.0])


def test_recall_rank_and_scores():
    frames = [
        # covered, GT proposal ranked first
        frame(GT, [[11, 11, 30, 30], [50, 50, 70, 70]], [0.9, 0.2]),
        # covered, two proposals score above the GT proposal: rank 3
        frame(GT, [[50, 50, 70, 70], [10, 10, 31, 31], [0, 0, 5, 5], [60, 0, 80, 20]], [0.8, 0.3, 0.7, 0.1]),
        # not covered by any proposal at IoU >= 0.5
        frame(GT, [[20, 20, 40, 40]], [0.6]),
        # negative frames
        frame(np.zeros((0, 4)), [[0, 0, 10, 10]], [0.5]),
        frame(np.zeros((0, 4)), [[0, 0, 10, 10], [5, 5, 9, 9]], [0.1, 0.05]),
    ]
    d = detector_diagnostics(frames)
    assert d["num_positive_frames"] == 3 and d["num_negative_frames"] == 2
    assert d["rpn_recall"] == pytest.approx(200 / 3)
    assert d["gt_top1"] == pytest.approx(50.0)
    assert d["gt_top5"] == pytest.approx(100.0)
    assert d["gt_score"] == pytest.approx(0.6)  # median of 0.9 and 0.3
    assert d["positive_max"] == pytest.approx(0.8)  # median of 0.9, 0.8, 0.6
    assert d["negative_max"] == pytest.approx(0.3)  # median of 0.5, 0.1
    # positives 0.9, 0.8, 0.6 against negatives 0.5, 0.1: all above
    assert d["separation"] == pytest.approx(1.0)
    assert "RPN recall 66.7" in format_diagnostics(d)


def test_separation_counts_ties_half_and_empty_sides():
    assert separation_auc(np.array([0.5, 0.2]), np.array([0.5])) == pytest.approx(0.25)
    assert math.isnan(separation_auc(np.array([]), np.array([0.1])))


def test_frames_without_proposals_count_as_missed():
    d = detector_diagnostics([frame(GT, np.zeros((0, 4)), [])])
    assert d["rpn_recall"] == 0.0 and math.isnan(d["gt_top1"]) and d["positive_max"] == 0.0
