"""Pretrained weights for SiamRCNN from local files (never downloaded).

* ``load_torchvision_detector``: a torchvision ``fasterrcnn_resnet50_fpn`` state dict ->
  backbone (trunk + FPN) + RPN head; the detector's ROI heads are ignored.
* ``load_imagenet_backbone``: a torchvision ``resnet*`` state dict -> the backbone trunk.
* ``convert_detectron2_state_dict`` / ``export_detectron2_state_dict``: key mapping between
  the released detectron2 VQ2D checkpoints and this model (both directions). A converted
  checkpoint loads with ``strict=True`` into a model built with ``stride_in_1x1=True`` and
  ``input_format="BGR"`` (configs/vq2d/model/r50_fpn_detectron2.yaml).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from episodic.errors import DataError
from episodic.io import atomic_torch_save

logger = logging.getLogger(__name__)

# detectron2 prefix -> our prefix, for names mapped by prefix only
_D2_PREFIXES = (
    ("backbone.bottom_up.stem.conv1.norm.", "backbone.body.bn1."),
    ("backbone.bottom_up.stem.conv1.", "backbone.body.conv1."),
    ("proposal_generator.rpn_head.conv.", "rpn.head.conv.0.0."),
    ("proposal_generator.rpn_head.objectness_logits.", "rpn.head.cls_logits."),
    ("proposal_generator.rpn_head.anchor_deltas.", "rpn.head.bbox_pred."),
    ("roi_heads.siam_head.projector.", "head.projector."),
    ("roi_heads.siam_head.compare.", "head.compare."),
)
_D2_BLOCK = re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(\w+)$")
_OUR_BLOCK = re.compile(r"^backbone\.body\.layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")
_D2_FPN = re.compile(r"^backbone\.fpn_(lateral|output)(\d)\.(\w+)$")
_OUR_FPN = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(\w+)$")
_FPN_NAMES = {"lateral": "inner", "output": "layer"}


@dataclass
class LoadReport:
    """What a weight loader did. Keys are names in our model."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected in the file, absent
    unexpected: list[str] = field(default_factory=list)  # in the file, no place in the model
    ignored: list[str] = field(default_factory=list)  # in the file, deliberately not used

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors, missing {len(self.missing)} {self.missing[:5]}, "
            f"unexpected {len(self.unexpected)} {self.unexpected[:5]}, ignored {len(self.ignored)}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict file (``{"model": sd}``, ``{"state_dict": sd}`` or a bare sd) on CPU.

    Tries ``weights_only=True`` first; files holding other python objects (numpy arrays of
    detectron2 .pkl files, solver state) are unpickled fully, so load trusted files only.
    numpy arrays become tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - e.g. numpy arrays or solver state inside a detectron2 file
        logger.warning("%s: not loadable with weights_only=True; unpickling it fully (trusted files only)", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise DataError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from None
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, Tensor]:
    """``{"model": sd}`` / ``{"state_dict": sd}`` / sd -> sd with tensor values."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{source}: no state dict found (expected a dict of tensors, or {{'model': ...}})")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise DataError(f"{source}: entry {name!r} is not a tensor ({type(value).__name__})") from None
        out[name] = value
    return out


def _load_into(model: nn.Module, state: dict[str, Tensor], prefixes: tuple[str, ...], source: str) -> LoadReport:
    """Load ``state`` (our names) with strict=False; report missing keys under ``prefixes``."""
    report = LoadReport()
    own = model.state_dict()
    for name, value in state.items():
        if name in own and own[name].shape != value.shape:
            raise DataError(
                f"{source}: {name} has shape {list(value.shape)}, the model expects {list(own[name].shape)} "
                "(wrong ResNet depth or FPN width?)"
            )
    result = model.load_state_dict(state, strict=False)
    report.unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    report.missing = [k for k in result.missing_keys if k.startswith(prefixes)]
    report.loaded = [k for k in state if k in own]
    if not report.loaded:
        raise DataError(f"{source}: no tensor matches the model; is this the right kind of weight file?")
    logger.info("%s: %s", source, report.summary())
    return report


def load_torchvision_detector(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Backbone + FPN + RPN head from a torchvision ``fasterrcnn_resnet50_fpn`` state dict file.

    The detector's ``roi_heads.*`` are ignored (reported); the siamese head keeps its init.
    torchvision detectors use RGB input and the stride on the 3x3 conv (``stride_in_1x1=False``).
    """
    sd = read_state_dict(path)
    keep = ("backbone.body.", "backbone.fpn.", "rpn.head.")
    state = {k: v for k, v in sd.items() if k.startswith(keep)}
    report = _load_into(model, state, keep, str(path))
    report.ignored = [k for k in sd if not k.startswith(keep)]
    return report


