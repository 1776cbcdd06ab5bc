"""Siamese head: a projector shared by proposals and visual crops + a bilinear comparison.

Module names follow the released detectron2 checkpoints (``roi_heads.siam_head.*``):
``projector`` is an ``nn.Sequential`` whose indices 0..n-1 are residual blocks, then
average pool, flatten, ``Linear(C, hidden)``, ReLU, ``Linear(hidden, hidden)`` (indices 6
and 8 with the default 4 blocks); ``compare`` is ``nn.Bilinear(hidden, hidden, 1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIMILARITIES = ("bilinear", "cosine", "ncc")


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
        similarity: how a proposal and a query are compared.
            "bilinear" (the originals): ``p^T A q + b``, module ``compare``.
            "cosine": ``exp(logit_scale) * cos(p, q) + logit_bias``, a metric the projector must
            learn, with two scalars in place of ``A``.
            "ncc": no projector after the residual blocks; the pooled maps are compared channel
            by channel, normalised cross-correlation over the R x R layout (a learned template
            matcher) and the absolute difference of the channel means (colour), and an MLP
            ``Linear(2C, hidden) -> ReLU -> Linear(hidden, 1)`` (module ``compare``) scores the
            ``2C`` values. The "embedding" is the normalised maps and the means, ``C * R * R + C``.
        spatial_pool: side of the average pool before the first Linear (1, the originals: the
            box's mean feature; s > 1 keeps an s x s layout of the box, ``C * s * s`` inputs);
            not used by "ncc".
        init_scale, init_bias: cosine only, the starting scale and bias of the logits.
        pixels: ncc only: the model appends the image itself, pooled over the same box (3
            channels, normalised RGB), to the feature maps, and these channels are compared
            like the others (a low-level template term that needs no training; the MLP learns
            its weight). ``embed`` then takes ``[N, C + 3, R, R]``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        hidden_size: int = 1024,
        num_residual_blocks: int = 4,
        pooler_resolution: int = 14,
        similarity: str = "bilinear",
        spatial_pool: int = 1,
        init_scale: float = 10.0,
        init_bias: float = -5.0,
        pixels: bool = False,
    ):
        super().__init__()
        self.pooler_resolution = pooler_resolution
        self.hidden_size = hidden_size
        self.in_channels = in_channels
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.similarity = similarity
        if pixels and similarity != "ncc":
            raise ValueError(f"head pixels=True needs similarity='ncc', got {similarity!r} "
                             "(with another similarity set model.head.pixels=false)")
        self.pixels = bool(pixels)
        self.compared_channels = in_channels + (3 if pixels else 0)
        blocks = [ResidualBlock(in_channels) for _ in range(num_residual_blocks)]
        if similarity == "ncc":
            self.projector = nn.Sequential(*blocks)
            self.compare = nn.Sequential(nn.Linear(2 * self.compared_channels, hidden_size), nn.ReLU(inplace=True),
                                         nn.Linear(hidden_size, 1))
            return
        self.projector = nn.Sequential(
            *blocks,
            nn.AdaptiveAvgPool2d(spatial_pool),
            nn.Flatten(),
            nn.Linear(in_channels * spatial_pool * spatial_pool, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, hidden_size),
        )
        if similarity == "bilinear":
            self.compare = nn.Bilinear(hidden_size, hidden_size, 1)
        else:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
            self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))

    def embed(self, features: Tensor) -> Tensor:
        """``[N, C, R, R]`` pooled features -> ``[N, hidden]`` embeddings (ncc: ``[N, C*R*R + C]``;
        with ``pixels`` the input is ``[N, C + 3, R, R]``, its last 3 channels the pooled image,
        and C counts them in the output)."""
        if self.similarity != "ncc":
            return self.projector(features)
        c = self.in_channels
        x = self.projector(features[:, :c])
        if self.pixels:
            x = torch.cat([x, features[:, c:].to(x.dtype)], dim=1)
        x = x.flatten(2).float()  # [N, C, R*R]
        means = x.mean(dim=2)  # [N, C]
        maps = F.normalize(x - means[:, :, None], dim=2)  # zero mean, unit norm per channel
        return torch.cat([maps.flatten(1), means], dim=1)

    def _ncc_logits(self, proposal_emb: Tensor, query_emb: Tensor) -> Tensor:
        """ncc: ``[K, C*R*R + C]`` and ``[Q, C*R*R + C]`` -> ``[Q, K]`` logits."""
        c = self.compared_channels
        p_maps, p_means = proposal_emb[:, :-c].float().unflatten(1, (c, -1)), proposal_emb[:, -c:].float()
        q_maps, q_means = query_emb[:, :-c].float().unflatten(1, (c, -1)), query_emb[:, -c:].float()
        corr = torch.einsum("qcs,kcs->qkc", q_maps, p_maps)  # [Q, K, C] in [-1, 1]
        diff = (q_means[:, None, :] - p_means[None, :, :]).abs()  # [Q, K, C]
        return self.compare(torch.cat([corr, diff], dim=2))[..., 0]

    def score(self, proposal_emb: Tensor, query_emb: Tensor) -> Tensor:
        """Bilinear logits for every (query, proposal) pair.

        ``logit[q, k] = p_k^T A q_q + b`` computed as ``q @ A^T @ p^T + b`` (one matmul chain
        instead of Q*K bilinear products).
        Cosine: ``logit[q, k] = exp(logit_scale) * cos(p_k, q_q) + logit_bias``.
        Args: proposal_emb ``[K, hidden]``, query_emb ``[Q, hidden]``. Returns ``[Q, K]`` float32.
        """
        if self.similarity == "ncc":
            return self._ncc_logits(proposal_emb, query_emb)
        if self.similarity == "cosine":
            cos = F.normalize(query_emb.float(), dim=1) @ F.normalize(proposal_emb.float(), dim=1).transpose(0, 1)
            return cos * self.logit_scale.exp() + self.logit_bias
        weight = self.compare.weight[0]  # A: [hidden (proposal side), hidden (query side)]
        projected = query_emb @ weight.transpose(0, 1).to(query_emb.dtype)  # [Q, hidden] = (A q)^T
        logits = projected @ proposal_emb.transpose(0, 1).to(projected.dtype)  # [Q, K]
        return logits.float() + self.compare.bias.float()
