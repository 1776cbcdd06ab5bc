"""Why a siamese detector scores what it scores: its three stages measured apart
(docs/vq2d.md#detector-diagnostics).

Frame AP mixes three failures: the RPN never proposes the object, the siamese head ranks
another proposal above it, or the scores on frames without the object are as high as on
frames with it (so no threshold or peak rule can tell them apart). Measured on the same
validation frames as the frame AP, over ALL proposals of a frame (before NMS and top-k):

* ``rpn_recall``: share of positive frames with a proposal at IoU >= ``iou`` with the box;
* ``gt_top1`` / ``gt_top5``: among those frames, share where the best-scoring such proposal
  ranks first / in the first five of the frame's proposals (the head's ranking);
* ``gt_score``: median score of that proposal; ``positive_max`` / ``negative_max``: median
  best score on positive / on negative frames; ``separation``: the AUC of telling a positive
  frame from a negative one by its best score (0.5 = chance, 1 = perfectly apart), which is
  what peak detection over a clip relies on.

Pure numpy over plain data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vq2d.evaluation.metrics import box_iou_one_to_many

DIAGNOSTICS = ("rpn_recall", "gt_top1", "gt_top5", "gt_score", "positive_max", "negative_max", "separation")


@dataclass
class FrameProposalScores:
    """One evaluated (frame, visual crop) pair before NMS.

    gt_boxes: ``[G, 4]`` xyxy (G = 1 positive frame, 0 negative frame).
    proposals: ``[K, 4]`` xyxy, same coordinates.
    scores: ``[K]`` siamese scores (probabilities) of the proposals for this crop.
    """

    gt_boxes: np.ndarray
    proposals: np.ndarray
    scores: np.ndarray


def separation_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive value > a negative one), ties counted half (Mann-Whitney AUC); NaN if a side is empty."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def detector_diagnostics(frames: list[FrameProposalScores], iou: float = 0.5) -> dict:
    """The diagnostics of ``DIAGNOSTICS`` (shares in percent, scores as they are; NaN where
    no frame qualifies), plus ``num_positive_frames`` / ``num_negative_frames``."""
    covered, ranks, gt_scores, positive_max, negative_max = [], [], [], [], []
    for frame in frames:
        scores = np.asarray(frame.scores, np.float64).reshape(-1)
        best = float(scores.max()) if len(scores) else 0.0
        if len(np.asarray(frame.gt_boxes).reshape(-1, 4)) == 0:
            negative_max.append(best)
            continue
        positive_max.append(best)
        proposals = np.asarray(frame.proposals, np.float64).reshape(-1, 4)
        hits = np.zeros(len(proposals), bool)
        for gt in np.asarray(frame.gt_boxes).reshape(-1, 4):
            hits |= box_iou_one_to_many(gt, proposals) >= iou
        covered.append(bool(hits.any()))
        if hits.any():
            gt_score = float(scores[hits].max())
            gt_scores.append(gt_score)
            ranks.append(int((scores > gt_score).sum()) + 1)
    ranks_arr = np.asarray(ranks)
    share = lambda mask: float(100.0 * np.mean(mask)) if len(mask) else float("nan")  # noqa: E731
    return {
        "rpn_recall": share(np.asarray(covered)),
        "gt_top1": share(ranks_arr == 1),
        "gt_top5": share(ranks_arr <= 5),
        "gt_score": _median(gt_scores),
        "positive_max": _median(positive_max),
        "negative_max": _median(negative_max),
        "separation": separation_auc(np.asarray(positive_max), np.asarray(negative_max)),
        "num_positive_frames": len(positive_max),
        "num_negative_frames": len(negative_max),
    }


def format_diagnostics(result: dict) -> str:
    """One line, e.g. ``RPN recall 79.0 | GT proposal top-1 46.0 top-5 63.1 | ...``."""
    return (f"RPN recall {result['rpn_recall']:.1f} | GT proposal top-1 {result['gt_top1']:.1f} "
            f"top-5 {result['gt_top5']:.1f} | median score: GT proposal {result['gt_score']:.3f}, best on positive "
            f"frames {result['positive_max']:.3f}, on negative frames {result['negative_max']:.3f} | "
            f"positive/negative separation (AUC) {result['separation']:.3f}")
