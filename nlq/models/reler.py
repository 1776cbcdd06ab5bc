"""ReLER (multi-scale cross-modal transformer) for Ego4D NLQ, docs/nlq.md#reler.

Video input: each feature set L2-normalised per step + 2 temporal endpoint channels
(t/N, (t+1)/N), Linear to the hidden width. The shared feature encoder and context-query
fusion of VSLNet give a query-aware video; it is then split into K chunks (K drawn from
``chunk_counts`` per training batch, every K at inference). Each chunk goes through
video-text co-attention layers and is multiplied by its gate (the predicted probability
that it holds the ground-truth start or end). Heads: highlighting, saliency and the
conditioned span predictor.

Training returns {"loss", "span_loss", "highlight_loss", "saliency_loss", "chunk_loss",
"contrastive_loss"}; evaluation returns one {"windows", "scores"} per sample: the top-k of
each K merged by score (identical windows merged, optional temporal NMS).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nlq.models import losses
from nlq.models.layers import (CoAttentionLayer, ConditionedSpanPredictor, HighlightLayer, VideoQueryFusion,
                               masked_mean)
from nlq.models.registry import register_model
from nlq.models.spans import merge_windows, padded_result, sample_windows, valid_lengths

TEMPORAL_CHANNELS = 2  # (t/N, (t+1)/N) appended to the video features


def prepare_video(video: torch.Tensor, video_mask: torch.Tensor, feature_dims: Sequence[int]) -> torch.Tensor:
    """L2-normalise each feature set per step and append the temporal endpoint channels.

    video: [B, T, Dv] (sets concatenated, sum(feature_dims) = Dv), video_mask: [B, T] ->
    [B, T, Dv + 2], zero on padded steps.
    """
    feature_dims = [int(d) for d in feature_dims]
    if sum(feature_dims) != video.shape[-1]:
        raise ValueError(f"feature_dims {feature_dims} do not add up to the video width {video.shape[-1]}")
    parts = [F.normalize(part, dim=-1) for part in video.split(feature_dims, dim=-1)]
    steps = torch.arange(video.shape[1], device=video.device, dtype=video.dtype)
    num_valid = video_mask.sum(dim=1, keepdim=True).clamp(min=1).to(video.dtype)  # [B, 1]
    temporal = torch.stack([steps / num_valid, (steps + 1) / num_valid], dim=-1)  # [B, T, 2]
    return torch.cat(parts + [temporal], dim=-1) * video_mask.unsqueeze(-1).to(video.dtype)


def chunk_layout(video_mask: torch.Tensor, num_chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each sample's N valid steps into ``num_chunks`` contiguous chunks.

    Chunk k covers steps [bounds[k], bounds[k+1]) with bounds[k] = round(k * N / K).
    Returns ``index`` [B, K, Lc] (step of each chunk slot, clamped into range), ``valid``
    [B, K, Lc] (slot holds a real step) and ``bounds`` [B, K + 1]. Chunks are empty when N < K.
    """
    b, t = video_mask.shape
    n = video_mask.sum(dim=1, keepdim=True)  # [B, 1]
    k = torch.arange(num_chunks + 1, device=video_mask.device)
    bounds = (2 * k * n + num_chunks) // (2 * num_chunks)  # integer round(k * N / K), halves up
    lengths = bounds[:, 1:] - bounds[:, :-1]  # [B, K]
    slots = torch.arange(max(int(lengths.max()), 1), device=video_mask.device)
    index = (bounds[:, :-1, None] + slots).clamp(max=t - 1)
    valid = slots < lengths[..., None]
    return index, valid, bounds


