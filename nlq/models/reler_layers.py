"""Layers of NaQ's released ReLER (``ReLER/ms_cm``) that the other NLQ models do not use.

Shapes: video ``[B, T, d]`` with ``video_mask`` ``[B, T]`` (True = valid step), text
``[B, L, d]`` with ``text_mask`` ``[B, L]``. Names of the original modules (for the checkpoint
converter, :mod:`nlq.models.reler_checkpoint`) are given in each docstring.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from nlq.models.layers import masked_softmax

BERT_LAYER_NORM_EPS = 1e-12  # the cross encoder's LayerNorms (BERT style)


def sine_positions(valid: torch.Tensor, dim: int, temperature: float = 10000.0,
                   normalize: bool = True) -> torch.Tensor:
    """1-D sine position encoding; normalised: DETR's ``PositionEmbeddingSine(dim, normalize=True)``.

    valid: [B, T] bool -> [B, T, dim]. Position p = cumsum(valid) / (number of valid + 1e-6) * 2 pi
    (``normalize``; padded steps repeat the last valid position), else the step index itself
    (SnAG's absolute encoding, the same at any clip length); channel 2i is sin(p / t^(2i/dim)),
    channel 2i+1 is cos(p / t^(2i/dim)).
    """
    position = valid.float().cumsum(dim=1)
    if normalize:
        position = position / (position[:, -1:] + 1e-6) * (2 * math.pi)
    else:
        position = position - 1.0
    channels = torch.arange(dim, dtype=torch.float32, device=valid.device)
    scale = temperature ** (2 * torch.div(channels, 2, rounding_mode="floor") / dim)
    angles = position[:, :, None] / scale  # [B, T, dim]
    return torch.stack([angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()], dim=3).flatten(2)


class ProjectionLayer(nn.Module):
    """LayerNorm -> dropout -> Linear (-> ReLU): x [..., in_dim] -> [..., out_dim].

    Original: ``ms_cm.model.LinearLayer`` (``LayerNorm``, ``net.1``).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.5, relu: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


def input_projection(in_dim: int, dim: int, num_layers: int, dropout: float) -> nn.Sequential:
    """ReLER's input projection (``input_vid_proj`` / ``input_txt_proj``): ``num_layers`` (1-3)
    :class:`ProjectionLayer` to width ``dim``; every layer has a ReLU except layer ``num_layers``."""
    if not 1 <= num_layers <= 3:
        raise ValueError(f"num_input_layers must be 1, 2 or 3 (got {num_layers})")
    return nn.Sequential(*(ProjectionLayer(in_dim if i == 0 else dim, dim, dropout, relu=i != num_layers - 1)
                           for i in range(num_layers)))


class CrossModalLayer(nn.Module):
    """One layer of ReLER's cross encoder (ViLBERT's co-attention "connection" layer).

    Video steps attend to the text words and words to the video steps (one multi-head
    attention each way, from the layer's input), then per stream: Linear -> dropout ->
    residual -> LayerNorm, and a GELU feed-forward (Linear -> GELU -> Linear -> dropout ->
    residual -> LayerNorm). video [B, T, d], text [B, L, d] -> same shapes.

    Original: ``ms_cm.bert_layers.BertConnectionLayer``: ``biattention.{query1,key1,value1}``
    (video) / ``{query2,key2,value2}`` (text), ``biOutput.{dense1,LayerNorm1}`` (video) /
    ``{dense2,LayerNorm2}`` (text), ``v_intermediate.dense``, ``v_output.{dense,LayerNorm}``,
    ``t_intermediate.dense``, ``t_output.{dense,LayerNorm}``.
    """

    def __init__(self, dim: int, num_heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.video_query, self.video_key, self.video_value = (nn.Linear(dim, dim) for _ in range(3))
        self.text_query, self.text_key, self.text_value = (nn.Linear(dim, dim) for _ in range(3))
        self.video_out, self.text_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.video_out_norm = nn.LayerNorm(dim, eps=BERT_LAYER_NORM_EPS)
        self.text_out_norm = nn.LayerNorm(dim, eps=BERT_LAYER_NORM_EPS)
        self.video_ffn_in, self.video_ffn_out = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.text_ffn_in, self.text_ffn_out = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.video_ffn_norm = nn.LayerNorm(dim, eps=BERT_LAYER_NORM_EPS)
        self.text_ffn_norm = nn.LayerNorm(dim, eps=BERT_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of query [B, Lq, d] over key/value [B, Lk, d] (key_mask [B, Lk])."""
        b, lq, d = query.shape
        split = lambda x: x.view(b, x.shape[1], self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        # additive key mask: the dtype's lowest finite value, so a fully masked row is uniform, not NaN
        bias = torch.zeros(key_mask.shape, dtype=query.dtype, device=query.device)
        bias = bias.masked_fill(~key_mask.bool(), torch.finfo(query.dtype).min)[:, None, None, :]
        out = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=bias,
                                             dropout_p=self.dropout.p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, lq, d)

    def forward(self, video, video_mask, text, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        video_context = self._attend(self.video_query(video), self.text_key(text), self.text_value(text), text_mask)
        text_context = self._attend(self.text_query(text), self.video_key(video), self.video_value(video), video_mask)
        video = self.video_out_norm(video + self.dropout(self.video_out(video_context)))
        text = self.text_out_norm(text + self.dropout(self.text_out(text_context)))
        video = self.video_ffn_norm(video + self.dropout(self.video_ffn_out(F.gelu(self.video_ffn_in(video)))))
        text = self.text_ffn_norm(text + self.dropout(self.text_ffn_out(F.gelu(self.text_ffn_in(text)))))
        return video, text


class CrossEncoder(nn.Module):
    """``num_layers`` :class:`CrossModalLayer` (original: ``cross_self_encoder.cross_encoder.layers``,
    every weight matrix xavier-uniform initialised, as the original's ``_reset_parameters``).

    Adds the position encoding ``video_pos`` [B, T, d] to the video first. Returns (video, text).
    """

    def __init__(self, dim: int, num_heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1,
                 num_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(CrossModalLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, video, video_mask, video_pos, text, text_mask):
        video = video + video_pos
        for layer in self.layers:
            video, text = layer(video, video_mask, text, text_mask)
        return video, text


class ChunkGate(nn.Module):
    """ReLER's chunk gate ("NPM"): attention-pool the steps of a chunk, Linear -> one logit.

    x: [B, T, d], mask: [B, T] -> logits [B] (the gate is their sigmoid). Original:
    ``NPM_proj.weighted_pool.weight`` [d, 1] (here ``pool_weight``) and ``NPM_proj.linear``
    (here ``score``).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.pool_weight = nn.Parameter(torch.empty(dim, 1))
        nn.init.xavier_uniform_(self.pool_weight)
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = masked_softmax((x @ self.pool_weight.to(x.dtype)).squeeze(-1), mask)  # [B, T]
        return self.score((weights.unsqueeze(-1) * x).sum(dim=1)).squeeze(-1)


__all__ = ["BERT_LAYER_NORM_EPS", "ChunkGate", "CrossEncoder", "CrossModalLayer", "ProjectionLayer",
           "input_projection", "sine_positions"]
