"""ReLER as released (nlq.models.reler and its layers / losses) on small tensors: chunking,
position encoding, the released loss terms on hand cases, a tiny overfit, multi-scale inference
and the candidate merge."""
from __future__ import annotations

import math

import pytest
import torch

from nlq.models.build import build_model, build_text_encoder
from nlq.models.reler import chunk_layout, prepare_video
from nlq.models.reler_layers import ChunkGate, sine_positions
from nlq.models.reler_losses import frame_contrastive_loss, sample_saliency_pairs, saliency_pair_loss

QUERIES = ["where did I put the knife", "what did I cut", "#C C picks a cup"]
FEATURE_DIMS = [6, 4]
TINY = {"name": "reler", "hidden_dim": 16, "num_heads": 2, "max_len": 32, "num_conv_layers": 2, "cross_ffn_dim": 24,
        "num_cross_layers": 2, "contrastive_dim": 8}
NO_DROPOUT = {"dropout": 0.0, "input_dropout": 0.0, "predictor_dropout": 0.0}


def make_model(**overrides):
    torch.manual_seed(0)
    encoder = build_text_encoder({"name": "learned", "word_dim": 8, "char_dim": 4, "char_channels": [3, 5],
                                  "char_kernels": [1, 3]}, QUERIES)
    return build_model({**TINY, **overrides}, encoder, video_dim=sum(FEATURE_DIMS))


