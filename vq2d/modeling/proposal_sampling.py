"""Training-time proposal labelling for the siamese head.

1. ``sample_proposals``: per image, append the GT box to the RPN proposals, label each
   proposal positive when its IoU with a GT box is >= ``fg_iou_thresh``, sample
   ``rois_per_image`` of them with at most ``positive_fraction`` positives. A negative frame
   (no GT box) yields only negatives.
2. ``cross_batch_labels``: every query is paired with the sampled proposals of every image
   of the batch; only (query i, positive proposal of image i) pairs are positive.
3. ``mine_hard_negatives``: per query keep all positives + the highest-scoring negatives
   (or, ``as_released``, what the released detectron2 code keeps; docs/vq2d.md#training).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import box_iou


def roi_ious(proposals: Tensor, gt_boxes: Tensor) -> Tensor:
    """``[K, 4]`` proposals, ``[G, 4]`` GT -> ``[K]`` float IoU of each proposal with its best GT box
    (0 when there is no GT box)."""
    if gt_boxes.numel() == 0 or proposals.numel() == 0:
        return torch.zeros(len(proposals), dtype=torch.float32, device=proposals.device)
    return box_iou(gt_boxes.reshape(-1, 4).float(), proposals.float()).max(dim=0).values


def label_proposals(proposals: Tensor, gt_boxes: Tensor, fg_iou_thresh: float) -> Tensor:
    """``[K, 4]`` proposals, ``[G, 4]`` GT (xyxy, same coordinates) -> ``[K]`` int64 labels (1 = positive)."""
    if gt_boxes.numel() == 0 or proposals.numel() == 0:
        return torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
    return (roi_ious(proposals, gt_boxes) >= fg_iou_thresh).to(torch.int64)


def sample_proposals(
    proposals: list[Tensor],
    gt_boxes: list[Tensor],
    *,
    rois_per_image: int,
    positive_fraction: float,
    fg_iou_thresh: float,
    append_gt: bool = True,
) -> tuple[list[Tensor], list[Tensor]]:
    """Sample labelled ROIs per image.

    Args:
        proposals: per image ``[K_i, 4]`` RPN boxes (detached).
        gt_boxes: per image ``[G_i, 4]`` GT boxes, ``G_i`` may be 0 (negative frame).
        rois_per_image: ROIs kept per image (fewer when the image has fewer proposals).
        positive_fraction: at most ``int(rois_per_image * positive_fraction)`` positives.
        fg_iou_thresh: IoU at or above which a proposal is positive.
        append_gt: add the GT boxes to the candidates (so every positive frame has a positive).
    Returns:
        boxes: per image ``[R_i, 4]``; labels: per image ``[R_i]`` int64 in {0, 1}.
    """
    sampler = BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)
    candidates, labels = [], []
    for props, gt in zip(proposals, gt_boxes):
        gt = gt.reshape(-1, 4).to(props)
        if append_gt:
            props = torch.cat([props, gt], dim=0)
        candidates.append(props)
        labels.append(label_proposals(props, gt, fg_iou_thresh))
    pos_masks, neg_masks = sampler(labels)
    boxes_out, labels_out = [], []
    for props, lab, pos, neg in zip(candidates, labels, pos_masks, neg_masks):
        keep = torch.where(pos.bool() | neg.bool())[0]
        boxes_out.append(props[keep])
        labels_out.append(lab[keep])
    return boxes_out, labels_out


def cross_batch_labels(labels_per_image: list[Tensor], cross_batch: bool = True,
                       queries_per_image: int = 1) -> tuple[Tensor, Tensor]:
    """Pair every query with the sampled ROIs of all images.

    Args:
        labels_per_image: per image ``[R_i]`` labels in {0, 1}.
        cross_batch: when False, a query is paired with its own image's ROIs only.
        queries_per_image: k crops per image, image-major: query q belongs to image q // k.
    Returns:
        labels: ``[B * k, N]`` float (N = sum R_i); 1 only where the ROI is a positive of the
            query's own image.
        valid: ``[B * k, N]`` bool, which pairs enter the loss.
    """
    labels = torch.cat(labels_per_image)
    image_of_roi = torch.cat(
        [torch.full_like(lab, i) for i, lab in enumerate(labels_per_image)]
    )  # [N]
    queries = torch.arange(len(labels_per_image), device=labels.device).repeat_interleave(int(queries_per_image))
    same_image = image_of_roi[None, :] == queries[:, None]  # [B, N]
    pair_labels = (same_image & (labels[None, :] == 1)).float()
    valid = torch.ones_like(same_image) if cross_batch else same_image
    return pair_labels, valid


def mine_hard_negatives(logits: Tensor, labels: Tensor, valid: Tensor, num_negatives: int | None,
                        as_released: bool = False) -> Tensor:
    """Per query keep every positive and the ``num_negatives`` highest-scoring negatives.

    Args: logits ``[Q, N]``, labels ``[Q, N]`` in {0, 1}, valid ``[Q, N]`` bool;
        ``num_negatives=None`` keeps every valid negative.
        as_released: reproduce the released detectron2 SiamRCNN code, which picks the top-k
            of the query's NEGATIVES but uses those positions (indices into the negative
            list) as positions in the query's full list of pairs: it keeps every positive
            plus the pairs at those positions, i.e. negatives chosen nearly at random (and
            sometimes fewer than k). A query with at most k negatives keeps all, as there.
    Returns: ``[Q, N]`` bool mask of the pairs that enter the loss.
    """
    positives = valid & (labels > 0.5)
    negatives = valid & (labels <= 0.5)
    if num_negatives is None or logits.shape[1] == 0:
        return positives | negatives
    if as_released:
        return _mine_as_released(logits, positives, negatives, valid, num_negatives)
    k = min(num_negatives, logits.shape[1])
    neg_scores = logits.detach().float().masked_fill(~negatives, float("-inf"))
    top = neg_scores.topk(k, dim=1).indices  # [Q, k]
    hard = torch.zeros_like(negatives)
    hard.scatter_(1, top, True)
    return positives | (hard & negatives)


def _mine_as_released(logits: Tensor, positives: Tensor, negatives: Tensor, valid: Tensor, k: int) -> Tensor:
    """The released code's mining, per query over its valid pairs (see ``mine_hard_negatives``)."""
    keep = positives.clone()
    scores = logits.detach().float()
    for q in range(logits.shape[0]):
        pairs = torch.nonzero(valid[q]).flatten()  # the query's full list of pairs
        neg = torch.nonzero(negatives[q][pairs]).flatten()  # negatives, as indices into that list
        if len(neg) <= k:
            keep[q, pairs] = True
            continue
        top_in_negatives = scores[q, pairs[neg]].topk(k).indices  # indices into the NEGATIVE list
        keep[q, pairs[top_in_negatives]] = True  # ... used as indices into the full list
    return keep
