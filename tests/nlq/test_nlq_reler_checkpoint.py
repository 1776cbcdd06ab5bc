"""NaQ's released ReLER checkpoints -> model=reler (nlq.models.reler_checkpoint), on state dicts
built here with the original's module names (ReLER/ms_cm MS_CM) and shapes."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from nlq.models.build import build_model
from nlq.models.reler_checkpoint import checkpoint_text_dim, convert_naq_reler_state_dict, infer_model_config

HIDDEN, FFN, VIDEO, TEXT, MAX_LEN, CONTRAST, HEADS = 16, 24, 10, 12, 40, 8, 2


def released_state_dict(hidden=HIDDEN, ffn=FFN, video=VIDEO, text=TEXT, max_len=MAX_LEN, cross_layers=3,
                        conv_layers=4, kernel=7, seed=0) -> dict:
    """Random tensors under the names and shapes of a released MS_CM state dict (DDP-saved)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}

    def linear(name, n_in, n_out):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def norm(name, n):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n,), (n,)

    for proj, width in (("input_txt_proj", text), ("input_vid_proj", video + 2)):
        for i in range(2):
            norm(f"{proj}.{i}.LayerNorm", width if i == 0 else hidden)
            linear(f"{proj}.{i}.net.1", width if i == 0 else hidden, hidden)
    for i in range(cross_layers):
        layer = f"cross_self_encoder.cross_encoder.layers.{i}"
        for name in ("query1", "key1", "value1", "query2", "key2", "value2"):
            linear(f"{layer}.biattention.{name}", hidden, hidden)
        for side in ("1", "2"):
            linear(f"{layer}.biOutput.dense{side}", hidden, hidden)
            norm(f"{layer}.biOutput.LayerNorm{side}", hidden)
        for side in ("v", "t"):
            linear(f"{layer}.{side}_intermediate.dense", hidden, ffn)
            linear(f"{layer}.{side}_output.dense", ffn, hidden)
            norm(f"{layer}.{side}_output.LayerNorm", hidden)
    linear("contrastive_align_projection_txt", hidden, CONTRAST)
    linear("contrastive_align_projection_vid", hidden, CONTRAST)
    linear("highlight_proj", hidden, 1)
    linear("saliency_proj", hidden, 1)
    shapes["NPM_proj.weighted_pool.weight"] = (hidden, 1)
    linear("NPM_proj.linear", hidden, 1)
    encoder = "predictor.encoder"
    shapes[f"{encoder}.pos_embedding.position_embeddings.weight"] = (max_len, hidden)
    for i in range(conv_layers):
        shapes[f"{encoder}.conv_block.depthwise_separable_conv.{i}.0.weight"] = (hidden, 1, kernel)
        shapes[f"{encoder}.conv_block.depthwise_separable_conv.{i}.1.weight"] = (hidden, hidden, 1)
        shapes[f"{encoder}.conv_block.depthwise_separable_conv.{i}.1.bias"] = (hidden,)
        norm(f"{encoder}.conv_block.layer_norms.{i}", hidden)
    for name in ("query", "key", "value", "out_layer"):
        shapes[f"{encoder}.attention_block.{name}.conv1d.weight"] = (hidden, hidden, 1)
        shapes[f"{encoder}.attention_block.{name}.conv1d.bias"] = (hidden,)
    norm(f"{encoder}.attention_block.layer_norm1", hidden)
    norm(f"{encoder}.attention_block.layer_norm2", hidden)
    norm("predictor.start_layer_norm", hidden)
    norm("predictor.end_layer_norm", hidden)
    for block in ("start_block", "end_block"):
        shapes[f"predictor.{block}.0.conv1d.weight"], shapes[f"predictor.{block}.0.conv1d.bias"] = \
            (hidden, 2 * hidden, 1), (hidden,)
        shapes[f"predictor.{block}.2.conv1d.weight"], shapes[f"predictor.{block}.2.conv1d.bias"] = (1, hidden, 1), (1,)
    return {f"module.{k}": torch.randn(v, generator=g) * 0.2 for k, v in shapes.items()}


class WordFeatures(torch.nn.Module):
    """A text encoder returning given word features (stands in for CLIP's)."""

    output_dim = TEXT

    def forward(self, text):
        return text["features"], text["mask"]


def test_released_names_map_one_to_one_and_load_strictly():
    original = released_state_dict()
    ours, overrides = convert_naq_reler_state_dict({"model": original, "epoch": 3})
    assert overrides == {"video_dim": VIDEO, "hidden_dim": HIDDEN, "num_input_layers": 2, "num_cross_layers": 3,
                         "cross_ffn_dim": FFN, "contrastive_dim": CONTRAST, "max_len": MAX_LEN, "kernel_size": 7,
                         "num_conv_layers": 4}
    assert checkpoint_text_dim(original) == TEXT and infer_model_config(original) == overrides
    model = build_model({"name": "reler", "num_heads": HEADS, **overrides}, WordFeatures())
    model.load_state_dict(ours, strict=True)  # every key of ours, nothing else
    # every original tensor is used exactly once (ours only adds the identity projection, if any)
    used = [v for k, v in ours.items() if not k.startswith("predictor.encoder.attention.attention.out.")]
    assert len(used) == len(original)
    o = {k[len("module."):]: v for k, v in original.items()}
    layer = "cross_self_encoder.cross_encoder.layers.1"
    assert torch.equal(model.cross_encoder.layers[1].video_query.weight, o[f"{layer}.biattention.query1.weight"])
    assert torch.equal(model.cross_encoder.layers[1].video_out.weight, o[f"{layer}.biOutput.dense1.weight"])
    assert torch.equal(model.cross_encoder.layers[1].text_ffn_norm.bias, o[f"{layer}.t_output.LayerNorm.bias"])
    assert torch.equal(model.chunk_gate.pool_weight, o["NPM_proj.weighted_pool.weight"])
    assert torch.equal(model.predictor.start_head[0].weight, o["predictor.start_block.0.conv1d.weight"][..., 0])
    assert torch.equal(model.video_projection[0].norm.weight, o["input_vid_proj.0.LayerNorm.weight"])


