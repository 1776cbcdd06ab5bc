"""Pretrained weights for SiamRCNN from local files (never downloaded).

* ``load_torchvision_detector``: a torchvision ``fasterrcnn_resnet50_fpn`` state dict ->
  backbone (trunk + FPN) + RPN head; the detector's ROI heads are ignored.
* ``load_imagenet_backbone``: a torchvision ``resnet*`` state dict -> the backbone trunk.
* ``load_detectron2_init``: a detectron2 model-zoo detector (the ``.pkl`` pickle of numpy
  arrays ``{"model": ..., "__author__": ...}``, e.g. the COCO Mask R-CNN R50-FPN
  ``model_final_f10217.pkl`` the reference SiamRCNN starts from) -> backbone + RPN; its box
  and mask heads are skipped by name, any other name is an error.
* ``convert_detectron2_state_dict`` / ``export_detectron2_state_dict``: key mapping between
  the released detectron2 VQ2D checkpoints and this model (both directions). A converted
  checkpoint loads with ``strict=True`` into a model built with ``stride_in_1x1=True`` and
  ``input_format="BGR"`` (configs/vq2d/model/r50_fpn_detectron2.yaml).

Every loader returns a :class:`LoadReport` (docs/vq2d.md#released-weights).
"""
from __future__ import annotations

import logging
import os
import pickle
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
            f"loaded {len(self.loaded)} tensors, skipped {len(self.ignored)} by name, "
            f"missing {len(self.missing)} {self.missing[:5]}, unexpected {len(self.unexpected)} {self.unexpected[:5]}"
        )


