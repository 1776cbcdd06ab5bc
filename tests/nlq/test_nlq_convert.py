"""Released NaQ VSLNet checkpoints -> our VSLNet (names and shapes of NLQ/VSLNet, built here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from episodic.errors import DataError
from nlq.models.vslnet_checkpoint import convert_naq_vslnet_state_dict

REPO = Path(__file__).resolve().parents[2]
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "where", "is", "the", "cup", "?"]


def _encoder_entries(prefix, d, max_pos, layers, kernel, gen):
    """The released FeatureEncoder's tensors (pos embedding, conv block, attention block)."""
    out = {f"{prefix}pos_embedding.position_embeddings.weight": (max_pos, d)}
    for i in range(layers):
        out[f"{prefix}conv_block.depthwise_separable_conv.{i}.0.weight"] = (d, 1, kernel)
        out[f"{prefix}conv_block.depthwise_separable_conv.{i}.1.weight"] = (d, d, 1)
        out[f"{prefix}conv_block.depthwise_separable_conv.{i}.1.bias"] = (d,)
        out[f"{prefix}conv_block.layer_norms.{i}.weight"] = (d,)
        out[f"{prefix}conv_block.layer_norms.{i}.bias"] = (d,)
    for name in ("query", "key", "value", "out_layer"):
        out[f"{prefix}attention_block.{name}.conv1d.weight"] = (d, d, 1)
        out[f"{prefix}attention_block.{name}.conv1d.bias"] = (d,)
    for name in ("layer_norm1", "layer_norm2"):
        out[f"{prefix}attention_block.{name}.weight"] = (d,)
        out[f"{prefix}attention_block.{name}.bias"] = (d,)
    return out


def released_vslnet(d=16, video_dim=10, text_dim=12, max_pos=32, layers=4, kernel=7, ddp=False, seed=0, scale=1.0):
    """A state dict with NLQ/VSLNet's (--predictor bert) module names and shapes, random values
    (N(0, scale^2); LayerNorm scales 1 + N(0, scale^2))."""
    shapes = {"video_affine.linear.conv1d.weight": (d, video_dim, 1), "video_affine.linear.conv1d.bias": (d,),
              **_encoder_entries("feature_encoder.", d, max_pos, layers, kernel, None),
              "cq_attention.w4C": (d, 1), "cq_attention.w4Q": (d, 1), "cq_attention.w4mlu": (1, 1, d),
              "cq_attention.cqa_linear.conv1d.weight": (d, 4 * d, 1), "cq_attention.cqa_linear.conv1d.bias": (d,),
              "cq_concat.weighted_pool.weight": (d, 1),
              "cq_concat.conv1d.conv1d.weight": (d, 2 * d, 1), "cq_concat.conv1d.conv1d.bias": (d,),
              "highlight_layer.conv1d.conv1d.weight": (1, d, 1), "highlight_layer.conv1d.conv1d.bias": (1,),
              **_encoder_entries("predictor.encoder.", d, max_pos, layers, kernel, None),
              "query_affine.weight": (d, text_dim), "query_affine.bias": (d,),
              "embedding_net.embedder.embeddings.word_embeddings.weight": (30522, 4)}
    for side in ("start", "end"):
        shapes[f"predictor.{side}_layer_norm.weight"] = (d,)
        shapes[f"predictor.{side}_layer_norm.bias"] = (d,)
        shapes[f"predictor.{side}_block.0.conv1d.weight"] = (d, 2 * d, 1)
        shapes[f"predictor.{side}_block.0.conv1d.bias"] = (d,)
        shapes[f"predictor.{side}_block.2.conv1d.weight"] = (1, d, 1)
        shapes[f"predictor.{side}_block.2.conv1d.bias"] = (1,)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in shapes.items():
        value = scale * torch.randn(*v, generator=gen)
        out[("module." if ddp else "") + k] = value + 1.0 if "layer_norm" in k and k.endswith("weight") else value
    return out