def load_imagenet_backbone(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """ResNet trunk from a torchvision ``resnet*`` ImageNet state dict file (``fc.*`` ignored)."""
    sd = read_state_dict(path)
    state = {f"backbone.body.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    report = _load_into(model, state, ("backbone.body.",), str(path))
    report.ignored = [k for k in sd if k.startswith("fc.")]
    return report


def detectron2_key_to_ours(name: str) -> str | None:
    """detectron2 SiamRCNN parameter name -> ours, or None for names we do not use
    (``pixel_mean``, box / mask heads of the COCO detector, ``num_batches_tracked``)."""
    if name.endswith("num_batches_tracked"):
        return None
    for d2_prefix, our_prefix in _D2_PREFIXES:
        if name.startswith(d2_prefix):
            return our_prefix + name[len(d2_prefix) :]
    match = _D2_BLOCK.match(name)
    if match:
        stage, block, part, norm, leaf = match.groups()
        if part == "shortcut":
            part = "downsample.1" if norm else "downsample.0"
        elif norm:
            part = "bn" + part[-1]
        return f"backbone.body.layer{int(stage) - 1}.{block}.{part}.{leaf}"
    match = _D2_FPN.match(name)
    if match:
        kind, level, leaf = match.groups()
        return f"backbone.fpn.{_FPN_NAMES[kind]}_blocks.{int(level) - 2}.0.{leaf}"
    if name.startswith(("roi_heads.siam_head.projector_1.", "roi_heads.siam_head.projector_2.")):
        raise DataError(f"{name}: checkpoints with unshared projectors (SHARE_PROJECTION False) are not supported")
    return None


def ours_key_to_detectron2(name: str) -> str:
    """Our parameter name -> the detectron2 SiamRCNN name (inverse of ``detectron2_key_to_ours``)."""
    for d2_prefix, our_prefix in _D2_PREFIXES:
        if name.startswith(our_prefix):
            return d2_prefix + name[len(our_prefix) :]
    match = _OUR_BLOCK.match(name)
    if match:
        layer, block, part, leaf = match.groups()
        part = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(part, part)
        if part.startswith("bn"):
            part = f"conv{part[-1]}.norm"
        return f"backbone.bottom_up.res{int(layer) + 1}.{block}.{part}.{leaf}"
    match = _OUR_FPN.match(name)
    if match:
        kind, index, leaf = match.groups()
        d2_kind = {v: k for k, v in _FPN_NAMES.items()}[kind]
        return f"backbone.fpn_{d2_kind}{int(index) + 2}.{leaf}"
    raise KeyError(f"{name}: no detectron2 equivalent")


def convert_detectron2_state_dict(sd: dict) -> dict[str, Tensor]:
    """detectron2 SiamRCNN checkpoint (``{"model": {...}}`` or the inner dict) -> our state dict.

    Names without a place in SiamRCNN (pixel statistics, COCO box/mask heads) are dropped
    and logged.
    """
    sd = unwrap_state_dict(sd, source="detectron2 checkpoint")
    out, dropped = {}, []
    for name, value in sd.items():
        ours = detectron2_key_to_ours(name)
        if ours is None:
            dropped.append(name)
        else:
            out[ours] = value
    if not out:
        raise DataError("detectron2 checkpoint: no SiamRCNN parameter found (keys like backbone.bottom_up.*)")
    if dropped:
        logger.info("detectron2 conversion dropped %d entries, e.g. %s", len(dropped), dropped[:5])
    return out


def export_detectron2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> detectron2 names (for round-trip tests and exporting)."""
    return {ours_key_to_detectron2(name): value for name, value in state_dict.items()}


def _warn_on_conventions(model: nn.Module, source: str) -> None:
    """Shapes cannot tell stride placement or channel order: warn when the model differs from
    detectron2's (BGR input, stride on the bottleneck 1x1 conv)."""
    strided_3x3 = any(isinstance(m, Bottleneck) and m.conv2.stride != (1, 1) for m in model.modules())
    if getattr(model, "input_format", "BGR") != "BGR" or strided_3x3:
        logger.warning(
            "%s: detectron2 weights expect input_format=BGR and stride_in_1x1=True "
            "(configs/vq2d/model/r50_fpn_detectron2.yaml); this model differs, its outputs will be off",
            source,
        )


def convert_detectron2_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, model: nn.Module | None = None, extra_meta: dict | None = None
) -> dict:
    """Convert a detectron2 checkpoint file to ``{"model": state_dict, "meta": {...}}`` at ``dst``.

    When ``model`` is given, the converted weights are first loaded into it with
    ``strict=True`` (a mismatch raises DataError naming the file). ``extra_meta`` (e.g. the
    model config) is merged into the meta. Written atomically. Returns the meta dict.
    """
    sd = read_state_dict(src)
    converted = convert_detectron2_state_dict(sd)
    if model is not None:
        try:
            model.load_state_dict(converted, strict=True)
        except RuntimeError as e:
            raise DataError(f"{src}: converted weights do not fit the model: {e}") from None
        _warn_on_conventions(model, str(src))
    meta = {
        "source": str(src),
        "source_format": "detectron2",
        "num_tensors": len(converted),
        "dropped": sorted(k for k in sd if detectron2_key_to_ours(k) is None),
        "input_format": "BGR",
        "stride_in_1x1": True,
        "torch": str(torch.__version__),
        **(extra_meta or {}),
    }
    atomic_torch_save(dst, {"model": converted, "meta": meta})
    return meta
