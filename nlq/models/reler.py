"""ReLER as released in NaQ (``ReLER/ms_cm``: "multi-scale cross-modal transformer"), docs/nlq.md#reler.

Video input: each feature set L2-normalised per step, plus 2 temporal channels (t/N, (t+1)/N);
video and query words each go through a 2-layer input projection (LayerNorm, dropout, Linear).
The time axis is cut into K chunks of ceil(T / K) steps (K drawn from ``chunk_counts`` per
training batch). Each chunk, with a sine position encoding of its own, goes through the cross
encoder against the query words; a chunk gate (attention pooling + Linear) scores it and its
features are multiplied by sigmoid(gate). On the re-assembled sequence: highlight and
saliency heads (Linear), the video-frame contrastive embedding and VSLNet's conditioned span
predictor (fed the gated features directly).

Training returns {"loss", "span_loss", "highlight_loss", "saliency_loss", "chunk_loss",
"contrastive_loss"}; evaluation returns one {"windows", "scores"} per sample: the top
``candidates_per_scale`` spans of every K, pooled, and the ``num_windows`` best of them
(released: repeated windows kept; ``unique_windows=true`` keeps each window once).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nlq.models import losses, reler_losses
from nlq.models.layers import ConditionedSpanPredictor, mask_logits
from nlq.models.registry import register_model
from nlq.models.reler_layers import ChunkGate, CrossEncoder, input_projection, sine_positions
from nlq.models.spans import merge_windows, padded_result, sample_windows, valid_lengths

TEMPORAL_CHANNELS = 2  # (t/N, (t+1)/N) appended to the video features
L2_EPS = 1e-5  # the released per-set normalisation: x / (|x| + 1e-5)
CHUNKING = ("batch", "sample")


def prepare_video(video: torch.Tensor, video_mask: torch.Tensor, feature_dims: Sequence[int]) -> torch.Tensor:
    """L2-normalise each feature set per step and append the temporal channels (t/N, (t+1)/N).

    video: [B, T, Dv] (sets concatenated, sum(feature_dims) = Dv), video_mask: [B, T] ->
    [B, T, Dv + 2], zero on padded steps (N: the sample's valid steps).
    """
    feature_dims = [int(d) for d in feature_dims]
    if sum(feature_dims) != video.shape[-1]:
        raise ValueError(f"feature_dims {feature_dims} do not add up to the video width {video.shape[-1]}")
    parts = [part / (part.norm(dim=-1, keepdim=True) + L2_EPS) for part in video.split(feature_dims, dim=-1)]
    steps = torch.arange(video.shape[1], device=video.device, dtype=video.dtype)
    num_valid = video_mask.sum(dim=1, keepdim=True).clamp(min=1).to(video.dtype)  # [B, 1]
    temporal = torch.stack([steps / num_valid, (steps + 1) / num_valid], dim=-1)  # [B, T, 2]
    return torch.cat(parts + [temporal], dim=-1) * video_mask.unsqueeze(-1).to(video.dtype)


def chunk_layout(video_mask: torch.Tensor, num_chunks: int,
                 by_batch: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut the time axis into ``num_chunks`` contiguous chunks of ceil(n / K) steps (the last
    shorter, trailing ones possibly empty).

    n is the padded length T (``by_batch``, as released: a sample's chunks depend on its
    batch) or each sample's own valid steps N. Chunk k covers steps [bounds[k], bounds[k+1]),
    bounds[k] = min(k * ceil(n / K), n). Returns ``index`` [B, K, Lc] (step of each chunk
    slot, clamped into range), ``valid`` [B, K, Lc] (slot holds a valid step) and ``bounds``
    [B, K + 1].
    """
    b, t = video_mask.shape
    lengths = video_mask.sum(dim=1, keepdim=True)  # [B, 1]
    n = torch.full_like(lengths, t) if by_batch else lengths
    size = -(-n // num_chunks)  # ceil
    k = torch.arange(num_chunks + 1, device=video_mask.device)
    bounds = torch.minimum(k * size, n)  # [B, K + 1]
    slots = torch.arange(max(int(size.max()), 1), device=video_mask.device)
    steps = bounds[:, :-1, None] + slots  # [B, K, Lc]
    valid = (steps < bounds[:, 1:, None]) & (steps < lengths[:, :, None])
    return steps.clamp(max=t - 1), valid, bounds


def chunk_holds(bounds: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """[B, K] True where chunk k (steps [bounds[k], bounds[k+1])) contains step [B]."""
    return (step[:, None] >= bounds[:, :-1]) & (step[:, None] < bounds[:, 1:])


def scale_candidates(heads, encoded: dict, chunk_counts: Sequence[int], batch: dict, k: int,
                     max_span_len: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample, the top-k spans of every scale: windows [len(chunk_counts) * k', 2] in seconds
    and their scores, scale by scale. heads(encoded, K) -> {"start_logits", "end_logits"} [B, T]."""
    lengths = valid_lengths(batch["video_mask"])
    candidates = [([], []) for _ in lengths]
    for num_chunks in chunk_counts:
        out = heads(encoded, num_chunks)
        for b, n in enumerate(lengths):
            windows, scores = sample_windows(out["start_logits"][b], out["end_logits"][b], n,
                                             float(batch["duration"][b]), k, max_span_len)
            candidates[b][0].append(windows)
            candidates[b][1].append(scores)
    return [(torch.cat(windows), torch.cat(scores)) for windows, scores in candidates]


@register_model("reler")
class ReLER(nn.Module):
    def __init__(
        self,
        text_encoder: nn.Module,  # tokenized query -> ([B, L, text_encoder.output_dim], mask)
        video_dim: int,  # Dv, sum of the concatenated feature dims (the 2 temporal channels are added here)
        hidden_dim: int = 256,  # width of every layer (--hidden_dim)
        num_heads: int = 8,  # attention heads of the cross encoder and the span predictor
        max_len: int = 600,  # span predictor position-embedding size, >= video steps (--max_v_l)
        kernel_size: int = 7,  # depthwise conv kernel of the span predictor's encoder
        num_conv_layers: int = 4,  # conv layers of the span predictor's encoder
        num_input_layers: int = 2,  # input projection layers (--n_input_proj)
        input_dropout: float = 0.5,  # dropout of the input projections (--input_dropout)
        num_cross_layers: int = 3,  # cross-encoder layers (--num_cross_encoder_layers)
        cross_ffn_dim: int = 1024,  # cross-encoder feed-forward width (--v_intermediate_size)
        dropout: float = 0.1,  # cross-encoder dropout (--dropout and the *_dropout_prob)
        predictor_dropout: float = 0.2,  # span predictor dropout (--conditioned_span_pred_drop_rate)
        chunk_counts: Sequence[int] = (2, 3, 4, 5, 6),  # K values (--numscale_list)
        chunking: str = "batch",  # chunk the padded batch length ("batch", released) or each sample's ("sample")
        contrastive_dim: int = 64,  # contrastive embedding width (--contrastive_hdim)
        temperature: float = 0.07,  # contrastive temperature
        saliency_margin: float = 0.2,  # hinge margin of the saliency pairs
        span_weight: float = 1.0,  # weight of CE(start) + CE(end) (--lw_start_end)
        highlight_weight: float = 20.0,  # weight of the highlight BCE (--lw_highlight)
        saliency_weight: float = 1.0,  # weight of the saliency hinge (--lw_saliency)
        chunk_weight: float = 1.0,  # weight of the chunk-gate BCE (--lw_npm)
        contrastive_weight: float = 1.0,  # weight of the contrastive loss (--video_frame_contrastive_loss_coef)
        positive_weight: float = 2.0,  # BCE weight of positive steps / chunks (highlight and chunk gate)
        candidates_per_scale: int = 5,  # spans kept per K before pooling the scales
        num_windows: int = 5,  # windows returned per query
        unique_windows: bool = False,  # keep each window once when pooling the scales (released: False)
        max_span_len: int | None = None,  # optional limit (steps) on decoded spans (released: none)
    ):
        super().__init__()
        if not chunk_counts or min(chunk_counts) < 1:
            raise ValueError(f"chunk_counts must be positive integers (got {chunk_counts})")
        if chunking not in CHUNKING:
            raise ValueError(f"chunking must be one of {CHUNKING} (got {chunking!r})")
        self.text_encoder = text_encoder
        self.video_dim, self.hidden_dim = video_dim, hidden_dim
        self.video_projection = input_projection(video_dim + TEMPORAL_CHANNELS, hidden_dim, num_input_layers,
                                                 input_dropout)
        self.text_projection = input_projection(text_encoder.output_dim, hidden_dim, num_input_layers, input_dropout)
        self.cross_encoder = CrossEncoder(hidden_dim, num_heads, cross_ffn_dim, dropout, num_cross_layers)
        self.chunk_gate = ChunkGate(hidden_dim)
        self.highlight = nn.Linear(hidden_dim, 1)
        self.saliency = nn.Linear(hidden_dim, 1)
        self.video_contrast = nn.Linear(hidden_dim, contrastive_dim)
        self.text_contrast = nn.Linear(hidden_dim, contrastive_dim)
        self.predictor = ConditionedSpanPredictor(hidden_dim, num_heads, max_len, kernel_size, num_conv_layers,
                                                  predictor_dropout)
        self.chunk_counts = tuple(int(k) for k in chunk_counts)
        self.by_batch = chunking == "batch"
        self.temperature, self.saliency_margin, self.positive_weight = temperature, saliency_margin, positive_weight
        self.weights = {"span_loss": span_weight, "highlight_loss": highlight_weight, "saliency_loss": saliency_weight,
                        "chunk_loss": chunk_weight, "contrastive_loss": contrastive_weight}
        self.candidates_per_scale, self.num_windows = candidates_per_scale, num_windows
        self.unique_windows, self.max_span_len = unique_windows, max_span_len

    def sample_num_chunks(self, generator: torch.Generator | None = None) -> int:
        """One K from ``chunk_counts``, drawn with torch's RNG (seeded runs are reproducible)."""
        return self.chunk_counts[int(torch.randint(len(self.chunk_counts), (1,), generator=generator))]

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """Scale-independent part: projected video [B, T, d] and words [B, L, d] with their masks."""
        video_mask = batch["video_mask"]
        video = self.video_projection(prepare_video(batch["video"], video_mask, batch["feature_dims"]))
        text_emb, text_mask = self.text_encoder(batch["text"])
        return {"video": video, "video_mask": video_mask, "text": self.text_projection(text_emb),
                "text_mask": text_mask}

    def heads(self, encoded: dict, num_chunks: int) -> dict[str, torch.Tensor]:
        """Outputs at one scale K: start/end/highlight logits and saliency [B, T], the gated
        features [B, T, d], gate logits [B, K], bounds [B, K + 1] and chunk_valid [B, K]."""
        video, video_mask = encoded["video"], encoded["video_mask"]
        b, t, d = video.shape
        index, valid, bounds = chunk_layout(video_mask, num_chunks, self.by_batch)
        slots = index.shape[-1]
        chunks = video.gather(1, index.view(b, -1, 1).expand(-1, -1, d)).view(b * num_chunks, slots, d)
        chunk_mask = valid.view(b * num_chunks, slots)
        text = encoded["text"].repeat_interleave(num_chunks, dim=0)  # [B*K, L, d]
        text_mask = encoded["text_mask"].repeat_interleave(num_chunks, dim=0)
        position = sine_positions(chunk_mask, d).to(chunks.dtype)
        chunks, text = self.cross_encoder(chunks, chunk_mask, position, text, text_mask)
        gate_logits = self.chunk_gate(chunks, chunk_mask)  # [B*K]
        chunks = chunks * gate_logits.sigmoid().to(chunks.dtype)[:, None, None] + 0.0 * text.mean()  # DDP: text used
        # scatter the chunks back onto the time axis (they partition the valid steps)
        rows = (torch.arange(b, device=video.device)[:, None, None] * t + index).view(-1)[valid.view(-1)]
        features = chunks.new_zeros(b * t, d)
        features[rows] = chunks.reshape(-1, d)[valid.view(-1)]
        features = features.view(b, t, d)
        start_logits, end_logits = self.predictor(features, video_mask)
        return {"start_logits": start_logits, "end_logits": end_logits, "features": features,
                "highlight_logits": mask_logits(self.highlight(features).squeeze(-1), video_mask),
                "saliency": self.saliency(features).squeeze(-1), "gate_logits": gate_logits.view(b, num_chunks),
                "bounds": bounds, "chunk_valid": valid.any(dim=-1)}

    def compute_outputs(self, batch: dict, num_chunks: int) -> dict[str, torch.Tensor]:
        """Encoder and heads at one scale (for inspection and tests)."""
        return self.heads(self.encode(batch), num_chunks)

    def forward(self, batch: dict):
        if not self.training:
            return self.predict(batch)
        encoded = self.encode(batch)
        out = self.heads(encoded, self.sample_num_chunks())
        video_mask, start, end = batch["video_mask"], batch["start_label"], batch["end_label"]
        positive = losses.span_step_mask(start, end, video_mask.shape[1])
        bounds = out["bounds"]
        chunk_labels = (chunk_holds(bounds, start) | chunk_holds(bounds, end)).float()
        pos_steps, neg_steps = reler_losses.sample_saliency_pairs(start, end, video_mask.sum(dim=1))
        video_emb = F.normalize(self.video_contrast(out["features"]), dim=-1)
        text_emb = F.normalize(self.text_contrast(encoded["text"]), dim=-1)
        terms = {
            "span_loss": losses.span_loss(out["start_logits"], out["end_logits"], start, end),
            "highlight_loss": losses.highlight_loss(out["highlight_logits"], batch["highlight_label"], video_mask,
                                                    self.positive_weight),
            "saliency_loss": reler_losses.saliency_pair_loss(out["saliency"], pos_steps, neg_steps,
                                                             self.saliency_margin),
            "chunk_loss": losses.highlight_loss(out["gate_logits"], chunk_labels, out["chunk_valid"],
                                                self.positive_weight),
            "contrastive_loss": reler_losses.frame_contrastive_loss(video_emb, text_emb, encoded["text_mask"],
                                                                    positive & video_mask, video_mask,
                                                                    self.temperature),
        }
        return {"loss": sum(self.weights[name] * value for name, value in terms.items()), **terms}

    @torch.no_grad()
    def predict(self, batch: dict) -> list[dict]:
        """Top ``candidates_per_scale`` spans of every K, pooled per sample, best ``num_windows``."""
        results = []
        for windows, scores in scale_candidates(self.heads, self.encode(batch), self.chunk_counts, batch,
                                                self.candidates_per_scale, self.max_span_len):
            if self.unique_windows:
                windows, scores = merge_windows(windows, scores, self.num_windows)
            else:  # released: the best by score, repeats included
                order = scores.argsort(descending=True, stable=True)[:self.num_windows]
                windows, scores = windows[order], scores[order]
            results.append(padded_result(windows, scores, self.num_windows))
        return results