def test_every_released_tensor_maps_one_to_one():
    from nlq.models.build import build_model, build_text_encoder

    released = released_vslnet(ddp=True)
    ours, overrides = convert_naq_vslnet_state_dict(released)
    assert overrides == {"video_dim": 10, "hidden_dim": 16, "max_len": 32, "kernel_size": 7, "num_conv_layers": 4,
                         "architecture": "released"}
    assert len(ours) == len(released) - 1 + 2  # BERT dropped; our two zero score biases added
    encoder = build_text_encoder({"name": "learned", "word_dim": 10, "char_dim": 4, "char_channels": [2],
                                  "char_kernels": [1]}, ["where is the cup"])  # output_dim 12
    model = build_model({"name": "vslnet", "num_heads": 4, **overrides}, encoder)
    expected = {k for k in model.state_dict() if not k.startswith("text_encoder.")}
    assert set(ours) == expected
    for key, value in model.state_dict().items():
        if key in ours:
            assert ours[key].shape == value.shape, key
    r = {k[len("module."):]: v for k, v in released.items()}
    assert torch.equal(ours["fusion.encoder.attention.attention.query.weight"],
                       r["feature_encoder.attention_block.query.conv1d.weight"][..., 0])
    assert torch.equal(ours["predictor.encoder.attention.out.bias"], r["predictor.encoder.attention_block.out_layer.conv1d.bias"])
    assert torch.equal(ours["fusion.cq_attention.w_context.weight"], r["cq_attention.w4C"].t())
    assert torch.equal(ours["fusion.cq_concat.pool_score.weight"], r["cq_concat.weighted_pool.weight"].t())
    assert torch.equal(ours["predictor.end_head.2.weight"], r["predictor.end_block.2.conv1d.weight"][..., 0])
    assert torch.equal(ours["fusion.encoder.conv_block.convs.3.depthwise.weight"],
                       r["feature_encoder.conv_block.depthwise_separable_conv.3.0.weight"])
    assert ours["fusion.cq_attention.bias"].tolist() == [0.0]


