"""Siamese head: a projector shared by proposals and visual crops + a bilinear comparison.

Module names follow the released detectron2 checkpoints (``roi_heads.siam_head.*``):
``projector`` is an ``nn.Sequential`` whose indices 0..n-1 are residual blocks, then
average pool, flatten, ``Linear(C, hidden)``, ReLU, ``Linear(hidden, hidden)`` (indices 6
and 8 with the default 4 blocks); ``compare`` is ``nn.Bilinear(hidden, hidden, 1)``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """conv3x3 (no bias) -> ReLU -> conv3x3 (no bias) -> + identity -> ReLU; ``[N, C, H, W]`` -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(out + x)


class SiameseHead(nn.Module):
    """Projects ROI / crop feature maps to embeddings and scores proposal-query pairs.

    Args:
        in_channels: channels of the pooled feature maps (the FPN width, 256).
        hidden_size: embedding size (1024).
        num_residual_blocks: residual blocks at the start of the projector (4).
        pooler_resolution: side of the RoIAlign / adaptive-pool output (14); informational,
            the projector accepts any spatial size.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        hidden_size: int = 1024,
        num_residual_blocks: int = 4,
        pooler_resolution: int = 14,
    ):
        super().__init__()
        self.pooler_resolution = pooler_resolution
        self.hidden_size = hidden_size
        self.projector = nn.Sequential(
            *[ResidualBlock(in_channels) for _ in range(num_residual_blocks)],
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_channels, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, hidden_size),
        )
        self.compare = nn.Bilinear(hidden_size, hidden_size, 1)

    def embed(self, features: Tensor) -> Tensor:
        """``[N, C, R, R]`` pooled features -> ``[N, hidden]`` embeddings."""
        return self.projector(features)

    def score(self, proposal_emb: Tensor, query_emb: Tensor) -> Tensor:
        """Bilinear logits for every (query, proposal) pair.

        ``logit[q, k] = p_k^T A q_q + b`` computed as ``q @ A^T @ p^T + b`` (one matmul chain
        instead of Q*K bilinear products).
        Args: proposal_emb ``[K, hidden]``, query_emb ``[Q, hidden]``. Returns ``[Q, K]`` float32.
        """
        weight = self.compare.weight[0]  # A: [hidden (proposal side), hidden (query side)]
        projected = query_emb @ weight.transpose(0, 1).to(query_emb.dtype)  # [Q, hidden] = (A q)^T
        logits = projected @ proposal_emb.transpose(0, 1).to(projected.dtype)  # [Q, K]
        return logits.float() + self.compare.bias.float()
