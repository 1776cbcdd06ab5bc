"""NaQ's released ReLER checkpoints (``ReLER/ms_cm`` ``MS_CM`` state dicts) -> ``model=reler``
(docs/nlq.md#released-weights is the VSLNet/ReLER table; docs/nlq.md#reler the model).

Every original tensor maps to one of ours (the span predictor's kernel-1 ``Conv1D`` weights
``[out, in, 1]`` become Linear weights ``[out, in]``; ``NPM_proj.weighted_pool.weight`` keeps
its ``[d, 1]`` shape). Where our span predictor's attention has an output projection that the
original lacks, it is set to the identity (same function). The text encoder (CLIP in the
release, loaded apart from the checkpoint) is not part of it: the ``text_encoder.*`` keys of
our model come from our text encoder.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

# original prefix -> ours, for the parts outside the cross encoder and the span predictor
_TOP = {
    "contrastive_align_projection_vid": "video_contrast",
    "contrastive_align_projection_txt": "text_contrast",
    "highlight_proj": "highlight",
    "saliency_proj": "saliency",
    "NPM_proj.linear": "chunk_gate.score",
}
# BertConnectionLayer -> CrossModalLayer
_CROSS = {
    "biattention.query1": "video_query", "biattention.key1": "video_key", "biattention.value1": "video_value",
    "biattention.query2": "text_query", "biattention.key2": "text_key", "biattention.value2": "text_value",
    "biOutput.dense1": "video_out", "biOutput.LayerNorm1": "video_out_norm",
    "biOutput.dense2": "text_out", "biOutput.LayerNorm2": "text_out_norm",
    "v_intermediate.dense": "video_ffn_in", "v_output.dense": "video_ffn_out", "v_output.LayerNorm": "video_ffn_norm",
    "t_intermediate.dense": "text_ffn_in", "t_output.dense": "text_ffn_out", "t_output.LayerNorm": "text_ffn_norm",
}
# VSLNet's ConditionedPredictor -> nlq.models.layers.ConditionedSpanPredictor (conv names are per layer below)
_PREDICTOR = {
    "encoder.pos_embedding.position_embeddings": "encoder.position_embedding",
    "encoder.attention_block.layer_norm1": "encoder.attention.norm",
    "encoder.attention_block.query.conv1d": "encoder.attention.attention.query",
    "encoder.attention_block.key.conv1d": "encoder.attention.attention.key",
    "encoder.attention_block.value.conv1d": "encoder.attention.attention.value",
    "encoder.attention_block.layer_norm2": "encoder.feed_forward.norm",
    "encoder.attention_block.out_layer.conv1d": "encoder.feed_forward.mlp",
    "start_layer_norm": "start_norm", "end_layer_norm": "end_norm",
    "start_block.0.conv1d": "start_head.0", "start_block.2.conv1d": "start_head.2",
    "end_block.0.conv1d": "end_head.0", "end_block.2.conv1d": "end_head.2",
}
_PATTERNS = [
    (re.compile(r"input_vid_proj\.(\d+)\.LayerNorm\.(weight|bias)"), r"video_projection.\1.norm.\2"),
    (re.compile(r"input_vid_proj\.(\d+)\.net\.1\.(weight|bias)"), r"video_projection.\1.linear.\2"),
    (re.compile(r"input_txt_proj\.(\d+)\.LayerNorm\.(weight|bias)"), r"text_projection.\1.norm.\2"),
    (re.compile(r"input_txt_proj\.(\d+)\.net\.1\.(weight|bias)"), r"text_projection.\1.linear.\2"),
    (re.compile(r"predictor\.encoder\.conv_block\.depthwise_separable_conv\.(\d+)\.0\.weight"),
     r"predictor.encoder.conv_block.convs.\1.depthwise.weight"),
    (re.compile(r"predictor\.encoder\.conv_block\.depthwise_separable_conv\.(\d+)\.1\.(weight|bias)"),
     r"predictor.encoder.conv_block.convs.\1.pointwise.\2"),
    (re.compile(r"predictor\.encoder\.conv_block\.layer_norms\.(\d+)\.(weight|bias)"),
     r"predictor.encoder.conv_block.norms.\1.\2"),
    (re.compile(r"NPM_proj\.weighted_pool\.weight"), "chunk_gate.pool_weight"),
]
_CROSS_PREFIX = re.compile(r"cross_self_encoder\.cross_encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_LINEAR_FROM_CONV = re.compile(r"predictor\.(encoder\.attention_block\.\w+\.conv1d|(start|end)_block\.\d\.conv1d)\.weight")
_IDENTITY_OUT = re.compile(r"predictor\.encoder\.attention\.attention\.out\.(weight|bias)")
TEMPORAL_CHANNELS = 2  # the release's video input ends with the 2 temporal ("tef") channels


def _our_name(name: str) -> str | None:
    """Our key of one original key (None: not a key of the released model)."""
    for pattern, target in _PATTERNS:
        if pattern.fullmatch(name):
            return pattern.sub(target, name)
    match = _CROSS_PREFIX.fullmatch(name)
    if match and match.group(2) in _CROSS:
        return f"cross_encoder.layers.{match.group(1)}.{_CROSS[match.group(2)]}.{match.group(3)}"
    head, _, leaf = name.rpartition(".")
    if head in _TOP:
        return f"{_TOP[head]}.{leaf}"
    if head.startswith("predictor.") and head[len("predictor."):] in _PREDICTOR:
        return f"predictor.{_PREDICTOR[head[len('predictor.'):]]}.{leaf}"
    return None


def _unwrap(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """The model's tensors of a released file: its ``model`` entry if present, ``module.`` prefixes removed."""
    if isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def _count(state: Mapping, pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"NaQ ReLER checkpoint: layers {sorted(indices)} of {pattern!r} are not numbered 0..n-1")
    return len(indices)


