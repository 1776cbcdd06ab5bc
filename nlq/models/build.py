"""Config -> NLQ model and text encoder (the one place where their configs are translated).

A model config is ``{"name": "vslnet" | "reler" | "snag", <constructor keyword arguments>}``
(configs/nlq/model/*.yaml), a text-encoder config ``{"name": "learned" | "glove" | "bert"
| "clip", <builder keyword arguments>}`` (configs/nlq/text_encoder/*.yaml). Unknown keys
are errors.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable, Mapping

from torch import nn

from nlq.models import reler, snag, text_encoders, vslnet  # noqa: F401  (fill the registries)
from nlq.models.registry import MODELS, TEXT_ENCODERS


def _plain(cfg: Any) -> dict:
    """Mapping or OmegaConf node -> a plain dict (interpolations resolved)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover
        DictConfig = ()
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a mapping config, got {type(cfg).__name__}")
    return dict(cfg)


def _split_name(cfg: Any, table: dict, kind: str) -> tuple[Any, dict]:
    args = _plain(cfg)
    name = args.pop("name", None)
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; known: {sorted(table)}")
    return table[name], args


def _check_keys(target, args: dict, provided: Iterable[str], kind: str) -> None:
    params = inspect.signature(target).parameters
    allowed = {p for p in params if p not in provided and params[p].kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} config keys {unknown}; allowed: {sorted(allowed)}")


def build_text_encoder(cfg: Any, train_texts: Iterable[str] | None = None,
                       state_dict: Mapping | None = None) -> nn.Module:
    """Text encoder from its config.

    train_texts: the training query texts (word-level encoders build their vocabulary from
    them; val/test queries may be added so that GloVe knows their words). state_dict: a saved
    encoder's or whole model's state_dict; word-level encoders then take their vocabulary
    from it instead (rebuilding a trained model), and the caller loads the weights.
    """
    builder, args = _split_name(cfg, TEXT_ENCODERS, "text encoder")
    _check_keys(builder, args, ("train_texts", "state_dict"), "text encoder")
    return builder(train_texts, state_dict, **args)


def build_model(cfg: Any, text_encoder: nn.Module, video_dim: int | None = None) -> nn.Module:
    """NLQ model from its config, around ``text_encoder`` (it becomes ``model.text_encoder``).

    video_dim: width of ``batch["video"]`` (sum of the feature dims); overrides ``cfg.video_dim``.
    """
    model_class, args = _split_name(cfg, MODELS, "model")
    _check_keys(model_class, args, ("text_encoder",), "model")
    if video_dim is not None:
        args["video_dim"] = int(video_dim)
    if args.get("video_dim") is None:
        raise ValueError("video_dim is not set: give build_model(video_dim=...) or the config's video_dim")
    return model_class(text_encoder=text_encoder, **args)