def make_batch(model, lengths=(12, 7, 4), num_steps=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(num_steps)[None, :] < torch.tensor(lengths)[:, None]
    video = torch.randn(len(lengths), num_steps, sum(FEATURE_DIMS), generator=g) * mask[..., None]
    start = torch.tensor([min(3, n - 1) for n in lengths])
    end = torch.tensor([min(6, n - 1) for n in lengths])
    steps = torch.arange(num_steps)
    return {"video": video, "video_mask": mask, "feature_dims": FEATURE_DIMS,
            "text": model.text_encoder.tokenize(QUERIES[:len(lengths)]),
            "duration": torch.tensor([n * 0.5 for n in lengths]), "start_label": start, "end_label": end,
            "highlight_label": ((steps >= start[:, None]) & (steps <= end[:, None])).float()}


# ----------------------------------------------------------------------------- chunks, inputs
def test_chunks_of_ceil_length_over_the_batch_or_each_sample():
    mask = torch.arange(10)[None] < torch.tensor([[10], [4]])
    index, valid, bounds = chunk_layout(mask, 4, by_batch=True)  # ceil(10 / 4) = 3 steps per chunk
    assert bounds.tolist() == [[0, 3, 6, 9, 10], [0, 3, 6, 9, 10]]
    assert valid.sum(-1).tolist() == [[3, 3, 3, 1], [3, 1, 0, 0]]  # sample 2's later chunks are padding
    assert index[0][valid[0]].tolist() == list(range(10))
    _, valid, bounds = chunk_layout(mask, 4)  # per sample: sample 2 in chunks of ceil(4 / 4) = 1
    assert bounds[1].tolist() == [0, 1, 2, 3, 4] and valid.sum(-1)[1].tolist() == [1, 1, 1, 1]
    _, valid, bounds = chunk_layout(torch.ones(1, 10, dtype=torch.bool), 6, by_batch=True)  # ceil(10/6) = 2:
    assert valid.sum(-1).tolist() == [[2, 2, 2, 2, 2, 0]]  # the 6th chunk is empty (released: 5 pieces)


def test_prepare_video_normalises_each_set_and_adds_temporal_channels():
    video = torch.randn(2, 5, 10) * 3
    mask = torch.arange(5)[None] < torch.tensor([[5], [4]])
    x = prepare_video(video * mask[..., None], mask, FEATURE_DIMS)
    norms = x[0, :, :6].norm(dim=-1)
    assert torch.allclose(norms, video[0, :, :6].norm(dim=-1) / (video[0, :, :6].norm(dim=-1) + 1e-5))
    assert x[1, 3, -2:].tolist() == pytest.approx([0.75, 1.0]) and bool((x[1, 4:] == 0).all())


def test_sine_positions_restart_per_chunk_and_ignore_padding():
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    pos = sine_positions(valid, 8)
    assert pos.shape == (2, 4, 8)
    # position p = k / n * 2 pi: channel 0 = sin(p), channel 1 = cos(p)
    assert pos[0, 0, 0].item() == pytest.approx(math.sin(2 * math.pi / 4), abs=1e-5)
    assert pos[1, 0, 1].item() == pytest.approx(math.cos(2 * math.pi / 2), abs=1e-5)
    assert torch.equal(pos[1, 2], pos[1, 1]) and torch.equal(pos[1, 3], pos[1, 1])  # padding repeats the last
    assert pos[0, 3, 6].item() == pytest.approx(math.sin(2 * math.pi / 10000 ** (6 / 8)), abs=1e-6)


def test_chunk_gate_pools_only_valid_steps():
    gate = ChunkGate(4)
    x = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    noisy = x.clone()
    noisy[:, 3:] = 1e3
    assert torch.allclose(gate(x, mask), gate(noisy, mask)) and gate(x, mask).shape == (1,)


# ----------------------------------------------------------------------------- losses
def test_saliency_pairs_follow_the_released_rule():
    start, end, lengths = torch.tensor([2, 4, 0, 0]), torch.tensor([6, 4, 9, 0]), torch.tensor([10, 10, 10, 1])
    g = torch.Generator().manual_seed(0)
    seen_pos, seen_neg = set(), set()
    for _ in range(200):
        pos, neg = sample_saliency_pairs(start, end, lengths, g)
        # sample 0: positives two distinct of steps 2..5 (the end step 6 is left out, as released)
        assert pos[0, 0] != pos[0, 1] and set(pos[0].tolist()) <= {2, 3, 4, 5}
        assert neg[0, 0] != neg[0, 1] and set(neg[0].tolist()) <= {0, 1, 6, 7, 8, 9}
        seen_pos |= set(pos[0].tolist())
        seen_neg |= set(neg[0].tolist())
        # sample 1: s = e = 4 -> range [3, 3] (e - 1, s lowered to it): both positives 3
        assert pos[1].tolist() == [3, 3] and 3 not in neg[1].tolist()
        # sample 2: the GT covers steps 0..8 -> one negative step (9) only -> (0, 0)
        assert neg[2].tolist() == [0, 0]
        assert pos[3].tolist() == [0, 0] and neg[3].tolist() == [0, 0]
    assert seen_pos == {2, 3, 4, 5} and seen_neg == {0, 1, 6, 7, 8, 9}


def test_saliency_pair_loss_hand_case():
    scores = torch.tensor([[0.0, 1.0, 0.5, 0.9]])
    loss = saliency_pair_loss(scores, torch.tensor([[1, 2]]), torch.tensor([[3, 0]]), margin=0.2)
    # pairs: relu(0.2 + 0.9 - 1.0) = 0.1, relu(0.2 + 0.0 - 0.5) = 0 -> sum 0.1 / (1 * 2) * 2
    assert loss.item() == pytest.approx(0.1)


def test_frame_contrastive_loss_hand_case():
    video = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]]])  # [1, 4, 2]
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # the third word is padding
    text_mask = torch.tensor([[True, True, False]])
    positive = torch.tensor([[True, False, True, False]])
    video_mask = torch.tensor([[True, True, True, False]])  # step 3 is padding
    loss = frame_contrastive_loss(video, text, text_mask, positive, video_mask, temperature=0.5)
    logits = torch.tensor([0.5, 0.5, 0.7]) / 0.5  # mean word similarity / temperature of steps 0..2
    negatives = logits[1].exp()
    per_step = [-logits[i] + torch.log(logits[i].exp() + negatives) for i in (0, 2)]
    assert loss.item() == pytest.approx(float(sum(per_step) / 2), rel=1e-6)


