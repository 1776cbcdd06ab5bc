"""Top-k span decoding from start/end logits, and merging of candidate windows.

A span (s, e) over N valid steps of a clip of duration D seconds covers
[s * D / N, (e + 1) * D / N]; its score is P[s, e] = softmax(start)[s] * softmax(end)[e]
restricted to s <= e (and e - s < ``max_span_len`` when given).
"""
from __future__ import annotations

import torch


def topk_span_indices(start_logits: torch.Tensor, end_logits: torch.Tensor, k: int = 5,
                      max_span_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best spans of one sample.

    start_logits, end_logits: [N] (valid steps only). Returns ``starts`` [k'], ``ends`` [k']
    (step indices, start <= end) and ``scores`` [k'] sorted by decreasing score, with
    k' = min(k, number of allowed spans).
    """
    n = start_logits.shape[0]
    if n == 0:
        raise ValueError("cannot decode spans over zero valid steps")
    probs = start_logits.float().softmax(0)[:, None] * end_logits.float().softmax(0)[None, :]  # [N, N]
    allowed = torch.ones(n, n, dtype=torch.bool, device=probs.device).triu()
    if max_span_len is not None:
        allowed &= ~allowed.triu(diagonal=max_span_len)  # keep e - s < max_span_len
    flat = probs.masked_fill(~allowed, -1.0).flatten()
    scores, index = flat.topk(min(k, int(allowed.sum())))
    return index // n, index % n, scores


def spans_to_seconds(starts: torch.Tensor, ends: torch.Tensor, num_steps: int, duration: float) -> torch.Tensor:
    """Step indices -> windows [k, 2] in seconds: (s * D / N, (e + 1) * D / N)."""
    step = float(duration) / num_steps
    return torch.stack([starts.double() * step, (ends.double() + 1) * step], dim=1)


def merge_windows(windows: torch.Tensor, scores: torch.Tensor, k: int = 5,
                  nms_iou: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge candidate windows [M, 2] with scores [M] into the top-k by score.

    Identical windows keep their best score. With ``nms_iou`` a window overlapping an
    already kept one by IoU >= nms_iou is deferred: it is used only if fewer than k windows
    survive. Returns windows [k', 2] and scores [k'] sorted by decreasing score.
    """
    order = scores.argsort(descending=True, stable=True)
    windows, scores = windows[order], scores[order]
    kept, deferred = [], []
    for i in range(windows.shape[0]):
        if any(bool((windows[i] == windows[j]).all()) for j in kept + deferred):
            continue
        if nms_iou is not None and kept:
            if float(temporal_iou(windows[i:i + 1], windows[kept]).max()) >= nms_iou:
                deferred.append(i)
                continue
        kept.append(i)
        if len(kept) == k:
            break
    chosen = (kept + deferred)[:k]
    chosen.sort(key=lambda i: -float(scores[i]))
    index = torch.as_tensor(chosen, dtype=torch.long, device=windows.device)
    return windows[index], scores[index]


def temporal_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU between windows a [M, 2] and b [K, 2] -> [M, K]."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return inter / union.clamp(min=1e-12)


def sample_windows(start_logits: torch.Tensor, end_logits: torch.Tensor, num_steps: int, duration: float,
                   k: int = 5, max_span_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k windows of one sample: logits [T] (the first ``num_steps`` valid) -> windows [k', 2]
    in seconds and scores [k'], sorted by decreasing score."""
    starts, ends, scores = topk_span_indices(start_logits[:num_steps], end_logits[:num_steps], k, max_span_len)
    return spans_to_seconds(starts, ends, num_steps, duration), scores


def valid_lengths(video_mask: torch.Tensor) -> list[int]:
    """Number of valid steps per sample; video_mask [B, T] must be True on a prefix of the steps."""
    lengths = video_mask.sum(dim=1)
    if not torch.equal(video_mask.bool(), torch.arange(video_mask.shape[1], device=lengths.device) < lengths[:, None]):
        raise ValueError("video_mask must be True on a prefix of the steps (padding at the end)")
    if int(lengths.min()) == 0:
        raise ValueError("a sample has no valid video step")
    return lengths.tolist()


def decode_windows(start_logits: torch.Tensor, end_logits: torch.Tensor, video_mask: torch.Tensor,
                   duration: torch.Tensor, k: int = 5, max_span_len: int | None = None) -> list[dict]:
    """Per-sample top-k windows in seconds.

    start_logits, end_logits: [B, T]; video_mask: [B, T] (valid steps form a prefix);
    duration: [B] seconds covered by the valid steps. Returns one dict per sample
    {"windows": [[start_sec, end_sec] x k], "scores": [k]} sorted by score. When a clip has
    fewer than k possible spans, the last window is repeated (score 0) so that every
    sample has exactly k windows.
    """
    results = []
    for b, n in enumerate(valid_lengths(video_mask)):
        windows, scores = sample_windows(start_logits[b], end_logits[b], n, float(duration[b]), k, max_span_len)
        results.append(padded_result(windows, scores, k))
    return results


def padded_result(windows: torch.Tensor, scores: torch.Tensor, k: int) -> dict:
    """Plain-data result with exactly k windows (the last one repeated with score 0 if short)."""
    windows, scores = windows.tolist(), scores.tolist()
    while len(windows) < k:
        windows.append(list(windows[-1]))
        scores.append(0.0)
    return {"windows": windows, "scores": scores}


def soft_nms(windows: torch.Tensor, scores: torch.Tensor, sigma: float = 0.9, min_score: float = 0.001,
             k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian Soft-NMS (Bodla et al. 2017) of windows [M, 2] with scores [M]: repeatedly keep
    the best remaining window and decay every other score by exp(-IoU^2 / sigma); windows whose
    score falls below ``min_score`` are dropped. Returns the first k kept windows [k', 2] and
    their decayed scores [k'] (decreasing; later picks never change earlier ones)."""
    windows, scores = windows.float(), scores.float().clone()
    alive = scores >= min_score
    kept = []
    for _ in range(min(k, windows.shape[0])):
        if not bool(alive.any()):
            break
        best = int(scores.masked_fill(~alive, -1.0).argmax())
        kept.append((best, float(scores[best])))
        alive[best] = False
        decay = torch.exp(-temporal_iou(windows[best:best + 1], windows)[0] ** 2 / sigma)
        scores = torch.where(alive, scores * decay, scores)
        alive &= scores >= min_score
    index = torch.as_tensor([i for i, _ in kept], dtype=torch.long, device=windows.device)
    return windows[index], torch.as_tensor([s for _, s in kept], dtype=torch.float32, device=windows.device)


def vote_windows(kept: torch.Tensor, windows: torch.Tensor, scores: torch.Tensor,
                 iou_threshold: float = 0.95) -> torch.Tensor:
    """Refine each kept window [K, 2] as the score-weighted mean of the candidate windows [M, 2]
    (scores [M]) overlapping it by IoU >= ``iou_threshold`` (a kept window is one of them)."""
    weights = (temporal_iou(kept.float(), windows.float()) >= iou_threshold).float() * scores.float()[None]
    return (weights @ windows.float()) / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
