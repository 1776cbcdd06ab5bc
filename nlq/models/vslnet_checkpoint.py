"""NaQ's released VSLNet checkpoints (``NLQ/VSLNet`` with ``--predictor bert``) -> our VSLNet.

The released ``.t7`` file is the model's ``state_dict`` (``torch.save(model.state_dict())``;
``module.``-prefixed when saved from DDP). Every tensor maps one to one onto
``VSLNet(architecture="released")`` (docs/nlq.md#released-weights): 1x1 ``Conv1D`` kernels
``[out, in, 1]`` become Linear weights ``[out, in]``, the trilinear and pooling vectors
``[d, 1]`` become ``[1, d]``. Our two scalar biases the release does not have (the
context-query score bias and the query-pooling score bias) are zero: a constant added to
every score does not change a softmax. The frozen BERT weights (``embedding_net.embedder.*``)
are dropped: our BERT encoder loads them from ``text_encoder.model_path``.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from episodic.errors import DataError

_ENCODERS = {"feature_encoder.": "fusion.encoder.", "predictor.encoder.": "predictor.encoder."}
_ENCODER_RULES = [  # (released suffix pattern, our suffix, squeeze the 1x1 kernel)
    (r"pos_embedding\.position_embeddings\.(weight)", r"position_embedding.\1", False),
    (r"conv_block\.depthwise_separable_conv\.(\d+)\.0\.(weight)", r"conv_block.convs.\1.depthwise.\2", False),
    (r"conv_block\.depthwise_separable_conv\.(\d+)\.1\.(weight|bias)", r"conv_block.convs.\1.pointwise.\2", False),
    (r"conv_block\.layer_norms\.(\d+)\.(weight|bias)", r"conv_block.norms.\1.\2", False),
    (r"attention_block\.(query|key|value)\.conv1d\.(weight|bias)", r"attention.attention.\1.\2", True),
    (r"attention_block\.layer_norm1\.(weight|bias)", r"attention.norm.\1", False),
    (r"attention_block\.layer_norm2\.(weight|bias)", r"attention.out_norm.\1", False),
    (r"attention_block\.out_layer\.conv1d\.(weight|bias)", r"attention.out.\1", True),
]
_RULES = [  # (released name pattern, our name, transform)
    (r"video_affine\.linear\.conv1d\.(weight|bias)", r"fusion.video_projection.1.\1", "squeeze"),
    (r"query_affine\.(weight|bias)", r"fusion.text_projection.1.\1", None),
    (r"cq_attention\.w4C", "fusion.cq_attention.w_context.weight", "transpose"),
    (r"cq_attention\.w4Q", "fusion.cq_attention.w_query.weight", "transpose"),
    (r"cq_attention\.w4mlu", "fusion.cq_attention.w_product", None),
    (r"cq_attention\.cqa_linear\.conv1d\.(weight|bias)", r"fusion.cq_attention.out.\1", "squeeze"),
    (r"cq_concat\.weighted_pool\.weight", "fusion.cq_concat.pool_score.weight", "transpose"),
    (r"cq_concat\.conv1d\.conv1d\.(weight|bias)", r"fusion.cq_concat.out.\1", "squeeze"),
    (r"highlight_layer\.conv1d\.conv1d\.(weight|bias)", r"highlight.score.\1", "squeeze"),
    (r"predictor\.(start|end)_layer_norm\.(weight|bias)", r"predictor.\1_norm.\2", None),
    (r"predictor\.(start|end)_block\.(0|2)\.conv1d\.(weight|bias)", r"predictor.\1_head.\2.\3", "squeeze"),
]
_TRANSFORMS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda t: t, "squeeze": lambda t: t.squeeze(-1) if t.ndim == 3 else t, "transpose": lambda t: t.t()}
_DROPPED = "embedding_net.embedder."  # the frozen BERT (loaded from text_encoder.model_path)
_UNSUPPORTED = {  # released name prefix -> why we cannot map it
    "embedding_net.": "a GloVe / char-CNN query encoder (--predictor rnn|transformer with word ids); "
                      "NaQ's released checkpoints use --predictor bert",
    "predictor.start_encoder.": "the LSTM span predictor (--predictor rnn)",
    "feature_encoder.extra_attention_blocks.": "extra attention blocks (--num_extra_attn_blocks > 0)",
}


def _map_name(name: str) -> tuple[str, str | None] | None:
    for prefix, ours in _ENCODERS.items():
        if name.startswith(prefix):
            rest = name[len(prefix):]
            for pattern, target, squeeze in _ENCODER_RULES:
                if re.fullmatch(pattern, rest):
                    return ours + re.sub(pattern, target, rest), "squeeze" if squeeze else None
    for pattern, target, transform in _RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name), transform
    return None


def convert_naq_vslnet_state_dict(state_dict: dict, source: str = "<checkpoint>") -> tuple[dict, dict]:
    """(our VSLNet state dict without the text encoder's entries, model config overrides:
    video_dim, hidden_dim, max_len, kernel_size, num_conv_layers, architecture). num_heads
    cannot be read from the weights: the released 8 stays the config's.

    Raises DataError naming ``source`` for a tensor that is not the released VSLNet's.
    """
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    if not isinstance(state_dict, dict) or not state_dict:
        raise DataError(f"{source}: expected a VSLNet state dict (name -> tensor)")
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for raw_name, tensor in state_dict.items():
        name = raw_name[len("module."):] if raw_name.startswith("module.") else raw_name
        if name.startswith(_DROPPED):
            continue
        for prefix, why in _UNSUPPORTED.items():
            if name.startswith(prefix):
                raise DataError(f"{source}: tensor {name}: {why} is not supported")
        mapped = _map_name(name)
        if mapped is None:
            unknown.append(name)
            continue
        target, transform = mapped
        ours[target] = _TRANSFORMS[transform](torch.as_tensor(tensor)).clone()
    if unknown:
        raise DataError(f"{source}: {len(unknown)} tensor(s) are not the released VSLNet's: {', '.join(unknown[:5])}")
    for needed in ("fusion.video_projection.1.weight", "fusion.encoder.position_embedding.weight",
                   "fusion.text_projection.1.weight"):
        if needed not in ours:
            raise DataError(f"{source}: no tensor maps onto {needed} (is this a VSLNet checkpoint?)")
    ours["fusion.cq_attention.bias"] = torch.zeros(1)
    ours["fusion.cq_concat.pool_score.bias"] = torch.zeros(1)
    video = ours["fusion.video_projection.1.weight"]
    depthwise = ours["fusion.encoder.conv_block.convs.0.depthwise.weight"]
    overrides = {"video_dim": int(video.shape[1]), "hidden_dim": int(video.shape[0]),
                 "max_len": int(ours["fusion.encoder.position_embedding.weight"].shape[0]),
                 "kernel_size": int(depthwise.shape[-1]),
                 "num_conv_layers": len({k for k in ours if k.startswith("fusion.encoder.conv_block.convs.")
                                         and k.endswith(".depthwise.weight")}),
                 "architecture": "released"}
    return ours, overrides
