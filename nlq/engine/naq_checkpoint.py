"""``tools/convert_naq_checkpoint.py``: a released NaQ checkpoint -> a checkpoint of this toolkit.

The output has what :func:`nlq.engine.inference.load_checkpoint_model` needs (``model``,
``config``: the resolved training config of the converted model, ``video_dim``,
``feature_dims``), so ``tools/eval_nlq.py checkpoint=OUT`` evaluates it. VSLNet weights are
mapped by :mod:`nlq.models.vslnet_checkpoint`, ReLER weights by
``nlq.models.reler_checkpoint.convert_naq_reler_state_dict`` (imported when asked for).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from episodic.errors import DataError
from episodic.io import atomic_torch_save
from nlq.engine.build import build_nlq_model, resolve_train_config

log = logging.getLogger(__name__)
CONVERTERS = ("vslnet", "reler")


def _converter(model_name: str):
    if model_name == "vslnet":
        from nlq.models.vslnet_checkpoint import convert_naq_vslnet_state_dict

        return convert_naq_vslnet_state_dict
    if model_name == "reler":
        from nlq.models.reler_checkpoint import convert_naq_reler_state_dict

        return convert_naq_reler_state_dict
    raise DataError(f"model={model_name}: released NaQ checkpoints exist for {', '.join(CONVERTERS)}")


def load_released(path: str | Path) -> dict:
    """The released file (a state dict, or a dict holding one under ``model``), on CPU."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: cannot read the checkpoint: {e}") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def convert_naq_checkpoint(cfg: Any) -> dict:
    """Convert ``cfg.input`` to ``cfg.output`` for the configured model; returns a summary.

    ``cfg`` is a training config (model, text_encoder, preset, data) plus ``input``,
    ``output``, ``feature_dims`` and ``check`` (build the model, text encoder files
    included, and strict-load the weights before writing).
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    model_name = cfg.model.name
    if model_name not in cfg.schedule:
        raise DataError(f"preset {cfg.schedule.name} has no {model_name} settings: give preset=naq_{model_name}"
                        + (" or preset=naqpp" if model_name == "reler" else ""))
    released = load_released(cfg.input)
    weights, overrides = _converter(model_name)(released, str(cfg.input))
    for key, value in overrides.items():
        cfg.model[key] = value
    video_dim = int(cfg.model.video_dim)
    resolved = resolve_train_config(cfg)
    names = list(resolved.data.features.names)
    feature_dims = [int(d) for d in cfg.feature_dims] if cfg.feature_dims is not None else None
    if feature_dims is None:
        if len(names) != 1:
            raise DataError(f"data.features.names {names}: give feature_dims=[...] (their widths sum to {video_dim})")
        feature_dims = [video_dim]
    if sum(feature_dims) != video_dim:
        raise DataError(f"feature_dims {feature_dims} sum to {sum(feature_dims)}, the checkpoint's video input is "
                        f"{video_dim} wide")
    if cfg.check:
        model = build_nlq_model(resolved.model, resolved.text_encoder, video_dim)
        for key, value in model.state_dict().items():  # the text encoder's own entries (path, vocabulary)
            if key.startswith("text_encoder.") and key not in weights:
                weights[key] = value
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise DataError(f"{cfg.input}: converted weights do not fit the configured {model_name}: {e}") from None
        weights = model.state_dict()
    elif resolved.text_encoder.name in ("bert", "clip"):
        weights.setdefault("text_encoder._extra_state", {"model_path": str(resolved.text_encoder.model_path)})
    checkpoint = {"model": weights, "config": OmegaConf.to_container(resolved, resolve=True), "video_dim": video_dim,
                  "feature_dims": feature_dims, "converted_from": str(Path(cfg.input).resolve()),
                  "conversion": {"released_tensors": len(released.get("model", released)),
                                 "tensors": len(weights), "model_overrides": dict(overrides)}}
    atomic_torch_save(Path(cfg.output), checkpoint)
    log.info("wrote %s: %d tensors from %d released ones (%s, overrides %s)", cfg.output, len(weights),
             checkpoint["conversion"]["released_tensors"], model_name, dict(overrides))
    return {"output": str(cfg.output), "model": model_name, **checkpoint["conversion"]}
