"""SiamRCNN: ResNet-FPN backbone + RPN + siamese ROI head (docs/vq2d.md#model).

Training scores every visual crop of the batch against the sampled ROIs of every frame of
the batch (cross-batch negatives) with hard-negative mining. Inference splits into a
query-independent part (``extract_frames``: backbone, FPN, RPN and proposal embeddings, once
per frame) and a cheap query-dependent part (``encode_crops`` once per query, ``detect``),
so a detection pass can score many queries against the same frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import nms, roi_align

from vq2d.modeling.backbone import P3_KEY, P3_STRIDE
from vq2d.modeling.proposal_sampling import cross_batch_labels, mine_hard_negatives, roi_ious, sample_proposals

LOSS_NAMES = ("loss_siam", "loss_rpn_objectness", "loss_rpn_box_reg", "loss_box_reg")


@dataclass
class FrameProposals:
    """Query-independent output of ``SiamRCNN.extract_frames`` for a list of frames.

    boxes: per frame ``[K_i, 4]`` float32 xyxy proposals in input-image coordinates (refined by
        the box head when the model has one).
    embeddings: per frame ``[K_i, hidden]`` projected proposal embeddings.
    image_sizes: per frame input ``(H, W)``.
    """

    boxes: list[Tensor]
    embeddings: list[Tensor]
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.boxes)

    def to(self, device: torch.device | str) -> "FrameProposals":
        return FrameProposals(
            [b.to(device) for b in self.boxes], [e.to(device) for e in self.embeddings], list(self.image_sizes)
        )


def siamese_loss(logits: Tensor, labels: Tensor, keep: Tensor, *, balanced: bool = False) -> Tensor:
    """BCE of the kept pairs: logits, labels ``[Q, N]``, keep ``[Q, N]`` bool -> scalar.

    ``balanced``: (mean over kept positives + mean over kept negatives) / 2 (a side with no
    pair contributes 0); otherwise one mean over all kept pairs. No kept pair: 0 (with a graph).
    A positive is a label > 0 (1, or its IoU with ``iou_targets``), a negative a label of 0.
    """
    if not keep.any():
        return logits.sum() * 0.0
    if not balanced:
        return F.binary_cross_entropy_with_logits(logits[keep], labels[keep])
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    sides = [keep & (labels > 0), keep & (labels <= 0)]
    return sum(losses[side].mean() for side in sides if side.any()) / 2.0


class SiamRCNN(nn.Module):
    """Siamese detector: which proposals of a frame show the object of a visual crop.

    Args:
        backbone: images ``[N, 3, H, W]`` -> FPN maps ``{"0".."3", "pool"}`` (vq2d.modeling.backbone).
        rpn: torchvision ``RegionProposalNetwork`` over all FPN maps (vq2d.modeling.rpn).
        head: ``SiameseHead`` (projector + bilinear comparison).
        box_head: optional ``BoxRefineHead`` (vq2d.modeling.box_head): class-agnostic deltas on
            the ROI maps; the output boxes become the refined proposals (None, the originals:
            the proposals themselves).
        pixel_mean, pixel_std: 3 values in ``input_format`` channel order, 0..255 scale.
        input_format: "RGB" or "BGR"; inputs are always RGB and are flipped for "BGR".
        min_size: short sides of the resized frame; training draws one at random, inference
            uses the last one.
        max_size: cap on the long side of the resized frame.
        size_divisible: the batched frame tensor is zero-padded to a multiple of this.
        rois_per_image, positive_fraction, fg_iou_thresh: ROI sampling of the siamese loss.
        append_gt: add the GT box to the ROI candidates in training.
        cross_batch_negatives: score every crop against the ROIs of every frame of the batch.
        hard_negatives_per_query: negatives kept per query by hard-negative mining (None: all).
        hard_negatives_as_released: mine as the released detectron2 code does (see
            ``vq2d.modeling.proposal_sampling.mine_hard_negatives``).
        balanced_siam_loss: the siamese BCE as the mean of its positive pairs' mean and its
            negative pairs' mean (False, the originals: one mean over all kept pairs, where
            negatives outnumber positives about 10 to 1 and the scores stay near the prior).
        iou_targets: the BCE target of a positive pair is the ROI's IoU with the response box
            instead of 1 (an IoU-aware score: of two proposals on the object the tighter one
            scores higher; False, the originals: every positive's target is 1).
        crop_size: side S of the square visual crops.
        crop_context: pixels of context around the box in the visual crop (of the source frame;
            16 in the originals, docs/vq2d.md#visual-crop); kept with the model so training
            and inference cut the same crops.
        roi_sampling_ratio, roi_aligned: RoIAlign options (0 and True = detectron2's ROIAlignV2).
        detections_per_frame, nms_thresh, score_thresh: inference post-processing (class-agnostic
            NMS, then top-k; a detection needs probability > score_thresh).
        freeze_backbone, freeze_rpn: set ``requires_grad=False`` on the backbone (trunk + FPN) /
            the RPN head.
        loss_weights: multiplier per returned loss (default 1 each; ``loss_box_reg`` only with a box_head).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: nn.Module,
        head: nn.Module,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        input_format: str = "RGB",
        min_size: tuple[int, ...] = (800,),
        max_size: int = 1333,
        size_divisible: int = 32,
        rois_per_image: int = 64,
        positive_fraction: float = 0.1,
        fg_iou_thresh: float = 0.5,
        append_gt: bool = True,
        cross_batch_negatives: bool = True,
        hard_negatives_per_query: int | None = 64,
        hard_negatives_as_released: bool = False,
        balanced_siam_loss: bool = False,
        iou_targets: bool = False,
        crop_size: int = 256,
        crop_context: int = 16,
        roi_sampling_ratio: int = 0,
        roi_aligned: bool = True,
        detections_per_frame: int = 10,
        nms_thresh: float = 0.5,
        score_thresh: float = 0.0,
        freeze_backbone: bool = False,
        freeze_rpn: bool = False,
        loss_weights: dict[str, float] | None = None,
        box_head: nn.Module | None = None,
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 values each")
        self.backbone, self.rpn, self.head = backbone, rpn, head
        self.box_head = box_head
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)
        min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.transform = GeneralizedRCNNTransform(
            min_size, max_size, list(map(float, pixel_mean)), list(map(float, pixel_std)), size_divisible
        )
        self.rois_per_image = rois_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.append_gt = append_gt
        self.cross_batch_negatives = cross_batch_negatives
        self.hard_negatives_per_query = hard_negatives_per_query
        self.hard_negatives_as_released = hard_negatives_as_released
        self.balanced_siam_loss = bool(balanced_siam_loss)
        self.iou_targets = bool(iou_targets)
        self.crop_size = crop_size
        self.crop_context = int(crop_context)
        self.roi_sampling_ratio = roi_sampling_ratio
        self.roi_aligned = roi_aligned
        self.detections_per_frame = detections_per_frame
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        weights = dict.fromkeys(LOSS_NAMES, 1.0)
        unknown = set(loss_weights or {}) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: {list(LOSS_NAMES)}")
        weights.update(loss_weights or {})
        self.loss_weights = weights
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        if freeze_rpn:
            self.rpn.requires_grad_(False)

    # ------------------------------------------------------------------ inputs
    def _to_model_channels(self, x: Tensor) -> Tensor:
        """RGB 0..255 ``[..., 3, H, W]`` -> float in the model's channel order."""
        x = x if x.is_floating_point() else x.float()
        return x.flip(-3) if self.input_format == "BGR" else x

    def _check_pairs(self, images: list[Tensor], crops: Tensor, per_image: bool = False) -> int:
        """Checks the crops; returns k, the crops per image (1 unless ``per_image`` allows more)."""
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(f"crops must be [B, 3, {self.crop_size}, {self.crop_size}], got {list(crops.shape)}")
        k = len(crops) // max(len(images), 1)
        if len(images) == 0 or len(crops) != k * len(images) or (k != 1 and not per_image):
            what = "k crops per image (image-major)" if per_image else "one crop per image"
            raise ValueError(f"got {len(images)} images but {len(crops)} crops: {what}")
        return k

    # ----------------------------------------------------------- building blocks
    def _run_detector(self, images: list[Tensor], targets: list[dict] | None = None):
        """Resize + normalise + pad, backbone + FPN, RPN.

        Returns (image_list, features, proposals per image ``[K_i, 4]`` in resized coords,
        RPN losses (training), targets with boxes in resized coords).
        """
        images = [self._to_model_channels(img) for img in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        return image_list, features, proposals, rpn_losses, targets

    def _roi_align(self, maps: Tensor, boxes: list[Tensor], stride: int) -> Tensor:
        """RoIAlign of ``[B, C, H, W]`` maps of the given stride: per image ``[K_i, 4]`` boxes
        (resized coords) -> ``[sum K_i, C, R, R]``."""
        return roi_align(maps, [b.float() for b in boxes], output_size=self.head.pooler_resolution,
                         spatial_scale=1.0 / stride, sampling_ratio=self.roi_sampling_ratio, aligned=self.roi_aligned)

    def _pool_rois(self, features: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        """RoIAlign on P3: per image ``[K_i, 4]`` boxes (resized coords) -> ``[sum K_i, C, R, R]``."""
        return self._roi_align(features[P3_KEY], boxes, P3_STRIDE)

    def _embed_rois(self, roi_maps: Tensor, frames: Tensor, boxes: list[Tensor]) -> Tensor:
        """ROI maps ``[N, C, R, R]`` -> embeddings ``[N, hidden]``. A head with ``pixels`` also
        gets the normalised frames ``[B, 3, H, W]`` pooled in the same boxes (``[N, C + 3, R, R]``)."""
        if self.head.pixels:
            roi_maps = torch.cat([roi_maps, self._roi_align(frames, boxes, 1).to(roi_maps.dtype)], dim=1)
        return self.head.embed(roi_maps)

    def encode_crops(self, crops: Tensor) -> Tensor:
        """Visual crops ``[Q, 3, S, S]`` (RGB, 0..255) -> query embeddings ``[Q, hidden]``."""
        x = (self._to_model_channels(crops) - self.pixel_mean) / self.pixel_std
        p3 = self.backbone(x)[P3_KEY]  # [Q, C, S/8, S/8]
        pooled = F.adaptive_avg_pool2d(p3, self.head.pooler_resolution)  # [Q, C, R, R]
        if self.head.pixels:  # + the crop itself: [Q, C + 3, R, R]
            pooled = torch.cat([pooled, F.adaptive_avg_pool2d(x, self.head.pooler_resolution).to(pooled.dtype)], 1)
        return self.head.embed(pooled)

    def score(self, proposal_emb: Tensor, query_emb: Tensor) -> Tensor:
        """Logits ``[Q, K]`` of proposals ``[K, hidden]`` against queries ``[Q, hidden]``."""
        return self.head.score(proposal_emb, query_emb)

    def extract_frames(self, images: list[Tensor]) -> FrameProposals:
        """Backbone + FPN + RPN once per frame (eval mode); no query involved.

        images: list of ``[3, H_i, W_i]`` RGB 0..255. Returns proposals in input coordinates
        (moved by the box head's deltas when there is one) with the embeddings of the
        proposals as the RPN gave them (RoIAlign 14x14 on P3 -> projector).
        """
        if self.training:
            raise RuntimeError("extract_frames runs in eval mode: call model.eval() first")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, features, proposals, _, _ = self._run_detector(images)
        roi_maps = self._pool_rois(features, proposals)
        counts = [len(p) for p in proposals]
        embeddings = self._embed_rois(roi_maps, image_list.tensors, proposals).split(counts)
        if self.box_head is not None:  # the embeddings stay those of the proposals they refine
            deltas = self.box_head(roi_maps).split(counts)
            proposals = [self.box_head.refine(d, p, size)
                         for d, p, size in zip(deltas, proposals, image_list.image_sizes)]
        boxes = [
            resize_boxes(p.float(), resized, original)
            for p, resized, original in zip(proposals, image_list.image_sizes, original_sizes)
        ]
        return FrameProposals(boxes, list(embeddings), original_sizes)

    def _detect_in_frame(self, boxes: Tensor, embeddings: Tensor, query_emb: Tensor) -> list[dict[str, Tensor]]:
        """One frame's proposals ``[K, 4]`` / ``[K, hidden]`` against queries ``[Q, hidden]``.

        Returns per query {"boxes": ``[k, 4]``, "scores": ``[k]``}, k <= detections_per_frame,
        sorted by decreasing score.
        """
        scores = torch.sigmoid(self.score(embeddings, query_emb))  # [Q, K]
        return [self._select(boxes, query_scores) for query_scores in scores]

    def _select(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """One query's detections from a frame's proposals ``[K, 4]`` and their probabilities
        ``[K]``: above ``score_thresh``, NMS, the top ``detections_per_frame`` by score."""
        keep = torch.where(scores > self.score_thresh)[0]
        kept = keep[nms(boxes[keep], scores[keep], self.nms_thresh)][: self.detections_per_frame]
        return {"boxes": boxes[kept], "scores": scores[kept]}

    def detect(self, frames: FrameProposals, query_emb: Tensor) -> list[list[dict[str, Tensor]]]:
        """Every query ``[Q, hidden]`` on every frame -> ``[frame][query]`` {"boxes", "scores"}."""
        return [self._detect_in_frame(b, e, query_emb) for b, e in zip(frames.boxes, frames.embeddings)]

    def detect_pairs(self, images: list[Tensor], crops: Tensor) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """Pair i = (images[i], crops[i]), eval mode. Returns (detections: B dicts {"boxes" ``[k, 4]``,
        "scores" ``[k]``} after NMS and top-k; proposals: B dicts {"boxes" ``[K, 4]``, "scores"
        ``[K]``}, every proposal of the frame with its probability for the crop, before NMS),
        both in input coordinates. The second is what vq2d.evaluation.detector_diagnostics reads."""
        frames = self.extract_frames(images)
        query_emb = self.encode_crops(crops)
        detections, proposals = [], []
        for i in range(len(images)):
            scores = torch.sigmoid(self.score(frames.embeddings[i], query_emb[i : i + 1]))[0]  # [K]
            detections.append(self._select(frames.boxes[i], scores))
            proposals.append({"boxes": frames.boxes[i], "scores": scores})
        return detections, proposals

    # ----------------------------------------------------------------- forward
    def forward(self, images: list[Tensor], crops: Tensor, targets: list[dict] | None = None):
        """images: list of B ``[3, H_i, W_i]`` RGB 0..255; crops ``[B, 3, S, S]`` RGB 0..255 (in
        training also ``[B * k, 3, S, S]``: k crops of image i's object at rows i*k .. i*k+k-1);
        targets (training): B dicts {"boxes": ``[n_i, 4]``} xyxy input coords, n_i = 0 for a
        negative frame.

        Training: {"loss_siam", "loss_rpn_objectness", "loss_rpn_box_reg"} (+ "loss_box_reg" with a
        box_head), weighted.
        Inference: B dicts {"boxes": ``[k, 4]``, "scores": ``[k]``} for pair (images[i], crops[i]).
        """
        crops_per_image = self._check_pairs(images, crops, per_image=self.training)
        if not self.training:
            return self.detect_pairs(images, crops)[0]
        if targets is None or len(targets) != len(images):
            raise ValueError("training needs one target dict {'boxes': [n, 4]} per image")
        targets = [{"boxes": t["boxes"].reshape(-1, 4).float()} for t in targets]
        image_list, features, proposals, rpn_losses, targets = self._run_detector(images, targets)
        rois, roi_labels = sample_proposals(
            [p.detach() for p in proposals],
            [t["boxes"] for t in targets],
            rois_per_image=self.rois_per_image,
            positive_fraction=self.positive_fraction,
            fg_iou_thresh=self.fg_iou_thresh,
            append_gt=self.append_gt,
        )
        roi_maps = self._pool_rois(features, rois)  # [N, C, R, R]
        roi_emb = self._embed_rois(roi_maps, image_list.tensors, rois)  # [N, hidden]
        logits = self.score(roi_emb, self.encode_crops(crops))  # [B * k, N]
        labels, valid = cross_batch_labels(roi_labels, self.cross_batch_negatives, crops_per_image)
        keep = mine_hard_negatives(logits, labels, valid, self.hard_negatives_per_query,
                                   as_released=self.hard_negatives_as_released)
        if self.iou_targets:  # positives' targets = their IoU with the response box
            ious = torch.cat([roi_ious(r, t["boxes"]) for r, t in zip(rois, targets)])  # [N]
            labels = labels * ious[None, :].to(labels)
        loss_siam = siamese_loss(logits, labels, keep, balanced=self.balanced_siam_loss)
        losses = {
            "loss_siam": loss_siam,
            "loss_rpn_objectness": rpn_losses["loss_objectness"],
            "loss_rpn_box_reg": rpn_losses["loss_rpn_box_reg"],
        }
        if self.box_head is not None:
            losses["loss_box_reg"] = self.box_head.loss(self.box_head(roi_maps), rois, roi_labels,
                                                        [t["boxes"] for t in targets])
        return {name: value * self.loss_weights[name] for name, value in losses.items()}

    # -------------------------------------------------------------- optimiser
    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by part: {"backbone": ..., "rpn": ..., "head": ...}."""
        parts = {"backbone": [("backbone", self.backbone)], "rpn": [("rpn", self.rpn)],
                 "head": [("head", self.head)] + ([("box_head", self.box_head)] if self.box_head is not None else [])}
        return {
            part: [(f"{prefix}.{n}", p) for prefix, module in modules for n, p in module.named_parameters()
                   if p.requires_grad]
            for part, modules in parts.items()
        }

    def param_groups(self, lr_head: float, lr_backbone: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: the head at ``lr_head``, backbone + RPN at ``lr_backbone``.

        Frozen parameters are left out; empty groups are dropped. Each group has a "name".
        """
        named = self.named_parameter_groups()
        groups = [
            {"name": "head", "params": [p for _, p in named["head"]], "lr": lr_head},
            {"name": "backbone", "params": [p for _, p in named["backbone"] + named["rpn"]], "lr": lr_backbone},
        ]
        return [dict(g, weight_decay=weight_decay) for g in groups if g["params"]]