def _reference_connection_layer(o: dict, prefix: str, video, video_mask, text, text_mask, heads: int):
    """ViLBERT's BertConnectionLayer in eval mode, written from the original's names."""
    def lin(name, x):
        return x @ o[f"{prefix}.{name}.weight"].T + o[f"{prefix}.{name}.bias"]

    def attend(q, k, v, key_mask):
        b, lq, d = q.shape
        split = lambda x: x.view(b, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
        scores = scores + (1.0 - key_mask.float())[:, None, None, :] * -10000.0
        return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, lq, d)

    def norm(name, x):
        return F.layer_norm(x, x.shape[-1:], o[f"{prefix}.{name}.weight"], o[f"{prefix}.{name}.bias"], eps=1e-12)

    text_ctx = attend(lin("biattention.query2", text), lin("biattention.key1", video),
                      lin("biattention.value1", video), video_mask)
    video_ctx = attend(lin("biattention.query1", video), lin("biattention.key2", text),
                       lin("biattention.value2", text), text_mask)
    video_1 = norm("biOutput.LayerNorm1", lin("biOutput.dense1", video_ctx) + video)
    text_1 = norm("biOutput.LayerNorm2", lin("biOutput.dense2", text_ctx) + text)
    video_2 = norm("v_output.LayerNorm", lin("v_output.dense", F.gelu(lin("v_intermediate.dense", video_1))) + video_1)
    text_2 = norm("t_output.LayerNorm", lin("t_output.dense", F.gelu(lin("t_intermediate.dense", text_1))) + text_1)
    return video_2, text_2


def test_converted_cross_layer_computes_what_the_original_does():
    original = released_state_dict(seed=1)
    ours, overrides = convert_naq_reler_state_dict(original)
    model = build_model({"name": "reler", "num_heads": HEADS, **overrides}, WordFeatures()).eval()
    model.load_state_dict(ours)
    o = {k[len("module."):]: v for k, v in original.items()}
    g = torch.Generator().manual_seed(2)
    video, text = torch.randn(2, 7, HIDDEN, generator=g), torch.randn(2, 4, HIDDEN, generator=g)
    video_mask = torch.arange(7)[None] < torch.tensor([[7], [5]])
    text_mask = torch.arange(4)[None] < torch.tensor([[4], [2]])
    with torch.no_grad():
        got = model.cross_encoder.layers[0](video, video_mask, text, text_mask)
    want = _reference_connection_layer(o, "cross_self_encoder.cross_encoder.layers.0", video, video_mask, text,
                                       text_mask, HEADS)
    assert torch.allclose(got[0], want[0], atol=1e-4) and torch.allclose(got[1], want[1], atol=1e-4)


def test_converted_model_predicts_windows():
    ours, overrides = convert_naq_reler_state_dict(released_state_dict(seed=3))
    model = build_model({"name": "reler", "num_heads": HEADS, "chunk_counts": [2, 3], **overrides},
                        WordFeatures()).eval()
    model.load_state_dict(ours)
    g = torch.Generator().manual_seed(4)
    batch = {"video": torch.randn(2, 9, VIDEO, generator=g), "video_mask": torch.arange(9)[None] < torch.tensor([[9], [6]]),
             "feature_dims": [6, 4], "duration": torch.tensor([18.0, 12.0]),
             "text": {"features": torch.randn(2, 3, TEXT, generator=g), "mask": torch.ones(2, 3, dtype=torch.bool)}}
    results = model(batch)
    assert [len(r["windows"]) for r in results] == [5, 5]
    assert all(0.0 <= s < e <= d for r, d in zip(results, (18.0, 12.0)) for s, e in r["windows"])


def test_unexpected_missing_and_mismatched_keys_are_named():
    original = released_state_dict()
    extra = dict(original, **{"module.txt_position_embed.position_embeddings.weight": torch.zeros(32, HIDDEN)})
    with pytest.raises(ValueError, match=r"unexpected keys \['txt_position_embed.position_embeddings.weight'\]"):
        convert_naq_reler_state_dict(extra)
    lacking = {k: v for k, v in original.items() if k != "module.saliency_proj.bias"}
    with pytest.raises(ValueError, match=r"missing keys \(our names\) \['saliency.bias'\]"):
        convert_naq_reler_state_dict(lacking)
    bad = dict(original, **{"module.highlight_proj.weight": torch.zeros(2, HIDDEN)})
    with pytest.raises(ValueError, match=r"highlight.weight: checkpoint \(2, 16\) vs ours \(1, 16\)"):
        convert_naq_reler_state_dict(bad)
    with pytest.raises(ValueError, match="missing key 'input_vid_proj.0.LayerNorm.weight'"):
        convert_naq_reler_state_dict({"module.saliency_proj.weight": torch.zeros(1, HIDDEN)})
