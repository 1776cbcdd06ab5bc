"""``build_model(cfg)``: the one place translating the "model" config group into constructor
arguments (configs/vq2d/model/*.yaml documents every key).

Keys missing from ``cfg`` take the defaults below; unknown keys are errors.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from episodic.errors import DataError
from vq2d.modeling.backbone import build_resnet_fpn_backbone
from vq2d.modeling.box_head import BoxRefineHead
from vq2d.modeling.rpn import build_rpn
from vq2d.modeling.siam_head import SiameseHead
from vq2d.modeling.siamrcnn import SiamRCNN
from vq2d.modeling import weights as weight_io

logger = logging.getLogger(__name__)

# pixel statistics (0..255 scale) in the model's channel order
PIXEL_STATS = {
    "RGB": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),  # torchvision ImageNet mean/std x 255
    "BGR": ((103.53, 116.28, 123.675), (1.0, 1.0, 1.0)),  # detectron2 MSRA ResNets
}

DEFAULTS: dict[str, Any] = {
    "depth": 50,
    "width": 64,
    "fpn_channels": 256,
    "trainable_backbone_layers": 3,
    "stride_in_1x1": False,
    "frozen_bn": True,
    "group_norm": 0,
    "freeze_backbone": False,
    "freeze_rpn": False,
    "input_format": "RGB",
    "pixel_mean": None,
    "pixel_std": None,
    "min_size": (640, 672, 704, 736, 768, 800),
    "max_size": 1333,
    "size_divisible": 32,
    "rpn": {
        "anchor_sizes": (32, 64, 128, 256, 512),
        "aspect_ratios": (0.5, 1.0, 2.0),
        "round_anchors": True,
        "pre_nms_top_n_train": 2000,
        "pre_nms_top_n_test": 1000,
        "post_nms_top_n_train": 1000,
        "post_nms_top_n_test": 1000,
        "nms_thresh": 0.7,
        "fg_iou_thresh": 0.7,
        "bg_iou_thresh": 0.3,
        "batch_size_per_image": 256,
        "positive_fraction": 0.5,
    },
    "head": {
        "hidden_size": 1024,
        "num_residual_blocks": 4,
        "pooler_resolution": 14,
        "similarity": "bilinear",
        "spatial_pool": 1,
        "init_scale": 10.0,
        "init_bias": -5.0,
        "pixels": False,
    },
    "box_head": {"enabled": False, "hidden_size": 256, "detach_features": False},
    "rois_per_image": 64,
    "positive_fraction": 0.1,
    "fg_iou_thresh": 0.5,
    "append_gt": True,
    "cross_batch_negatives": True,
    "hard_negatives_per_query": 64,
    "hard_negatives_as_released": False,
    "balanced_siam_loss": False,
    "iou_targets": False,
    "crop_size": 256,
    "crop_context": 16,
    "roi_sampling_ratio": 0,
    "roi_aligned": True,
    "detections_per_frame": 10,
    "nms_thresh": 0.5,
    "score_thresh": 0.0,
    "loss_weights": {"loss_siam": 1.0, "loss_rpn_objectness": 1.0, "loss_rpn_box_reg": 1.0, "loss_box_reg": 1.0},
    "weights": {"format": "none", "path": None},
}
WEIGHT_FORMATS = ("none", "torchvision_detector", "imagenet", "detectron2", "siamrcnn")


def _plain(cfg: Any) -> Any:
    """OmegaConf / Mapping -> plain python containers."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


def resolve_model_config(cfg: Mapping | None = None) -> dict[str, Any]:
    """Merge ``cfg`` over DEFAULTS (one level of nesting); unknown keys raise ValueError."""
    cfg = dict(_plain(cfg) or {})
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    merged = {}
    for key, default in DEFAULTS.items():
        value = cfg.get(key, default)
        if isinstance(default, dict):
            value = dict(value or {})
            bad = set(value) - set(default)
            if bad:
                raise ValueError(f"unknown keys {sorted(bad)} in model.{key}; known: {sorted(default)}")
            value = {**default, **value}
        merged[key] = value
    if merged["input_format"] not in PIXEL_STATS:
        raise ValueError(f"model.input_format must be RGB or BGR, got {merged['input_format']!r}")
    mean, std = PIXEL_STATS[merged["input_format"]]
    merged["pixel_mean"] = tuple(merged["pixel_mean"] or mean)
    merged["pixel_std"] = tuple(merged["pixel_std"] or std)
    if merged["weights"]["format"] not in WEIGHT_FORMATS:
        raise ValueError(f"model.weights.format must be one of {WEIGHT_FORMATS}, got {merged['weights']['format']!r}")
    return merged