def _shape(state: Mapping, key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"NaQ ReLER checkpoint: missing key {key!r} (is this a ReLER/ms_cm checkpoint?)")
    return tuple(state[key].shape)


def infer_model_config(state_dict: Mapping) -> dict:
    """``model=reler`` config values that the released state dict's shapes determine."""
    state = _unwrap(state_dict)
    return {
        "video_dim": _shape(state, "input_vid_proj.0.LayerNorm.weight")[0] - TEMPORAL_CHANNELS,
        "hidden_dim": _shape(state, "input_vid_proj.0.net.1.weight")[0],
        "num_input_layers": _count(state, r"input_vid_proj\.(\d+)\.net\.1\.weight"),
        "num_cross_layers": _count(state, r"cross_self_encoder\.cross_encoder\.layers\.(\d+)\.biattention\.query1\.weight"),
        "cross_ffn_dim": _shape(state, "cross_self_encoder.cross_encoder.layers.0.v_intermediate.dense.weight")[0],
        "contrastive_dim": _shape(state, "contrastive_align_projection_vid.weight")[0],
        "max_len": _shape(state, "predictor.encoder.pos_embedding.position_embeddings.weight")[0],
        "kernel_size": _shape(state, "predictor.encoder.conv_block.depthwise_separable_conv.0.0.weight")[-1],
        "num_conv_layers": _count(state, r"predictor\.encoder\.conv_block\.depthwise_separable_conv\.(\d+)\.0\.weight"),
    }


def checkpoint_text_dim(state_dict: Mapping) -> int:
    """Width of the word features the checkpoint was trained on (CLIP ViT-B/16 text: 512); the
    text encoder must output this many channels."""
    return _shape(_unwrap(state_dict), "input_txt_proj.0.LayerNorm.weight")[0]


class _TextWidth(nn.Module):
    """Stands in for a text encoder when building the reference model (no parameters)."""

    def __init__(self, output_dim: int):
        super().__init__()
        self.output_dim = output_dim


def convert_naq_reler_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Map a released NaQ ReLER state dict (or the ``.t7`` checkpoint dict holding it under
    ``model``) onto ``model=reler``.

    Returns ``(our_state_dict, model_config_overrides)``: our tensors (all keys of
    :class:`nlq.models.reler.ReLER` except ``text_encoder.*``) and the config values inferred
    from the shapes (:func:`infer_model_config`). Raises ValueError naming the unexpected
    original keys, the keys our model needs that the checkpoint lacks, and shape mismatches.
    """
    from nlq.models.reler import ReLER  # late: nlq.models.reler imports the layers this file maps onto

    state = _unwrap(state_dict)
    overrides = infer_model_config(state)
    unexpected, converted = [], {}
    for name, tensor in state.items():
        ours = _our_name(name)
        if ours is None:
            unexpected.append(name)
            continue
        converted[ours] = tensor.squeeze(-1) if _LINEAR_FROM_CONV.fullmatch(name) else tensor
    reference = ReLER(_TextWidth(checkpoint_text_dim(state)), **overrides).state_dict()
    missing = []
    for key, value in reference.items():
        if key in converted:
            continue
        if _IDENTITY_OUT.fullmatch(key):  # our attention's output projection: the original has none
            converted[key] = torch.eye(value.shape[0], dtype=value.dtype) if value.dim() == 2 else torch.zeros_like(value)
        else:
            missing.append(key)
    unexpected += [k for k in converted if k not in reference]
    mismatched = [f"{k}: checkpoint {tuple(converted[k].shape)} vs ours {tuple(reference[k].shape)}"
                  for k in converted if k in reference and converted[k].shape != reference[k].shape]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys {sorted(unexpected)}")
    if missing:
        problems.append(f"missing keys (our names) {sorted(missing)}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise ValueError("NaQ ReLER checkpoint does not map onto model=reler: " + "; ".join(problems))
    return {k: converted[k] for k in reference}, overrides
