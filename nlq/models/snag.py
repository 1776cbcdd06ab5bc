"""SnAG (Mu et al., CVPR 2024: "SnAG: Scalable and Accurate Video Grounding"), docs/nlq.md#snag.

A single-stage grounding model over the clip's features at their native length:

video [B, T, Dv] -> Linear -> conv block -> + absolute sine positions -> temporal pyramid of
``num_levels`` levels (local self-attention over ``window_size`` steps; level l downsampled
by 2^l) -> the query (text encoder -> Linear -> self-attention) fused into every level by
cross-attention (late fusion, shared weights) -> per-point heads shared by the levels: a
"a moment is here" logit and the distances to its start and end.

Training (``forward`` in train mode) returns {"loss", "cls_loss", "reg_loss"}: sigmoid focal
loss over every valid point, IoU (or DIoU) loss of the distances on the positive points
(centre sampling, :mod:`nlq.models.snag_targets`), both divided by a running mean of the
number of positive points. Evaluation returns one {"windows", "scores"} per sample: point
scores sigmoid(logit), candidates above ``pre_nms_threshold`` (at most ``pre_nms_topk``),
Gaussian Soft-NMS to ``num_windows`` windows, refined by score-weighted voting.

Cost: linear in T (local attention, pyramid of T + T/2 + ... points); T is capped by
``max_len`` (the data pools longer clips to it, a memory bound only).
"""
from __future__ import annotations

import torch
from torch import nn

from episodic import distributed
from nlq.models import losses
from nlq.models.layers import AttentionBlock, ConvBlock, FeedForwardBlock
from nlq.models.registry import register_model
from nlq.models.reler_layers import sine_positions
from nlq.models.snag_layers import PointHead, QueryFusion, TemporalPyramid
from nlq.models.snag_targets import (assign_targets, level_points, regression_ranges, steps_to_windows,
                                     windows_to_steps)
from nlq.models.spans import padded_result, soft_nms, valid_lengths, vote_windows

REGRESSION_LOSSES = ("iou", "diou")