# ----------------------------------------------------------------------------- the model
def test_training_outputs_shapes_and_finite_losses():
    model = make_model().train()
    batch = make_batch(model)
    out = model.compute_outputs(batch, num_chunks=3)
    assert out["start_logits"].shape == out["highlight_logits"].shape == out["saliency"].shape == (3, 12)
    assert out["features"].shape == (3, 12, 16) and out["gate_logits"].shape == (3, 3)
    assert out["chunk_valid"].tolist() == [[True] * 3, [True, True, False], [True, False, False]]  # 4 steps each
    assert bool((out["features"][2, 4:] == 0).all())  # padded steps stay empty
    losses = model(batch)
    assert set(losses) == {"loss", "span_loss", "highlight_loss", "saliency_loss", "chunk_loss", "contrastive_loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    weighted = (losses["span_loss"] + 20 * losses["highlight_loss"] + losses["saliency_loss"] + losses["chunk_loss"]
                + losses["contrastive_loss"])
    assert torch.allclose(losses["loss"], weighted)
    losses["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_tiny_overfit_lowers_every_loss():
    model = make_model(chunk_counts=[2], **NO_DROPOUT).train()
    batch = make_batch(model, lengths=(12, 9), num_steps=12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    history = []
    for _ in range(40):
        losses = model(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], {k: sum(h[k] for h in history[-5:]) / 5 for k in history[0]}
    assert last["loss"] < 0.3 * first["loss"]
    for key in ("span_loss", "highlight_loss", "chunk_loss", "contrastive_loss"):
        assert last[key] < first[key], key
    model.eval()
    with torch.no_grad():
        out = model.compute_outputs(batch, num_chunks=2)
    assert out["start_logits"].argmax(1).tolist() == [3, 3] and out["end_logits"].argmax(1).tolist() == [6, 6]


def test_multi_scale_inference_returns_top_k_windows_in_range():
    model = make_model(chunk_counts=[2, 3, 4, 5, 6]).eval()
    batch = make_batch(model, lengths=(12, 7, 1))
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 3
    for result, duration in zip(results, batch["duration"].tolist()):
        assert len(result["windows"]) == len(result["scores"]) == 5
        assert all(0.0 <= s < e <= duration + 1e-9 for s, e in result["windows"])
        assert result["scores"] == sorted(result["scores"], reverse=True)
    assert results[2]["windows"] == [[0.0, 0.5]] * 5  # one step: one span, repeated


def test_candidate_merge_as_released_and_unique():
    model = make_model(chunk_counts=[2, 3]).eval()
    batch = make_batch(model, lengths=(12,))
    with torch.no_grad():
        released = model(batch)[0]
        per_scale = [model.compute_outputs(batch, k) for k in (2, 3)]
    # released: the 5 best of the 2 x 5 candidates by P(start) * P(end), repeats kept
    pooled = []
    for out in per_scale:
        probs = out["start_logits"][0].softmax(0)[:, None] * out["end_logits"][0].softmax(0)[None, :]
        probs = probs.triu()
        top = probs.flatten().topk(5).values
        pooled += top.tolist()
    assert released["scores"] == pytest.approx(sorted(pooled, reverse=True)[:5], rel=1e-5)
    model.unique_windows = True
    with torch.no_grad():
        unique = model(batch)[0]
    assert len({tuple(w) for w in unique["windows"]}) == 5
    assert unique["scores"][0] == pytest.approx(released["scores"][0])


def test_batch_chunking_depends_on_padding_and_sample_chunking_does_not():
    for chunking, same in (("batch", False), ("sample", True)):
        model = make_model(chunking=chunking, chunk_counts=[3], **NO_DROPOUT).eval()
        batch = make_batch(model, lengths=(6,), num_steps=6)
        longer = dict(batch, video=torch.cat([batch["video"], torch.zeros(1, 6, 10)], 1),
                      video_mask=torch.cat([batch["video_mask"], torch.zeros(1, 6, dtype=torch.bool)], 1))
        with torch.no_grad():
            a = model.compute_outputs(batch, 3)["start_logits"][0, :6]
            b = model.compute_outputs(longer, 3)["start_logits"][0, :6]
        assert torch.allclose(a, b, atol=1e-5) == same, chunking


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="chunking"):
        make_model(chunking="video")
    with pytest.raises(ValueError, match="chunk_counts"):
        make_model(chunk_counts=[0, 2])
    with pytest.raises(ValueError, match="num_input_layers"):
        make_model(num_input_layers=4)


def test_shipped_config_holds_the_released_settings():
    from pathlib import Path

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "nlq" / "model" / "reler.yaml")
    released = {"hidden_dim": 256, "max_len": 600, "num_cross_layers": 3, "dropout": 0.1, "contrastive_dim": 64,
                "input_dropout": 0.5, "predictor_dropout": 0.2, "num_input_layers": 2, "cross_ffn_dim": 1024,
                "highlight_weight": 20.0, "chunk_counts": [2, 3, 4, 5, 6], "chunking": "batch",
                "unique_windows": False, "candidates_per_scale": 5, "temperature": 0.07, "saliency_margin": 0.2}
    assert {k: OmegaConf.to_container(cfg)[k] for k in released} == released
