"""Turn a checkpoint file into a ready detector: the ONE place that knows checkpoint formats.

Accepted files:

* what ``tools/train_vq2d.py`` writes as ``model_final.pth``: ``{"model": state_dict,
  "config": <model config>}``, where the config is the "model" group given to
  :func:`vq2d.modeling.build.build_model` (a whole training config holding a ``model``
  group works too);
* a state dict without a config (``{"model": sd}`` or a bare sd, our names or the released
  detectron2 names): then ``model_config`` (e.g. ``+model=r50_fpn_detectron2``) says which
  architecture to build.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from episodic.errors import DataError
from vq2d.modeling.build import build_model
from vq2d.modeling.siamrcnn import SiamRCNN
from vq2d.modeling.weights import convert_detectron2_state_dict, read_weight_file, unwrap_state_dict

logger = logging.getLogger(__name__)

_DETECTRON2_PREFIXES = ("backbone.bottom_up.", "proposal_generator.", "roi_heads.")


def checkpoint_model_config(obj: Any) -> dict | None:
    """The model config stored in a loaded checkpoint (``config``, or the ``meta.model_config``
    of files converted by earlier versions of tools/convert_detectron2_checkpoint.py), or None."""
    if not isinstance(obj, Mapping):
        return None
    stored = obj.get("config")
    if not isinstance(stored, Mapping) and isinstance(obj.get("meta"), Mapping):
        stored = obj["meta"].get("model_config")
    if not isinstance(stored, Mapping):
        return None
    cfg = dict(stored)
    if isinstance(cfg.get("model"), Mapping):  # a whole training config
        cfg = dict(cfg["model"])
    return cfg


def load_detector(checkpoint_path: str | os.PathLike, device: torch.device | str = "cpu",
                  model_config: Mapping | None = None) -> SiamRCNN:
    """Build the detector a checkpoint describes, load its weights (strict), move it to
    ``device`` and put it in eval mode.

    ``model_config`` is used when the checkpoint holds no config (and overrides nothing
    otherwise). Raises DataError naming the file when it cannot be read or does not fit."""
    path = Path(checkpoint_path)
    obj = read_weight_file(path)
    stored = checkpoint_model_config(obj)
    cfg = stored if stored is not None else (dict(model_config) if model_config is not None else None)
    if cfg is None:
        raise DataError(f"{path}: the checkpoint holds no model config; say which model it is, "
                        f"e.g. +model=r50_fpn_detectron2")
    cfg = {**cfg, "weights": {"format": "none", "path": None}}  # weights come from this file
    try:
        model = build_model(cfg)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: bad model config in the checkpoint: {e}") from None
    state = unwrap_state_dict(obj, source=str(path))
    if any(k.startswith(_DETECTRON2_PREFIXES) for k in state):
        state = convert_detectron2_state_dict(state)
    own = model.state_dict()
    if not any(k in own for k in state):
        raise DataError(f"{path}: not a VQ2D SiamRCNN checkpoint (expected keys like backbone.body.*, rpn.head.*, "
                        f"head.*, or the detectron2 names; found e.g. {sorted(state)[:3]})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        missing = sorted(set(own) - set(state))[:3]
        extra = sorted(set(state) - set(own))[:3]
        raise DataError(f"{path}: weights do not fit the model the config describes (missing e.g. {missing}, "
                        f"unexpected e.g. {extra}; {str(e).splitlines()[0]})") from None
    logger.info("loaded detector from %s", path)
    return model.to(device).eval()


def checkpoint_identity(checkpoint_path: str | os.PathLike) -> str:
    """An id of a checkpoint's CONTENT (size and a hash of its bytes) for cache keys: the
    same weights under another name or time keep it, other weights in the same file change it."""
    from vq2d.inference.cache_keys import file_content_id

    return file_content_id(checkpoint_path)
