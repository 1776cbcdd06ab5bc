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


def saliency_hinge_loss(scores, positive, video_mask, margin: float = 0.2) -> torch.Tensor:
    """Mean over all (positive, negative) step pairs of relu(margin + s_neg - s_pos).

    scores: [B, T]; positive: [B, T] bool (ground-truth steps); negatives are the other
    valid steps. Samples without negatives contribute nothing.
    """
    scores = scores.float()
    negative = video_mask & ~positive
    pos = positive & video_mask
    pairs = pos[:, :, None] & negative[:, None, :]  # [B, T(pos), T(neg)]
    hinge = F.relu(margin + scores[:, None, :] - scores[:, :, None]) * pairs
    return hinge.sum() / pairs.sum().clamp(min=1)


def chunk_gate_loss(gate_logits, chunk_labels, chunk_mask) -> torch.Tensor:
    """BCE of the chunk gates. gate_logits, chunk_labels, chunk_mask (non-empty chunks): [B, K]."""
    bce = F.binary_cross_entropy_with_logits(gate_logits.float(), chunk_labels.float(), reduction="none")
    return (bce * chunk_mask).sum() / chunk_mask.sum().clamp(min=1)


def step_contrastive_loss(video_emb, text_emb, positive, video_mask, temperature: float = 0.07) -> torch.Tensor:
    """Video-text InfoNCE: the query should be closer to its ground-truth steps than to the clip's others.

    video_emb: [B, T, e], text_emb: [B, e] (both L2-normalised); positive: [B, T] bool.
    loss_b = -log(sum_{t in GT} exp(sim_t / tau) / sum_{t valid} exp(sim_t / tau)).
    """
    sims = torch.einsum("bte,be->bt", video_emb.float(), text_emb.float()) / temperature
    low = torch.finfo(sims.dtype).min
    all_steps = sims.masked_fill(~video_mask, low).logsumexp(dim=1)
    gt_steps = sims.masked_fill(~(positive & video_mask), low).logsumexp(dim=1)
    return (all_steps - gt_steps).mean()
