"""Name -> class/builder registries of the NLQ models and text encoders (ActionFormer style)."""
from __future__ import annotations

from typing import Callable

MODELS: dict[str, type] = {}
TEXT_ENCODERS: dict[str, Callable] = {}


def _register(table: dict, kind: str, name: str):
    def wrap(obj):
        if name in table:
            raise KeyError(f"{kind} {name!r} registered twice")
        table[name] = obj
        return obj
    return wrap


def register_model(name: str):
    """Class decorator: ``@register_model("vslnet")``; the class takes ``text_encoder``,
    ``video_dim`` and keyword arguments from the model config."""
    return _register(MODELS, "model", name)


def register_text_encoder(name: str):
    """Builder decorator: ``builder(train_texts, state_dict, **config_args) -> encoder``."""
    return _register(TEXT_ENCODERS, "text encoder", name)