def chunk_holds(bounds: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """[B, K] True where chunk k (steps [bounds[k], bounds[k+1])) contains step [B]."""
    return (step[:, None] >= bounds[:, :-1]) & (step[:, None] < bounds[:, 1:])


@register_model("reler")
class ReLER(nn.Module):
    def __init__(
        self,
        text_encoder: nn.Module,  # tokenized query -> ([B, L, text_encoder.output_dim], mask)
        video_dim: int,  # Dv, sum of the concatenated feature dims (the 2 temporal channels are added here)
        hidden_dim: int = 256,  # width of every layer
        num_heads: int = 8,  # attention heads
        max_len: int = 600,  # position-embedding size, >= video steps and query tokens
        kernel_size: int = 7,  # depthwise conv kernel of the feature encoders
        num_conv_layers: int = 4,  # depthwise-separable conv layers per feature encoder
        dropout: float = 0.2,  # dropout everywhere
        num_coattention_layers: int = 3,  # video-text co-attention layers per chunk
        chunk_counts: Sequence[int] = (2, 3, 4, 5, 6),  # K values: one drawn per training batch, all at inference
        contrastive_dim: int = 64,  # width of the video-text contrastive embedding
        temperature: float = 0.07,  # contrastive softmax temperature
        saliency_margin: float = 0.2,  # hinge margin between GT and other steps' saliency
        span_weight: float = 1.0,  # weight of CE(start) + CE(end) in "loss"
        highlight_weight: float = 20.0,  # weight of the highlight BCE
        saliency_weight: float = 1.0,  # weight of the saliency hinge loss
        chunk_weight: float = 1.0,  # weight of the chunk-gate BCE
        contrastive_weight: float = 1.0,  # weight of the video-text contrastive loss
        highlight_positive_weight: float = 2.0,  # BCE weight of foreground steps in the highlight loss
        num_windows: int = 5,  # k windows returned per query at inference
        max_span_len: int | None = None,  # optional limit (steps) on decoded spans
        nms_iou: float | None = None,  # temporal NMS when merging the scales' windows (None: score only)
    ):
        super().__init__()
        if not chunk_counts or min(chunk_counts) < 1:
            raise ValueError(f"chunk_counts must be positive integers (got {chunk_counts})")
        self.text_encoder = text_encoder
        self.video_dim = video_dim
        self.fusion = VideoQueryFusion(video_dim + TEMPORAL_CHANNELS, text_encoder.output_dim, hidden_dim, num_heads,
                                       max_len, kernel_size, num_conv_layers, dropout)
        self.coattention = nn.ModuleList(CoAttentionLayer(hidden_dim, num_heads, dropout)
                                         for _ in range(num_coattention_layers))
        self.chunk_gate = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))
        self.highlight = HighlightLayer(hidden_dim)
        self.saliency = nn.Linear(hidden_dim, 1)
        self.predictor = ConditionedSpanPredictor(hidden_dim, num_heads, max_len, kernel_size, num_conv_layers, dropout)
        self.video_contrast = nn.Linear(hidden_dim, contrastive_dim)
        self.text_contrast = nn.Linear(hidden_dim, contrastive_dim)
        self.chunk_counts = tuple(int(k) for k in chunk_counts)
        self.temperature, self.saliency_margin = temperature, saliency_margin
        self.weights = {"span_loss": span_weight, "highlight_loss": highlight_weight, "saliency_loss": saliency_weight,
                        "chunk_loss": chunk_weight, "contrastive_loss": contrastive_weight}
        self.highlight_positive_weight = highlight_positive_weight
        self.num_windows, self.max_span_len, self.nms_iou = num_windows, max_span_len, nms_iou

    def sample_num_chunks(self, generator: torch.Generator | None = None) -> int:
        """One K from ``chunk_counts``, drawn with torch's RNG (seeded runs are reproducible)."""
        return self.chunk_counts[int(torch.randint(len(self.chunk_counts), (1,), generator=generator))]

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """Scale-independent part: encoded video [B, T, d], text [B, L, d], query-aware video [B, T, d]."""
        video_mask = batch["video_mask"]
        video = prepare_video(batch["video"], video_mask, batch["feature_dims"])
        text_emb, text_mask = self.text_encoder(batch["text"])
        return {**self.fusion(video, video_mask, text_emb, text_mask), "video_mask": video_mask, "text_mask": text_mask}

    def chunk_features(self, encoded: dict, num_chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-chunk co-attention and gating. Returns features [B, T, d], gate logits [B, K], bounds [B, K+1]."""
        fused, video_mask = encoded["fused"], encoded["video_mask"]
        b, t, d = fused.shape
        index, valid, bounds = chunk_layout(video_mask, num_chunks)
        slots = index.shape[-1]
        video = fused.gather(1, index.view(b, -1, 1).expand(-1, -1, d)).view(b * num_chunks, slots, d)
        video_valid = valid.view(b * num_chunks, slots)
        text = encoded["text"].repeat_interleave(num_chunks, dim=0)  # [B*K, L, d]
        text_mask = encoded["text_mask"].repeat_interleave(num_chunks, dim=0)
        for layer in self.coattention:
            video, text = layer(video, video_valid, text, text_mask)
        pooled = torch.cat([masked_mean(video, video_valid), masked_mean(text, text_mask)], dim=-1)
        gate_logits = self.chunk_gate(pooled).view(b, num_chunks)
        video = video * gate_logits.sigmoid().view(b * num_chunks, 1, 1).to(video.dtype)
        # scatter the chunks back onto the time axis (chunks partition the valid steps)
        rows = (torch.arange(b, device=fused.device)[:, None, None] * t + index).view(-1)[valid.view(-1)]
        out = video.new_zeros(b * t, d)
        out[rows] = video.reshape(-1, d)[valid.view(-1)]
        return out.view(b, t, d), gate_logits, bounds

    def heads(self, encoded: dict, num_chunks: int) -> dict[str, torch.Tensor]:
        """Outputs at one scale K: start/end/highlight logits, saliency [B, T], gate logits [B, K], bounds."""
        video_mask = encoded["video_mask"]
        features, gate_logits, bounds = self.chunk_features(encoded, num_chunks)
        highlight_logits = self.highlight(features, video_mask)
        saliency = self.saliency(features).squeeze(-1)
        start_logits, end_logits = self.predictor(features * highlight_logits.sigmoid().unsqueeze(-1), video_mask)
        return {"start_logits": start_logits, "end_logits": end_logits, "highlight_logits": highlight_logits,
                "saliency": saliency, "gate_logits": gate_logits, "bounds": bounds}

    def compute_outputs(self, batch: dict, num_chunks: int) -> dict[str, torch.Tensor]:
        """Encoder and heads at one scale (for inspection and tests)."""
        encoded = self.encode(batch)
        return {**self.heads(encoded, num_chunks), "video": encoded["video"], "text": encoded["text"]}

    def forward(self, batch: dict):
        if not self.training:
            return self.predict(batch)
        encoded = self.encode(batch)
        out = self.heads(encoded, self.sample_num_chunks())
        video_mask, start, end = batch["video_mask"], batch["start_label"], batch["end_label"]
        positive = losses.span_step_mask(start, end, video_mask.shape[1])
        bounds = out["bounds"]
        video_emb = F.normalize(self.video_contrast(encoded["video"]), dim=-1)
        text_emb = F.normalize(self.text_contrast(masked_mean(encoded["text"], encoded["text_mask"])), dim=-1)
        terms = {
            "span_loss": losses.span_loss(out["start_logits"], out["end_logits"], start, end),
            "highlight_loss": losses.highlight_loss(out["highlight_logits"], batch["highlight_label"], video_mask,
                                                    self.highlight_positive_weight),
            "saliency_loss": losses.saliency_hinge_loss(out["saliency"], positive, video_mask, self.saliency_margin),
            "chunk_loss": losses.chunk_gate_loss(out["gate_logits"],
                                                 chunk_holds(bounds, start) | chunk_holds(bounds, end),
                                                 bounds[:, 1:] > bounds[:, :-1]),
            "contrastive_loss": losses.step_contrastive_loss(video_emb, text_emb, positive, video_mask,
                                                             self.temperature),
        }
        return {"loss": sum(self.weights[name] * value for name, value in terms.items()), **terms}

    @torch.no_grad()
    def predict(self, batch: dict) -> list[dict]:
        """Top-k windows of every scale K, merged per sample by score."""
        encoded = self.encode(batch)
        lengths = valid_lengths(batch["video_mask"])
        candidates = [([], []) for _ in lengths]
        for num_chunks in self.chunk_counts:
            out = self.heads(encoded, num_chunks)
            for b, n in enumerate(lengths):
                windows, scores = sample_windows(out["start_logits"][b], out["end_logits"][b], n,
                                                 float(batch["duration"][b]), self.num_windows, self.max_span_len)
                candidates[b][0].append(windows)
                candidates[b][1].append(scores)
        results = []
        for windows, scores in candidates:
            merged = merge_windows(torch.cat(windows), torch.cat(scores), self.num_windows, self.nms_iou)
            results.append(padded_result(*merged, self.num_windows))
        return results
