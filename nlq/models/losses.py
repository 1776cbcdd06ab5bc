"""Loss terms of the NLQ models (unweighted; the models weight and sum them).

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
