"""VSLNet (Zhang et al. 2020) for Ego4D NLQ, docs/nlq.md#vslnet.

video [B, T, Dv] -> Linear -> shared feature encoder <- Linear <- text encoder [B, L, d_text];
context-query attention, query-pooled concat, query-guided highlighting, conditioned span
predictor. Training returns {"loss", "span_loss", "highlight_loss"}; evaluation returns one
{"windows": [[s, e] x k], "scores": [k]} per sample.

``architecture`` (docs/nlq.md#vslnet): ``released`` (default) is NLQ/VSLNet as released with
NaQ: attention blocks without an output projection after the heads, dropout where the release
has it, LayerNorm eps 1e-6, and xavier-uniform weights with zero biases
for every Linear / Conv layer (a released checkpoint maps one to one onto it,
``tools/convert_naq_checkpoint.py``); ``ours`` is this toolkit's earlier variant (an output
projection and a feed-forward block per attention block, PyTorch's default init). Both zero
padded steps before each convolution, so outputs do not depend on the batch's padding.
"""
from __future__ import annotations

import torch
from torch import nn

from nlq.models import losses
from nlq.models.layers import ConditionedSpanPredictor, HighlightLayer, VideoQueryFusion
from nlq.models.registry import register_model
from nlq.models.spans import decode_windows

ARCHITECTURES = ("released", "ours")


def xavier_init(module: nn.Module) -> None:
    """The released VSLNet's init: xavier-uniform weights and zero biases of every Linear / Conv."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register_model("vslnet")
class VSLNet(nn.Module):
    def __init__(
        self,
        text_encoder: nn.Module,  # tokenized query -> ([B, L, text_encoder.output_dim], mask)
        video_dim: int,  # Dv, sum of the concatenated feature dims
        hidden_dim: int = 128,  # d, width of every layer
        num_heads: int = 8,  # attention heads
        max_len: int = 128,  # position-embedding size, >= video steps and query tokens
        kernel_size: int = 7,  # depthwise conv kernel of the feature encoders
        num_conv_layers: int = 4,  # depthwise-separable conv layers per feature encoder
        dropout: float = 0.2,  # dropout everywhere
        highlight_weight: float = 5.0,  # weight of the highlight BCE in "loss"
        highlight_positive_weight: float = 2.0,  # BCE weight of foreground steps
        num_windows: int = 5,  # k windows returned per query at inference
        max_span_len: int | None = None,  # optional limit (steps) on decoded spans
        architecture: str = "released",  # released (NaQ / NLQ VSLNet) | ours
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"VSLNet architecture must be one of {ARCHITECTURES} (got {architecture!r})")
        released = architecture == "released"
        self.architecture = architecture
        self.text_encoder = text_encoder
        self.fusion = VideoQueryFusion(video_dim, text_encoder.output_dim, hidden_dim, num_heads, max_len,
                                       kernel_size, num_conv_layers, dropout, released=released)
        self.highlight = HighlightLayer(hidden_dim)
        self.predictor = ConditionedSpanPredictor(hidden_dim, num_heads, max_len, kernel_size, num_conv_layers, dropout,
                                                  released=released)
        if released:
            self.apply(xavier_init)  # also the word encoders' char-CNN, as released; frozen backbones are not modules
        self.highlight_weight = highlight_weight
        self.highlight_positive_weight = highlight_positive_weight
        self.num_windows = num_windows
        self.max_span_len = max_span_len

    def compute_outputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """start_logits, end_logits, highlight_logits: [B, T] (masked steps very negative)."""
        video_mask = batch["video_mask"]
        text_emb, text_mask = self.text_encoder(batch["text"])
        fused = self.fusion(batch["video"], video_mask, text_emb, text_mask)["fused"]  # [B, T, d]
        highlight_logits = self.highlight(fused, video_mask)
        fused = fused * highlight_logits.sigmoid().unsqueeze(-1)
        start_logits, end_logits = self.predictor(fused, video_mask)
        return {"start_logits": start_logits, "end_logits": end_logits, "highlight_logits": highlight_logits}

    def forward(self, batch: dict):
        out = self.compute_outputs(batch)
        if not self.training:
            return decode_windows(out["start_logits"], out["end_logits"], batch["video_mask"],
                                  batch["duration"], self.num_windows, self.max_span_len)
        span = losses.span_loss(out["start_logits"], out["end_logits"], batch["start_label"], batch["end_label"])
        highlight = losses.highlight_loss(out["highlight_logits"], batch["highlight_label"], batch["video_mask"],
                                          self.highlight_positive_weight)
        return {"loss": span + self.highlight_weight * highlight, "span_loss": span, "highlight_loss": highlight}
