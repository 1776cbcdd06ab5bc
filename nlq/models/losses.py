"""Loss terms of the NLQ models (unweighted; the models weight and sum them): VSLNet / ReLER span
and highlight terms, SnAG's focal and offset-IoU terms.

Shapes: logits/scores [B, T] over video steps, ``video_mask`` [B, T] True on valid steps,
``start_label`` / ``end_label`` [B] step indices of the ground-truth span.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def span_loss(start_logits, end_logits, start_label, end_label) -> torch.Tensor:
    """CE(start) + CE(end) over the (already masked) step logits."""
    return F.cross_entropy(start_logits.float(), start_label) + F.cross_entropy(end_logits.float(), end_label)


def highlight_loss(logits, labels, video_mask, positive_weight: float = 2.0) -> torch.Tensor:
    """Weighted BCE over valid steps (positives weight ``positive_weight``), mean over valid steps."""
    mask = video_mask.float()
    labels = labels.float()
    weights = torch.where(labels > 0.5, positive_weight, 1.0) * mask
    bce = F.binary_cross_entropy_with_logits(logits.float().masked_fill(~video_mask, 0.0), labels, reduction="none")
    return (bce * weights).sum() / mask.sum().clamp(min=1.0)


def span_step_mask(start_label, end_label, num_steps: int) -> torch.Tensor:
    """[B, T] True on the steps of the ground-truth span [start_label, end_label]."""
    steps = torch.arange(num_steps, device=start_label.device)
    return (steps >= start_label[:, None]) & (steps <= end_label[:, None])


def sigmoid_focal_loss(logits, labels, alpha: float = 0.5, gamma: float = 2.0,
                       smoothing: float = 0.0) -> torch.Tensor:
    """Sum of the sigmoid focal loss (Lin et al. 2017) over all entries (SnAG's classification).

    logits, labels: any equal shapes, labels in {0, 1}; ``smoothing`` moves the targets to
    ``labels * (1 - smoothing) + smoothing / 2`` (p_t is taken against the smoothed target);
    ``alpha`` weights positives (1 - alpha negatives; alpha < 0: no weighting).
    """
    logits, positive = logits.float(), labels.float() >= 0.5
    targets = labels.float() * (1.0 - smoothing) + smoothing / 2
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * torch.where(positive, alpha, 1.0 - alpha)
    return loss.sum()


def offset_iou_loss(pred, target, kind: str = "iou", eps: float = 1e-8) -> torch.Tensor:
    """Sum of 1 - IoU (``kind`` "iou") or the distance-IoU loss (``"diou"``: 1 - IoU + squared
    centre distance / enclosing length squared) of windows given as distances from one point.

    pred, target: [N, 2] non-negative (distance to the start, distance to the end).
    """
    if kind not in ("iou", "diou"):
        raise ValueError(f"regression loss must be 'iou' or 'diou' (got {kind!r})")
    pred, target = pred.float(), target.float()
    inter = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 1], target[:, 1])
    union = pred.sum(1) + target.sum(1) - inter
    loss = 1.0 - inter / union.clamp(min=eps)
    if kind == "diou":
        enclosing = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 1], target[:, 1])
        centre = 0.5 * (pred[:, 1] - pred[:, 0] - target[:, 1] + target[:, 0])
        loss = loss + (centre / enclosing.clamp(min=eps)) ** 2
    return loss.sum()
