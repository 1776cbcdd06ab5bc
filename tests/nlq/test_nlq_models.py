"""NLQ models (VSLNet, ReLER), shared layers and span decoding on tiny generated batches."""
import math

import pytest
import torch

from nlq.models.build import build_model, build_text_encoder
from nlq.models.layers import ConvBlock, MultiHeadAttention
from nlq.models.reler import chunk_layout, prepare_video
from nlq.models.spans import decode_windows, merge_windows, topk_span_indices

QUERIES = ["Where did I put the knife?", "what did I cut on the board", "#C C picks a cup", "where is the red cup?"]
FEATURE_DIMS = [6, 4]
TINY = {"hidden_dim": 16, "num_heads": 2, "max_len": 32, "num_conv_layers": 2}
MODEL_NAMES = ["vslnet", "reler"]


@pytest.fixture(scope="module")
def encoder_cfg():
    return {"name": "learned", "word_dim": 8, "char_dim": 4, "char_channels": [3, 5], "char_kernels": [1, 3]}


def make_model(name, encoder_cfg, **overrides):
    torch.manual_seed(0)
    encoder = build_text_encoder(encoder_cfg, QUERIES)
    return build_model({"name": name, **TINY, **overrides}, encoder, video_dim=sum(FEATURE_DIMS))