def read_weight_file(path: str | os.PathLike) -> object:
    """The object stored in a weight file, on CPU: a torch checkpoint (``torch.save``) or a
    plain pickle (detectron2 model-zoo ``.pkl``: numpy arrays, latin-1 strings).

    A plain pickle holding a dict is read as such; torch files are read with
    ``weights_only=True`` first, then unpickled fully (objects other than tensors inside),
    so load trusted files only. A file that is neither raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weight file not found")
    errors = []
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's format since torch 1.6
    if not is_zip:
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="latin1")  # detectron2 model zoo files are python-2 era pickles
            if isinstance(obj, dict):
                return obj
            errors.append(f"pickle: holds a {type(obj).__name__}")  # e.g. the magic number of a legacy torch file
        except Exception as e:  # noqa: BLE001
            errors.append(f"pickle: {type(e).__name__}: {e}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - solver state, or not a torch file at all
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        logger.warning("%s: not loadable with weights_only=True; unpickled it fully (trusted files only)", path)
        return obj
    except Exception as e:  # noqa: BLE001
        errors.append(f"torch.load: {type(e).__name__}: {e}")
    raise DataError(f"{path}: neither a torch checkpoint (.pth) nor a detectron2 pickle (.pkl) "
                    f"({'; '.join(errors)})")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict file (``{"model": sd}``, ``{"state_dict": sd}`` or a bare sd; torch or
    detectron2 pickle, see :func:`read_weight_file`) on CPU; numpy arrays become tensors."""
    return unwrap_state_dict(read_weight_file(path), source=str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, Tensor]:
    """``{"model": sd}`` / ``{"state_dict": sd}`` / sd -> sd with tensor values."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{source}: no state dict found (expected a dict of tensors, or {{'model': ...}}; "
                        f"got {type(obj).__name__})")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise DataError(f"{source}: entry {name!r} is not a tensor ({type(value).__name__}); "
                                "expected a state dict of tensors or numpy arrays") from None
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
    report.missing = [k for k in result.missing_keys
                      if k.startswith(prefixes) and not k.endswith("num_batches_tracked")]
    report.loaded = [k for k in state if k in own]
    if not report.loaded:
        raise DataError(f"{source}: no tensor matches the model; is this the right kind of weight file?")
    logger.info("%s: %s", source, report.summary())
    return report


def _require_exact(model: nn.Module, state: dict[str, Tensor], prefixes: tuple[str, ...], source: str,
                   expected: str) -> None:
    """Every tensor of ``model`` under ``prefixes`` is in ``state`` and ``state`` has nothing
    else there (BatchNorm's num_batches_tracked aside); else DataError naming ``source``, the
    first differing keys and what file was ``expected``."""
    own = {k for k in model.state_dict() if k.startswith(prefixes) and not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    extra, missing = sorted(given - own), sorted(own - given)
    if extra or missing:
        raise DataError(f"{source}: not {expected}: {len(extra)} keys this model does not have "
                        f"(e.g. {extra[:3]}), {len(missing)} of its keys absent (e.g. {missing[:3]})")


def load_torchvision_detector(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Backbone + FPN + RPN head from a torchvision ``fasterrcnn_resnet50_fpn`` state dict file.

    The detector's ``roi_heads.*`` are ignored (reported); the siamese head keeps its init.
    The backbone, FPN and RPN keys must match this model exactly: another variant (e.g.
    ``fasterrcnn_resnet50_fpn_v2``, whose FPN and RPN have norm layers and a second conv) or
    another depth is an error, never a partial load. torchvision detectors use RGB input and
    the stride on the 3x3 conv (``stride_in_1x1=False``).
    """
    sd = read_state_dict(path)
    keep = ("backbone.body.", "backbone.fpn.", "rpn.head.")
    state = {k: v for k, v in sd.items() if k.startswith(keep)}
    _require_exact(model, state, keep, str(path),
                   "a torchvision fasterrcnn_resnet50_fpn (v1) state dict of this depth and FPN width "
                   "(a different variant such as fasterrcnn_resnet50_fpn_v2?)")
    report = _load_into(model, state, keep, str(path))
    report.ignored = [k for k in sd if not k.startswith(keep)]
    return report


# detectron2 model-zoo detector parts SiamRCNN does not use, skipped by name
_D2_UNUSED_HEADS = ("roi_heads.box_head.", "roi_heads.box_predictor.", "roi_heads.mask_head.",
                    "roi_heads.keypoint_head.")
_D2_UNUSED_NAMES = ("pixel_mean", "pixel_std")
_D2_INIT_TARGETS = ("backbone.body.", "backbone.fpn.", "rpn.head.")


def is_siamrcnn_detectron2(sd: dict) -> bool:
    """Whether a detectron2-named state dict is a trained SiamRCNN (has the siamese head)."""
    return any(k.startswith("roi_heads.siam_head.") for k in sd)


def load_detectron2_init(model: nn.Module, path: str | os.PathLike, sd: dict | None = None) -> LoadReport:
    """Backbone (ResNet + FPN) + RPN head from a detectron2 model-zoo detector file.

    The file: ``{"model": {name: numpy array}, "__author__": ...}`` (pickle) or a torch
    file with detectron2 names. Box / mask / keypoint heads and pixel statistics are skipped
    by name (``report.ignored``); any other name without a place in the backbone or RPN is an
    error naming the file and the key, and so is a backbone / RPN tensor of this model the
    file lacks. Expects a model built in detectron2 conventions (``r50_fpn_detectron2``:
    BGR input, stride on the 1x1 conv); a model that differs gets a warning. ``sd``: the
    file's state dict when already read."""
    source = str(path)
    sd = read_state_dict(path) if sd is None else sd
    if is_siamrcnn_detectron2(sd):
        raise DataError(f"{source}: a trained SiamRCNN checkpoint, not a model-zoo detector; load it whole "
                        "(model.weights.format=detectron2 does so) or convert it with "
                        "tools/convert_detectron2_checkpoint.py")
    state, ignored = {}, []
    for name, value in sd.items():
        if name.startswith(_D2_UNUSED_HEADS) or name in _D2_UNUSED_NAMES or name.endswith("num_batches_tracked"):
            ignored.append(name)
            continue
        ours = detectron2_key_to_ours(name)
        if ours is None or not ours.startswith(_D2_INIT_TARGETS):
            raise DataError(f"{source}: unexpected key {name!r}: expected a detectron2 model-zoo detector "
                            "(backbone.bottom_up.*, backbone.fpn_*, proposal_generator.rpn_head.*, "
                            "roi_heads.box_head/box_predictor/mask_head.*)")
        state[ours] = value
    if not state:
        raise DataError(f"{source}: no backbone or RPN tensor with detectron2 names (backbone.bottom_up.*); "
                        "expected a detectron2 model-zoo detector .pkl")
    _require_exact(model, state, _D2_INIT_TARGETS, source,
                   "a detectron2 ResNet-FPN detector of this depth and FPN width")
    report = _load_into(model, state, _D2_INIT_TARGETS, source)
    report.ignored = ignored
    _warn_on_conventions(model, source)
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
    src: str | os.PathLike, dst: str | os.PathLike, model: nn.Module | None = None, extra_meta: dict | None = None,
    model_config: dict | None = None,
) -> dict:
    """Convert a detectron2 checkpoint file to ``{"model": state_dict, "config": model_config,
    "meta": {...}}`` at ``dst``.

    ``model_config`` (the "model" group the weights fit, its ``weights`` entry set to none)
    is stored so that ``tools/eval_vq2d.py checkpoint=<dst>`` needs no model flag. When
    ``model`` is given, the converted weights are first loaded into it with ``strict=True``
    (a mismatch raises DataError naming the file). ``extra_meta`` is merged into the meta.
    Written atomically. Returns the meta dict.
    """
    sd = read_state_dict(src)
    if not is_siamrcnn_detectron2(sd):
        raise DataError(f"{src}: no siamese head (roi_heads.siam_head.*): not a released detectron2 SiamRCNN "
                        "checkpoint (a model-zoo detector initialises training: model.weights.format=detectron2)")
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
    out = {"model": converted, "meta": meta}
    if model_config is not None:
        out["config"] = {**model_config, "weights": {"format": "none", "path": None}}
    atomic_torch_save(dst, out)
    return meta