@register_model("snag")
class SnAG(nn.Module):
    def __init__(
        self,
        text_encoder: nn.Module,  # tokenized query -> ([B, L, text_encoder.output_dim], mask)
        video_dim: int,  # Dv, sum of the concatenated feature dims
        hidden_dim: int = 512,  # width of every layer
        num_heads: int = 4,  # attention heads (pyramid, text, fusion)
        max_len: int = 2304,  # memory cap: longer clips are pooled to this many steps by the data
        num_levels: int = 8,  # pyramid levels (strides 1, 2, ..., 2^(num_levels - 1))
        window_size: int = 19,  # local self-attention window (steps of the level)
        num_conv_layers: int = 2,  # embedding conv layers before the pyramid
        num_text_layers: int = 1,  # self-attention layers over the projected query words
        num_fusion_layers: int = 2,  # cross-attention layers of the late fusion
        num_head_layers: int = 2,  # conv layers of each head before its output layer
        dropout: float = 0.1,  # dropout of every block
        regression_range: float = 4.0,  # level 0's range of distances (input steps); doubles per level
        range_overlap: float = 0.5,  # level l starts at overlap x level l-1's upper bound
        center_radius: float = 1.5,  # centre sampling radius, in strides
        focal_alpha: float = 0.5,  # focal loss weight of positives
        focal_gamma: float = 2.0,  # focal loss exponent
        label_smoothing: float = 0.2,  # classification targets y (1 - s) + s / 2
        regression_loss: str = "iou",  # iou | diou
        regression_weight: float = 1.0,  # weight of the regression loss
        loss_norm: float = 10.0,  # initial running number of positive points
        loss_norm_momentum: float = 0.9,  # its update: m * norm + (1 - m) * positives of the batch
        pre_nms_topk: int = 2000,  # candidates kept per sample before Soft-NMS
        pre_nms_threshold: float = 0.001,  # minimum point score of a candidate
        min_window_steps: float = 0.1,  # candidates not longer than this (input steps) are dropped
        nms_sigma: float = 0.9,  # Gaussian Soft-NMS: score x exp(-IoU^2 / sigma)
        nms_min_score: float = 0.001,  # Soft-NMS drops windows whose score falls below this
        voting_iou: float = 0.95,  # refine kept windows with the candidates overlapping this much (0: off)
        num_windows: int = 5,  # windows returned per query
    ):
        super().__init__()
        if regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES} (got {regression_loss!r})")
        self.text_encoder = text_encoder
        self.hidden_dim, self.max_len, self.num_levels = hidden_dim, int(max_len), int(num_levels)
        self.video_projection = nn.Linear(video_dim, hidden_dim)
        self.embedding = ConvBlock(hidden_dim, 3, num_conv_layers, dropout) if num_conv_layers else None
        self.pyramid = TemporalPyramid(hidden_dim, num_levels, num_heads, window_size, dropout)
        self.text_projection = nn.Linear(text_encoder.output_dim, hidden_dim)
        self.text_attention = nn.ModuleList(AttentionBlock(hidden_dim, num_heads, dropout)
                                            for _ in range(num_text_layers))
        self.text_feed_forward = nn.ModuleList(FeedForwardBlock(hidden_dim, 4 * hidden_dim, dropout)
                                               for _ in range(num_text_layers))
        self.fusion = QueryFusion(hidden_dim, num_heads, num_fusion_layers, dropout)
        self.cls_head = PointHead(hidden_dim, 1, num_head_layers, dropout)
        self.reg_head = PointHead(hidden_dim, 2, num_head_layers, dropout)
        # distances start at about one stride: with a zero bias, a channel whose output starts negative at
        # every point stays at ReLU's zero (no gradient), which a tiny model hits often
        nn.init.constant_(self.reg_head.out.bias, 1.0)
        self.reg_scales = nn.Parameter(torch.ones(num_levels))  # per-level scale of the distances
        self.ranges = regression_ranges(num_levels, regression_range, range_overlap)
        self.register_buffer("loss_norm", torch.tensor(float(loss_norm)))  # saved: a resumed run continues it
        self.center_radius, self.regression_loss, self.regression_weight = center_radius, regression_loss, \
            regression_weight
        self.focal = {"alpha": focal_alpha, "gamma": focal_gamma, "smoothing": label_smoothing}
        self.loss_norm_momentum = loss_norm_momentum
        self.pre_nms_topk, self.pre_nms_threshold, self.min_window_steps = pre_nms_topk, pre_nms_threshold, \
            min_window_steps
        self.nms_sigma, self.nms_min_score, self.voting_iou = nms_sigma, nms_min_score, voting_iou
        self.num_windows = num_windows

    def encode_text(self, text: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Query words [B, L, d] and their mask [B, L]."""
        words, mask = self.text_encoder(text)
        words = self.text_projection(words)
        for attention, feed_forward in zip(self.text_attention, self.text_feed_forward):
            words = feed_forward(attention(words, mask))
        return words, mask

    def encode_video(self, video: torch.Tensor, mask: torch.Tensor) -> tuple[list, list]:
        """The pyramid: ``num_levels`` features [B, T_l, d] and masks [B, T_l]."""
        if video.shape[1] > self.max_len:
            raise ValueError(f"sequence of {video.shape[1]} steps is longer than model.max_len {self.max_len}; "
                             "the data pools clips to it (data.max_len)")
        keep = mask.unsqueeze(-1).to(video.dtype)
        x = self.video_projection(video) * keep
        if self.embedding is not None:
            x = self.embedding(x, mask) * keep
        x = x + sine_positions(mask, self.hidden_dim, normalize=False).to(x.dtype) * keep / self.hidden_dim ** 0.5
        return self.pyramid(x, mask)

    def compute_outputs(self, batch: dict) -> dict:
        """``logits`` [B, P], ``offsets`` [B, P, 2] (distances / stride, >= 0), ``mask`` [B, P]
        (valid points) and ``points`` (:func:`~nlq.models.snag_targets.level_points`) over the
        P points of all levels."""
        words, word_mask = self.encode_text(batch["text"])
        features, masks = self.encode_video(batch["video"], batch["video_mask"])
        # the levels side by side, one masked step between them: fusion and heads run once (the
        # heads' convs zero masked steps, so no level sees another)
        gap, gap_mask = features[0][:, :1] * 0, masks[0][:, :1] & False
        x = torch.cat([part for f in features for part in (f, gap)], dim=1)
        mask = torch.cat([part for m in masks for part in (m, gap_mask)], dim=1)
        lengths = [m.shape[1] for m in masks]
        device = batch["video"].device
        is_point = torch.cat([torch.ones(n + 1, dtype=torch.bool, device=device).index_fill(0, torch.tensor(
            [n], device=device), False) for n in lengths])
        level = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)])
        x = self.fusion(x, mask, words, word_mask)
        logits = self.cls_head(x, mask).squeeze(-1)[:, is_point]
        offsets = self.reg_head(x, mask)[:, is_point] * self.reg_scales[level][None, :, None].to(x.dtype)
        return {"logits": logits, "offsets": torch.relu(offsets), "mask": mask[:, is_point],
                "points": level_points(lengths, self.ranges, device=device)}

    def forward(self, batch: dict):
        out = self.compute_outputs(batch)
        if not self.training:
            return self.decode(out, batch)
        return self.losses(out, batch)

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Focal + regression losses, each divided by the running number of positive points."""
        mask = out["mask"]
        segments = windows_to_steps(batch["gt_window"], batch["duration"], batch["video_mask"].sum(dim=1))
        labels, targets = assign_targets(out["points"], segments, self.center_radius)
        positive = labels & mask
        world = distributed.get_world_size()
        norm = self.loss_norm.clone()
        cls_loss = losses.sigmoid_focal_loss(out["logits"][mask], labels[mask], **self.focal) / norm * world
        reg_loss = losses.offset_iou_loss(out["offsets"][positive], targets[positive],
                                          self.regression_loss) / norm * world
        total = distributed.all_reduce_mean(positive.sum().float()) * world
        with torch.no_grad():
            self.loss_norm.mul_(self.loss_norm_momentum).add_((1 - self.loss_norm_momentum) * total.clamp(min=1.0))
        return {"loss": cls_loss + self.regression_weight * reg_loss, "cls_loss": cls_loss, "reg_loss": reg_loss}

    @torch.no_grad()
    def decode(self, out: dict, batch: dict) -> list[dict]:
        """Per sample: candidates, Soft-NMS, voting -> {"windows": [[s, e] x k] seconds, "scores": [k]}."""
        points = out["points"]
        results = []
        for b, n in enumerate(valid_lengths(batch["video_mask"])):
            valid = out["mask"][b]
            scores = out["logits"][b][valid].float().sigmoid()
            position, stride = points["position"][valid], points["stride"][valid]
            offsets = out["offsets"][b][valid].float()
            segments = torch.stack([position - offsets[:, 0] * stride, position + offsets[:, 1] * stride], dim=1)
            keep = (scores > self.pre_nms_threshold) & (segments[:, 1] - segments[:, 0] > self.min_window_steps)
            if not bool(keep.any()):  # nothing passes the thresholds: rank every point
                keep = torch.ones_like(keep)
            scores, segments = scores[keep], segments[keep]
            order = scores.argsort(descending=True)[:self.pre_nms_topk]
            scores, segments = scores[order], segments[order]
            kept, kept_scores = soft_nms(segments, scores, self.nms_sigma, self.nms_min_score, self.num_windows)
            if kept.shape[0] == 0:
                kept, kept_scores = segments[:1], scores[:1]
            if self.voting_iou > 0:
                kept = vote_windows(kept, segments, scores, self.voting_iou)
            windows = steps_to_windows(kept, float(batch["duration"][b]), n)
            results.append(padded_result(windows, kept_scores, self.num_windows))
        return results
