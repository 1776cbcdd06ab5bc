"""Layers of the SnAG grounding model (docs/nlq.md#snag) that the other NLQ models do not use.

Built from the shared layers of :mod:`nlq.models.layers` (multi-head attention, attention /
feed-forward / conv blocks). Shapes: video ``[B, T, d]`` with ``mask`` ``[B, T]`` (True = valid
step, valid steps form a prefix), text ``[B, L, d]`` with ``text_mask`` ``[B, L]``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nlq.models.layers import AttentionBlock, ConvBlock, FeedForwardBlock, MultiHeadAttention


def local_window_mask(mask: torch.Tensor, block: int, radius: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Key layout of local attention: queries in blocks of ``block`` steps, each block's keys
    the block and its two neighbours, each query keeps the valid keys within ``radius`` steps.

    mask: [B, T] -> ``index`` [nb, 3 * block] (step of each key slot, clamped into [0, T_pad)),
    ``keep`` [B * nb, block, 3 * block] (query i may attend key j) and the padded length
    T_pad = nb * block.
    """
    b, t = mask.shape
    nb = -(-t // block)
    t_pad = nb * block
    starts = torch.arange(nb, device=mask.device) * block
    keys = starts[:, None] - block + torch.arange(3 * block, device=mask.device)  # [nb, 3 * block]
    queries = starts[:, None] + torch.arange(block, device=mask.device)  # [nb, block]
    near = (keys[:, None, :] - queries[:, :, None]).abs() <= radius  # [nb, block, 3 * block]
    inside = (keys >= 0) & (keys < t)
    index = keys.clamp(0, t_pad - 1)
    valid = F.pad(mask, (0, t_pad - t))[:, index] & inside  # [B, nb, 3 * block]
    keep = near[None] & valid[:, :, None, :]
    return index, keep.reshape(b * nb, block, 3 * block), t_pad


class LocalSelfAttentionBlock(nn.Module):
    """Pre-norm residual self-attention over a sliding window of ``window_size`` steps (each
    step attends to the valid steps within ``window_size // 2`` of it), then a feed-forward
    block; cost linear in T. x: [B, T, d], mask: [B, T] -> [B, T, d] (padded steps zeroed)."""

    def __init__(self, dim: int, num_heads: int = 4, window_size: int = 19, dropout: float = 0.1):
        super().__init__()
        if window_size < 1 or window_size % 2 != 1:
            raise ValueError(f"window_size must be a positive odd number (got {window_size})")
        self.radius = window_size // 2
        self.block = max(self.radius, 1)
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.feed_forward = FeedForwardBlock(dim, 4 * dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        index, keep, t_pad = local_window_mask(mask, self.block, self.radius)
        h = F.pad(self.norm(x), (0, 0, 0, t_pad - t))  # [B, T_pad, d]
        nb = t_pad // self.block
        queries = h.view(b * nb, self.block, d)
        context = h[:, index].reshape(b * nb, 3 * self.block, d)
        out = self.attention(queries, context, keep).view(b, t_pad, d)[:, :t]
        x = x + self.dropout(out)
        return self.feed_forward(x) * mask.unsqueeze(-1).to(x.dtype)


def downsample(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Halve the time axis: max-pool (kernel 3, stride 2) over valid steps; step i of the output
    sits on input step 2i. x: [B, T, d], mask: [B, T] -> [B, ceil(T/2), d], [B, ceil(T/2)]."""
    low = torch.finfo(x.dtype).min
    pooled = F.max_pool1d(x.masked_fill(~mask.unsqueeze(-1), low).transpose(1, 2), 3, stride=2, padding=1)
    mask = mask[:, ::2]
    return pooled.transpose(1, 2) * mask.unsqueeze(-1).to(x.dtype), mask


class TemporalPyramid(nn.Module):
    """Feature pyramid: level 0 at the input rate, each further level downsampled by 2, one
    :class:`LocalSelfAttentionBlock` per level (SnAG's ``arch`` branch of ``num_levels`` layers).

    x: [B, T, d], mask: [B, T] -> lists of ``num_levels`` features [B, T_l, d] and masks
    [B, T_l], T_l = ceil(T / 2^l).
    """

    def __init__(self, dim: int, num_levels: int = 8, num_heads: int = 4, window_size: int = 19,
                 dropout: float = 0.1):
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1 (got {num_levels})")
        self.blocks = nn.ModuleList(LocalSelfAttentionBlock(dim, num_heads, window_size, dropout)
                                    for _ in range(num_levels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, masks = [], []
        for level, block in enumerate(self.blocks):
            if level:
                x, mask = downsample(x, mask)
            x = block(x, mask)
            features.append(x)
            masks.append(mask)
        return features, masks


class QueryFusion(nn.Module):
    """Late fusion of the query into one pyramid level: ``num_layers`` x (cross-attention of the
    steps to the query words, feed-forward), then LayerNorm; the same weights at every level.
    x: [B, T, d], text: [B, L, d] -> [B, T, d] (padded steps zeroed)."""

    def __init__(self, dim: int, num_heads: int = 4, num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.cross = nn.ModuleList(AttentionBlock(dim, num_heads, dropout, cross=True) for _ in range(num_layers))
        self.feed_forward = nn.ModuleList(FeedForwardBlock(dim, 4 * dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, mask, text, text_mask) -> torch.Tensor:
        for cross, feed_forward in zip(self.cross, self.feed_forward):
            x = feed_forward(cross(x, mask, text, text_mask))
        return self.norm(x) * mask.unsqueeze(-1).to(x.dtype)


class PointHead(nn.Module):
    """Per-step head shared by all levels: a conv block (``num_layers`` residual depthwise-separable
    convs of kernel 3, padded steps zeroed) and a Linear to ``out_dim``.
    x: [B, T, d], mask: [B, T] -> [B, T, out_dim]."""

    def __init__(self, dim: int, out_dim: int, num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.convs = ConvBlock(dim, 3, num_layers, dropout) if num_layers else None
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.convs is not None:
            x = self.convs(x * mask.unsqueeze(-1).to(x.dtype), mask)
        return self.out(x)