def build_model(cfg: Mapping | None = None) -> SiamRCNN:
    """SiamRCNN from the "model" config group; loads ``weights.path`` when ``weights.format``
    is not "none" (random init otherwise)."""
    c = resolve_model_config(cfg)
    backbone = build_resnet_fpn_backbone(
        depth=c["depth"],
        out_channels=c["fpn_channels"],
        trainable_layers=c["trainable_backbone_layers"],
        stride_in_1x1=c["stride_in_1x1"],
        frozen_bn=c["frozen_bn"],
        width=c["width"],
        group_norm=c["group_norm"],
    )
    rpn_cfg = dict(c["rpn"])
    rpn = build_rpn(
        in_channels=c["fpn_channels"],
        **{**rpn_cfg, "anchor_sizes": tuple(rpn_cfg["anchor_sizes"]), "aspect_ratios": tuple(rpn_cfg["aspect_ratios"])},
    )
    head = SiameseHead(in_channels=c["fpn_channels"], **c["head"])
    box_head = None
    if c["box_head"]["enabled"]:
        box_head = BoxRefineHead(in_channels=c["fpn_channels"], resolution=c["head"]["pooler_resolution"],
                                 hidden_size=c["box_head"]["hidden_size"],
                                 detach_features=bool(c["box_head"]["detach_features"]))
    model = SiamRCNN(
        backbone=backbone,
        rpn=rpn,
        head=head,
        pixel_mean=c["pixel_mean"],
        pixel_std=c["pixel_std"],
        input_format=c["input_format"],
        min_size=c["min_size"],
        max_size=c["max_size"],
        size_divisible=c["size_divisible"],
        rois_per_image=c["rois_per_image"],
        positive_fraction=c["positive_fraction"],
        fg_iou_thresh=c["fg_iou_thresh"],
        append_gt=c["append_gt"],
        cross_batch_negatives=c["cross_batch_negatives"],
        hard_negatives_per_query=c["hard_negatives_per_query"],
        hard_negatives_as_released=bool(c["hard_negatives_as_released"]),
        balanced_siam_loss=bool(c["balanced_siam_loss"]),
        iou_targets=bool(c["iou_targets"]),
        crop_size=c["crop_size"],
        crop_context=c["crop_context"],
        roi_sampling_ratio=c["roi_sampling_ratio"],
        roi_aligned=c["roi_aligned"],
        detections_per_frame=c["detections_per_frame"],
        nms_thresh=c["nms_thresh"],
        score_thresh=c["score_thresh"],
        freeze_backbone=c["freeze_backbone"],
        freeze_rpn=c["freeze_rpn"],
        loss_weights=c["loss_weights"],
        box_head=box_head,
    )
    load_weights(model, c["weights"]["format"], c["weights"]["path"])
    return model


def load_weights(model: SiamRCNN, fmt: str, path: str | None) -> weight_io.LoadReport | None:
    """Load pretrained weights of format ``fmt`` (see WEIGHT_FORMATS) from the local ``path``;
    returns what was loaded and skipped (None for ``none``).

    ``detectron2``: a model-zoo detector (``.pkl``, no siamese head) initialises backbone +
    RPN; a released SiamRCNN checkpoint (detectron2 names, with ``roi_heads.siam_head.*``)
    loads whole, strictly. ``siamrcnn``: our own names, strictly."""
    if fmt == "none":
        return None
    if not path:
        raise ValueError(f"model.weights.format is {fmt!r} but model.weights.path is empty")
    if fmt == "torchvision_detector":
        report = weight_io.load_torchvision_detector(model, path)
    elif fmt == "imagenet":
        report = weight_io.load_imagenet_backbone(model, path)
    else:
        sd = weight_io.read_state_dict(path)
        if fmt == "detectron2":
            if not weight_io.is_siamrcnn_detectron2(sd):
                report = weight_io.load_detectron2_init(model, path, sd)
                logger.info("loaded %s weights from %s: %s", fmt, path, report.summary())
                return report
            sd = weight_io.convert_detectron2_state_dict(sd)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise DataError(f"{path}: weights do not fit the model ({fmt}): {e}") from None
        report = weight_io.LoadReport(loaded=list(sd))
    logger.info("loaded %s weights from %s: %s", fmt, path, report.summary())
    return report