def test_conversion_errors_name_the_tensor():
    bad = released_vslnet()
    bad["predictor.start_encoder.lstm.weight_ih_l0"] = torch.zeros(4, 4)
    with pytest.raises(DataError, match="ckpt.t7: tensor predictor.start_encoder.lstm.weight_ih_l0: the LSTM"):
        convert_naq_vslnet_state_dict(bad, "ckpt.t7")
    odd = released_vslnet()
    odd["something.else"] = torch.zeros(1)
    with pytest.raises(DataError, match="something.else"):
        convert_naq_vslnet_state_dict(odd)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDPIECE), hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=24, max_position_embeddings=32)).save_pretrained(str(directory))
    (directory / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    BertTokenizer.from_pretrained(str(directory), local_files_only=True).save_pretrained(str(directory))
    return directory


def _ego4d_like_root(root: Path, video_dim: int) -> None:
    ann = root / "v2" / "annotations"
    ann.mkdir(parents=True)
    lqs = [{"clip_start_sec": 2.0, "clip_end_sec": 6.0, "query": "where is the cup?", "template": "Objects: Where is object X?"},
           {"clip_start_sec": 10.0, "clip_end_sec": 12.0, "query": "where is the cup?"}]
    clip = {"clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 30.0, "clip_start_sec": 0.0, "clip_end_sec": 30.0,
            "annotations": [{"annotation_uid": "a1", "language_queries": lqs}]}
    (ann / "nlq_val.json").write_text(json.dumps({"version": "2.0", "videos": [{"video_uid": "v1", "clips": [clip]}]}))
    features = root / "v2" / "nlq_features" / "slowfast"
    features.mkdir(parents=True)
    torch.save(torch.randn(57, video_dim), features / "c1.pt")


def test_convert_tool_then_eval_tool(tmp_path, tiny_bert):
    torch.save(released_vslnet(text_dim=12), tmp_path / "vslnet.t7")
    out = tmp_path / "converted.pth"
    proc = subprocess.run([sys.executable, "tools/convert_naq_checkpoint.py", f"input={tmp_path / 'vslnet.t7'}",
                           f"output={out}", "model=vslnet", f"text_encoder.model_path={tiny_bert}",
                           "model.num_heads=4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == "vslnet" and summary["tensors"] == summary["released_tensors"] - 1 + 2 + 1
    saved = torch.load(out, weights_only=False)
    assert saved["config"]["data"]["preparation"] == "released" and saved["config"]["model"]["hidden_dim"] == 16
    assert saved["feature_dims"] == [10] and saved["config"]["text_encoder"]["name"] == "bert"
    _ego4d_like_root(tmp_path / "data", 10)
    from nlq.engine.inference import evaluate_checkpoint  # what tools/eval_nlq.py checkpoint=... runs

    metrics = evaluate_checkpoint(out, tmp_path / "data", "val", tmp_path / "eval", device="cpu", plot_queries=0)
    assert metrics["num_evaluated"] == 2 and "MR@1" in metrics and "MR@5" in metrics
    assert (tmp_path / "eval" / "predictions.json").is_file()


def test_convert_errors(tmp_path):
    from hydra import compose, initialize_config_dir

    from nlq.engine.naq_checkpoint import convert_naq_checkpoint

    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        cfg = compose(config_name="convert_naq_checkpoint", overrides=[
            f"input={tmp_path / 'missing.t7'}", f"output={tmp_path / 'o.pth'}", "check=false",
            "text_encoder.model_path=x"])
        reler = compose(config_name="convert_naq_checkpoint", overrides=[
            f"input={tmp_path / 'missing.t7'}", f"output={tmp_path / 'o.pth'}", "model=reler",
            "text_encoder.model_path=x"])
    with pytest.raises(DataError, match="missing.t7: checkpoint file not found"):
        convert_naq_checkpoint(cfg)
    with pytest.raises(DataError, match="preset=naq_reler"):
        convert_naq_checkpoint(reler)
    torch.save(released_vslnet(), tmp_path / "v.t7")
    cfg.input = str(tmp_path / "v.t7")
    cfg.data.features.by_model.vslnet = ["slowfast", "clip"]
    with pytest.raises(DataError, match="feature_dims"):
        convert_naq_checkpoint(cfg)
    cfg.feature_dims = [6, 4]
    assert convert_naq_checkpoint(cfg)["model"] == "vslnet"
    saved = torch.load(tmp_path / "o.pth", weights_only=False)
    assert saved["feature_dims"] == [6, 4] and saved["model"]["text_encoder._extra_state"] == {"model_path": "x"}


class FixedTextFeatures(torch.nn.Module):
    """Text encoder stand-in: the batch's ``text`` holds the features themselves."""

    output_dim = 12

    def forward(self, text):
        return text["emb"], text["mask"]


def test_converted_weights_reproduce_the_released_vslnet_outputs():
    """Golden outputs of NaQ's VSLNet/model/layers.py (run outside this repository, eval mode,
    no padding) on released_vslnet(seed=3, scale=0.1); our converted model must match them."""
    from nlq.models.build import build_model

    golden = json.loads((Path(__file__).parent / "data" / "naq_vslnet_golden.json").read_text())
    ours, overrides = convert_naq_vslnet_state_dict(released_vslnet(seed=golden["seed"], scale=golden["scale"]))
    model = build_model({"name": "vslnet", "num_heads": 4, **overrides}, FixedTextFeatures()).eval()
    model.load_state_dict(ours)
    gen = torch.Generator().manual_seed(golden["input_seed"])
    emb, video = torch.randn(2, 5, 12, generator=gen), torch.randn(2, 12, 10, generator=gen)
    batch = {"video": video, "video_mask": torch.ones(2, 12, dtype=torch.bool),
             "text": {"emb": emb, "mask": torch.ones(2, 5, dtype=torch.bool)}}
    with torch.no_grad():
        out = model.compute_outputs(batch)
    assert torch.allclose(out["start_logits"], torch.tensor(golden["start_logits"]), atol=1e-4)
    assert torch.allclose(out["end_logits"], torch.tensor(golden["end_logits"]), atol=1e-4)
    assert torch.allclose(out["highlight_logits"].sigmoid(), torch.tensor(golden["highlight_scores"]), atol=1e-5)
