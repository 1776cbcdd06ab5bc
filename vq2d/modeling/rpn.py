"""Region proposal network: torchvision's RPN with two changes for mixed precision and
detectron2 parity.

* ``RPNHead`` returns float32 objectness and deltas, and ``AnchorGenerator`` always builds
  float32 anchors, so box decoding stays exact under ``torch.autocast`` (bf16 would round
  coordinates of a 1333-pixel image to steps of 4-8 pixels).
* ``AnchorGenerator(round_anchors=False)`` keeps the cell anchors unrounded, as detectron2's
  DefaultAnchorGenerator does (torchvision rounds them to integers).
Module names stay torchvision's (``rpn.head.conv.0.0``, ``rpn.head.cls_logits``,
``rpn.head.bbox_pred``) so torchvision detector checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import anchor_utils, rpn
from torchvision.models.detection.image_list import ImageList


class RPNHead(rpn.RPNHead):
    """3x3 conv + ReLU, then 1x1 objectness (A channels) and box deltas (4A channels) per level.

    forward: list of ``[N, C, H_l, W_l]`` -> (list of ``[N, A, H_l, W_l]``, list of ``[N, 4A, H_l, W_l]``), float32.
    """

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class AnchorGenerator(anchor_utils.AnchorGenerator):
    """One anchor size per FPN level, several aspect ratios (height / width); float32 anchors."""

    def __init__(self, sizes, aspect_ratios, round_anchors: bool = True):
        self.round_anchors = round_anchors  # set before the parent builds the cell anchors
        super().__init__(sizes, aspect_ratios)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")) -> Tensor:
        anchors = super().generate_anchors(scales, aspect_ratios, dtype, device)
        if self.round_anchors:
            return anchors
        # the parent rounds; recompute without rounding: (w, h) = size * (1/sqrt(r), sqrt(r))
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        hs = (torch.sqrt(ratios)[:, None] * scales[None, :]).reshape(-1)
        ws = (1 / torch.sqrt(ratios)[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        # the parent only reads shape, dtype and device of the maps: hand it empty float32 stand-ins
        stand_ins = [f.new_empty((0, 0, *f.shape[-2:]), dtype=torch.float32) for f in feature_maps]
        return super().forward(image_list, stand_ins)


def build_rpn(
    *,
    in_channels: int = 256,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    round_anchors: bool = True,
    pre_nms_top_n_train: int = 2000,
    pre_nms_top_n_test: int = 1000,
    post_nms_top_n_train: int = 1000,
    post_nms_top_n_test: int = 1000,
    nms_thresh: float = 0.7,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
) -> rpn.RegionProposalNetwork:
    """RPN over the 5 FPN levels (one anchor size per level, P2..P6).

    Args:
        in_channels: FPN channels.
        anchor_sizes: anchor side per level (sqrt of its area), P2..P6.
        aspect_ratios: anchor height/width ratios, shared by all levels.
        round_anchors: torchvision rounds cell anchors to integers; detectron2 does not.
        pre_nms_top_n_train / _test: proposals kept per level before NMS.
        post_nms_top_n_train / _test: proposals kept per image after NMS.
        nms_thresh: IoU threshold of the proposal NMS.
        fg_iou_thresh / bg_iou_thresh: anchor labelling thresholds of the RPN loss.
        batch_size_per_image / positive_fraction: anchors sampled per image for the RPN loss.
    """
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in anchor_sizes),
        aspect_ratios=(tuple(aspect_ratios),) * len(anchor_sizes),
        round_anchors=round_anchors,
    )
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0])
    return rpn.RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
        post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
        nms_thresh=nms_thresh,
    )