def make_batch(encoder, lengths=(12, 5, 3), num_steps=14, seed=1):
    """Padded batch following the data contract (valid steps first, zeros after)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    video = torch.randn(b, num_steps, sum(FEATURE_DIMS), generator=g)
    mask = torch.arange(num_steps)[None, :] < torch.tensor(lengths)[:, None]
    video = video * mask[..., None]
    start = torch.tensor([min(2, n - 1) for n in lengths])
    end = torch.tensor([min(5, n - 1) for n in lengths])
    highlight = ((torch.arange(num_steps) >= start[:, None]) & (torch.arange(num_steps) <= end[:, None])).float()
    duration = torch.tensor([n * 0.5 + 1.0 for n in lengths])
    return {"video": video, "video_mask": mask, "feature_dims": FEATURE_DIMS,
            "text": encoder.tokenize(QUERIES[:b]), "duration": duration,
            "start_label": start, "end_label": end, "highlight_label": highlight,
            "gt_window": torch.stack([start * duration / 10, (end + 1) * duration / 10], 1)}


def logits_of(model, batch):
    if model.__class__.__name__ == "ReLER":
        return model.compute_outputs(batch, num_chunks=3)
    return model.compute_outputs(batch)


# ----------------------------------------------------------------------------- span decoding
def test_topk_span_indices_known_argmax_and_upper_triangle():
    start = torch.tensor([0.0, 5.0, 0.0, 0.0])
    end = torch.tensor([0.0, 0.0, 0.0, 6.0])
    s, e, scores = topk_span_indices(start, end, k=5)
    assert (s[0].item(), e[0].item()) == (1, 3)
    assert bool((s <= e).all()) and bool((scores[:-1] >= scores[1:]).all())
    # the end peak before the start peak is not allowed: the best span is then (3, 3)
    s, e, _ = topk_span_indices(torch.tensor([0.0, 0.0, 0.0, 9.0]), torch.tensor([9.0, 0.0, 0.0, 2.0]), k=3)
    assert bool((s <= e).all()) and (s[0].item(), e[0].item()) == (3, 3)
    # max_span_len keeps e - s < max_span_len
    s, e, _ = topk_span_indices(start, end, k=10, max_span_len=2)
    assert int((e - s).max()) <= 1 and len(s) == 4 + 3


def test_decode_windows_seconds_and_padding_to_k():
    start = torch.full((2, 6), -1e4)
    end = torch.full((2, 6), -1e4)
    start[0, :4] = torch.tensor([0.0, 8.0, 0.0, 0.0])
    end[0, :4] = torch.tensor([0.0, 0.0, 8.0, 0.0])
    start[1, 0] = end[1, 0] = 0.0
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = decode_windows(start, end, mask, torch.tensor([8.0, 3.0]), k=5)
    assert out[0]["windows"][0] == pytest.approx([2.0, 6.0])  # s=1, e=2, D/N = 2 s
    assert out[1]["windows"] == [[0.0, 3.0]] * 5 and out[1]["scores"][1:] == [0.0] * 4
    with pytest.raises(ValueError, match="prefix"):
        decode_windows(start, end, torch.tensor([[0, 1, 1, 1, 0, 0]] * 2, dtype=torch.bool), torch.ones(2))


def test_merge_windows_dedupes_sorts_and_nms():
    windows = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.1, 2.0], [5.0, 6.0], [3.0, 4.0], [7.0, 9.0]],
                           dtype=torch.float64)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1, 0.3, 0.2])
    w, s = merge_windows(windows, scores, k=3)
    assert w.tolist() == [[0.0, 2.0], [0.1, 2.0], [3.0, 4.0]] and s.tolist() == pytest.approx([0.9, 0.8, 0.3])
    w, s = merge_windows(windows, scores, k=3, nms_iou=0.5)
    assert w.tolist() == [[0.0, 2.0], [3.0, 4.0], [7.0, 9.0]]
    w, _ = merge_windows(windows[:3], scores[:3], k=3, nms_iou=0.5)  # too few survivors: deferred ones fill
    assert w.tolist() == [[0.0, 2.0], [0.1, 2.0]]


# ----------------------------------------------------------------------------- layers
def test_shared_layers_ignore_padded_steps():
    torch.manual_seed(0)
    conv, attn = ConvBlock(8, 7, 2, 0.0).eval(), MultiHeadAttention(8, 2, 0.0).eval()
    x = torch.randn(1, 10, 8)
    mask = torch.arange(10)[None] < 6
    y = x.clone()
    y[:, 6:] = 100.0
    assert torch.allclose(conv(x, mask)[:, :6], conv(y, mask)[:, :6], atol=1e-5)
    assert torch.allclose(attn(x, x, mask)[:, :6], attn(x, y, mask)[:, :6], atol=1e-5)
    assert torch.isfinite(attn(x, x, torch.zeros_like(mask))).all()  # fully masked rows stay finite


def test_reler_video_preparation_and_chunks():
    video = torch.randn(2, 7, 10) * 5
    mask = torch.arange(7)[None] < torch.tensor([[7], [4]])
    x = prepare_video(video * mask[..., None], mask, FEATURE_DIMS)
    assert x.shape == (2, 7, 12)
    assert torch.allclose(x[0, :, :6].norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(x[1, :4, 6:10].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert x[1, 3, -2:].tolist() == pytest.approx([0.75, 1.0]) and bool((x[1, 4:] == 0).all())
    index, valid, bounds = chunk_layout(mask, 3)
    for b, n in enumerate([7, 4]):  # chunks partition the valid steps, in order
        assert sorted(index[b][valid[b]].tolist()) == list(range(n)) and bounds[b, -1] == n
    _, valid, bounds = chunk_layout(torch.arange(7)[None] < 2, 5)  # more chunks than steps: some empty
    assert int(valid.sum()) == 2 and int((bounds[0, 1:] == bounds[0, :-1]).sum()) == 3


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_losses_and_backward(name, encoder_cfg):
    model = make_model(name, encoder_cfg).train()
    batch = make_batch(model.text_encoder)
    losses = model(batch)
    expected = {"loss", "span_loss", "highlight_loss"}
    if name == "reler":
        expected |= {"saliency_loss", "chunk_loss", "contrastive_loss"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    out = logits_of(model.eval(), batch)
    assert out["start_logits"].shape == out["end_logits"].shape == (3, 14)


def test_vslnet_total_loss_weights(encoder_cfg):
    model = make_model("vslnet", encoder_cfg, dropout=0.0).train()
    losses = model(make_batch(model.text_encoder))
    assert torch.allclose(losses["loss"], losses["span_loss"] + 5.0 * losses["highlight_loss"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_windows(name, encoder_cfg):
    model = make_model(name, encoder_cfg).eval()
    batch = make_batch(model.text_encoder, lengths=(12, 5, 1))
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 3
    for result, duration in zip(results, batch["duration"].tolist()):
        windows, scores = result["windows"], result["scores"]
        assert len(windows) == len(scores) == 5
        assert all(0.0 <= s < e <= duration + 1e-9 for s, e in windows)
        assert scores == sorted(scores, reverse=True)
    if getattr(model, "unique_windows", True):  # released ReLER keeps repeats (tests/nlq/test_nlq_reler.py)
        assert len({tuple(w) for w in results[0]["windows"]}) == 5  # distinct windows on a long clip


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_does_not_change_outputs(name, encoder_cfg):
    # released ReLER chunks the padded batch length: per-sample chunking is padding-free
    model = make_model(name, encoder_cfg, dropout=0.0, **({"chunking": "sample"} if name == "reler" else {})).eval()
    batch = make_batch(model.text_encoder)
    noisy = dict(batch)
    mask = batch["video_mask"]
    noisy["video"] = torch.where(mask[..., None], batch["video"], torch.randn_like(batch["video"]) * 50)
    text = {k: v.clone() for k, v in batch["text"].items()}
    pad = ~text["mask"]
    text["word_ids"][pad] = 3
    text["char_ids"][pad] = 2
    noisy["text"] = text
    longer = dict(batch)  # more padding steps at the end
    longer["video"] = torch.cat([batch["video"], torch.zeros(3, 6, 10)], 1)
    longer["video_mask"] = torch.cat([mask, torch.zeros(3, 6, dtype=torch.bool)], 1)
    longer["highlight_label"] = torch.cat([batch["highlight_label"], torch.zeros(3, 6)], 1)
    with torch.no_grad():
        ref = logits_of(model, batch)
        for other in (noisy, longer):
            got = logits_of(model, other)
            for key in ("start_logits", "end_logits"):
                assert torch.allclose(ref[key][mask], got[key][:, :14][mask], atol=1e-4), key
            assert _same_results(model(other), model(batch))
        model.train()
        torch.manual_seed(5)
        ref_losses = model(batch)
        torch.manual_seed(5)
        noisy_losses = model(noisy)
    for key, value in ref_losses.items():
        assert torch.allclose(value, noisy_losses[key], atol=1e-4), key


def _same_results(a, b):
    return all(torch.allclose(torch.tensor(x["windows"]), torch.tensor(y["windows"]))
               and torch.allclose(torch.tensor(x["scores"]), torch.tensor(y["scores"]), atol=1e-5)
               for x, y in zip(a, b))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_adamw_steps_lower_the_loss(name, encoder_cfg):
    extra = {"input_dropout": 0.0, "predictor_dropout": 0.0} if name == "reler" else {}  # its other dropouts
    model = make_model(name, encoder_cfg, dropout=0.0, **extra).train()
    batch = make_batch(model.text_encoder, lengths=(10, 7))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    torch.manual_seed(0)
    history = []
    for _ in range(15):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < 0.7 * sum(history[:3]) / 3


def test_reler_chunk_count_sampling_is_seeded(encoder_cfg):
    model = make_model("reler", encoder_cfg)
    torch.manual_seed(123)
    first = [model.sample_num_chunks() for _ in range(30)]
    torch.manual_seed(123)
    second = [model.sample_num_chunks() for _ in range(30)]
    assert first == second and set(first) <= {2, 3, 4, 5, 6} and len(set(first)) > 2
    batch = make_batch(model.text_encoder)
    model.train()
    torch.manual_seed(7)
    a = model(batch)["loss"]
    torch.manual_seed(7)
    b = model(batch)["loss"]
    assert torch.equal(a, b)


def test_reler_losses_depend_on_labels(encoder_cfg):
    model = make_model("reler", encoder_cfg, dropout=0.0, chunk_counts=[2]).train()
    batch = make_batch(model.text_encoder)
    moved = dict(batch, start_label=torch.tensor([8, 0, 0]), end_label=torch.tensor([10, 0, 0]))
    a, b = model(batch), model(moved)
    for key in ("span_loss", "saliency_loss", "chunk_loss", "contrastive_loss"):
        assert not torch.allclose(a[key], b[key]), key


def test_build_model_rejects_bad_config(encoder_cfg):
    encoder = build_text_encoder(encoder_cfg, QUERIES)
    with pytest.raises(ValueError, match="hiden_dim"):
        build_model({"name": "vslnet", "hiden_dim": 8}, encoder, video_dim=10)
    with pytest.raises(ValueError, match="video_dim"):
        build_model({"name": "vslnet", "video_dim": None}, encoder)
    with pytest.raises(KeyError, match="known"):
        build_model({"name": "nope"}, encoder, video_dim=10)
    model = make_model("vslnet", encoder_cfg)
    batch = make_batch(model.text_encoder, num_steps=40, lengths=(40,))
    with pytest.raises(ValueError, match="max_len"):
        model(batch)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shipped_model_configs_build_and_run(name, encoder_cfg):
    from pathlib import Path

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "nlq" / "model" / f"{name}.yaml")
    assert cfg.name == name and cfg.video_dim is None
    torch.manual_seed(0)
    model = build_model(cfg, build_text_encoder(encoder_cfg, QUERIES), video_dim=sum(FEATURE_DIMS)).eval()
    with torch.no_grad():
        results = model(make_batch(model.text_encoder, lengths=(9, 4), num_steps=9))
    assert [len(r["windows"]) for r in results] == [5, 5]
