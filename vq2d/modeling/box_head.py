"""Box refinement: a class-agnostic second-stage box regressor on the ROI features (a toolkit
option, ``model.box_head.enabled``; the published SiamRCNN has none and answers with the RPN
proposals themselves, docs/vq2d.md#model).

The regressor is the Fast R-CNN one (Girshick 2015) without classes: two fully connected
layers on the RoIAlign map of a proposal, four deltas ``(dx, dy, dw, dh)`` in the
parameterisation of torchvision's ``BoxCoder`` with weights (10, 10, 5, 5), trained with a
smooth L1 loss (beta 1/9) on the positive ROIs, summed and divided by the number of sampled
ROIs (torchvision's ``fastrcnn_loss``). It does not see the query: it learns where an object's
edges are, and the siamese head still scores the proposal it refines.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou, clip_boxes_to_image

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
SMOOTH_L1_BETA = 1.0 / 9.0


class BoxRefineHead(nn.Module):
    """``[N, C, R, R]`` ROI maps -> ``[N, 4]`` box deltas.

    Module names: ``fc1``, ``fc2`` (``Linear`` + ReLU each) and ``deltas`` (``Linear(hidden, 4)``,
    weights N(0, 0.001), bias 0, so a new head starts by returning the proposals unchanged).

    Args:
        in_channels: C, channels of the pooled maps (the FPN width).
        resolution: R, side of the pooled maps.
        hidden_size: width of the two fully connected layers.
        detach_features: train on detached ROI maps, so that the box loss does not reach the
            backbone (the siamese and RPN losses alone shape the features).
    """

    def __init__(self, *, in_channels: int, resolution: int, hidden_size: int = 256, detach_features: bool = False):
        super().__init__()
        self.detach_features = bool(detach_features)
        self.fc1 = nn.Linear(in_channels * resolution * resolution, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.deltas = nn.Linear(hidden_size, 4)
        nn.init.normal_(self.deltas.weight, std=0.001)
        nn.init.zeros_(self.deltas.bias)
        self.coder = BoxCoder(BOX_CODER_WEIGHTS)

    def forward(self, roi_maps: Tensor) -> Tensor:
        """``[N, C, R, R]`` -> deltas ``[N, 4]`` float32."""
        x = roi_maps.detach() if self.detach_features else roi_maps
        x = F.relu(self.fc1(x.flatten(1)))
        return self.deltas(F.relu(self.fc2(x))).float()

    def refine(self, deltas: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Deltas ``[K, 4]`` applied to boxes ``[K, 4]`` xyxy, clipped to ``(H, W)`` -> ``[K, 4]``."""
        if len(boxes) == 0:
            return boxes.float()
        decoded = self.coder.decode_single(deltas.float(), boxes.float())
        return clip_boxes_to_image(decoded, image_size)

    def loss(self, deltas: Tensor, rois: list[Tensor], labels: list[Tensor], gt_boxes: list[Tensor]) -> Tensor:
        """Smooth L1 of the positive ROIs' deltas against the deltas to their best-overlapping GT box.

        deltas ``[sum N_i, 4]``; per image rois ``[N_i, 4]``, labels ``[N_i]`` (1 positive, 0 not)
        and GT boxes ``[n_i, 4]`` (n_i = 0 on a negative frame). Sum over positives / all ROIs;
        0 (with a graph) when there is no positive.
        """
        targets, positive = [], []
        for boxes, labels_i, gt in zip(rois, labels, gt_boxes):
            pos = labels_i > 0
            matched = torch.zeros_like(boxes, dtype=torch.float32)
            if len(gt) and pos.any():
                matched = gt.float()[box_iou(boxes.float(), gt.float()).argmax(dim=1)]
            targets.append(matched)
            positive.append(pos & (len(gt) > 0))
        positive_all = torch.cat(positive)
        if not positive_all.any():
            return deltas.sum() * 0.0
        rois_all, targets_all = torch.cat(rois).float(), torch.cat(targets)
        wanted = self.coder.encode_single(targets_all[positive_all], rois_all[positive_all])
        loss = F.smooth_l1_loss(deltas[positive_all], wanted, beta=SMOOTH_L1_BETA, reduction="sum")
        return loss / max(len(rois_all), 1)
