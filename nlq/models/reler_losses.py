"""Loss terms of NaQ's released ReLER that the other models do not use (unweighted).

Shapes: scores [B, T] over video steps, ``video_mask`` [B, T] True on valid steps (a prefix),
``start_label`` / ``end_label`` [B] step indices of the ground-truth span (inclusive).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def _two_distinct(size: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two distinct uniform draws from range(size) per sample (size [B] >= 2) -> two [B] long tensors."""
    first = (torch.rand(size.shape, generator=generator, device=size.device) * size).long().clamp(max=size - 1)
    second = (torch.rand(size.shape, generator=generator, device=size.device) * (size - 1)).long()
    second = second.clamp(max=size - 2)
    return first, second + (second >= first).long()


def sample_saliency_pairs(start_label: torch.Tensor, end_label: torch.Tensor, lengths: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two positive and two negative steps per sample, drawn as the released ReLER's data set does.

    Positives: two distinct steps of ``[s, e' ]`` with ``e' = max(0, min(e, N) - 1)`` (the
    released rule leaves the end step out) and ``s`` lowered to ``e'`` if larger; both ``s``
    when the range holds one step. Negatives: two distinct steps of the N valid ones outside
    that range; ``(0, 0)`` when fewer than two exist. lengths: [B] valid steps N.
    Returns positive [B, 2] and negative [B, 2] step indices.
    """
    last = (torch.minimum(end_label, lengths) - 1).clamp(min=0)
    first = torch.minimum(start_label, last)
    span = last - first + 1
    a, b = _two_distinct(span.clamp(min=2), generator)
    single = span < 2
    positive = torch.stack([first + torch.where(single, 0, a), first + torch.where(single, 0, b)], dim=1)
    pool = lengths - span  # steps outside [first, last]
    a, b = _two_distinct(pool.clamp(min=2), generator)
    outside = lambda i: torch.where(i < first, i, i + span)  # noqa: E731  (index in the pool -> step)
    negative = torch.stack([outside(a), outside(b)], dim=1)
    negative = torch.where((pool < 2)[:, None], torch.zeros_like(negative), negative)
    return positive, negative


def saliency_pair_loss(scores: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                       margin: float = 0.2) -> torch.Tensor:
    """Hinge over the paired steps: sum relu(margin + s[neg_i] - s[pos_i]) / (B * pairs) * 2.

    scores [B, T]; positive, negative [B, pairs] step indices.
    """
    scores = scores.float()
    pos, neg = scores.gather(1, positive), scores.gather(1, negative)
    return F.relu(margin + neg - pos).sum() / positive.numel() * 2


def frame_contrastive_loss(video_emb: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor,
                           positive: torch.Tensor, video_mask: torch.Tensor,
                           temperature: float = 0.07) -> torch.Tensor:
    """The released ReLER's video-frame contrastive loss.

    video_emb [B, T, e], text_emb [B, L, e] (L2-normalised); logit_t = mean over the valid words
    of <v_t, w> / temperature. For every ground-truth step t (positive [B, T]):
    -log(exp(logit_t) / (exp(logit_t) + sum of exp(logit) over the valid non-GT steps));
    mean over the sample's GT steps, then over the batch.
    """
    words = text_mask.float()
    sims = torch.einsum("bte,ble->btl", video_emb.float(), text_emb.float())
    logits = (sims * words[:, None, :]).sum(dim=2) / temperature / words.sum(dim=1, keepdim=True).clamp(min=1.0)
    low = torch.finfo(logits.dtype).min
    negatives = logits.masked_fill(positive | ~video_mask, low).logsumexp(dim=1, keepdim=True)  # [B, 1]
    per_step = torch.logaddexp(logits, negatives) - logits  # [B, T]
    positive = positive.float()
    return ((per_step * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1.0)).mean()
