"""SnAG (nlq.models.snag and its layers, targets, losses, Soft-NMS) on small tensors, and both
NaQ stages end to end on the tiny synthetic data (preset=tiny)."""
from __future__ import annotations

import math

import pytest
import torch

from episodic.io import read_json
from nlq.data.annotations import load_nlq_annotations
from nlq.engine.build import resolve_train_config
from nlq.engine.inference import evaluate_checkpoint
from nlq.engine.trainer import train
from nlq.evaluation.submission import validate_submission
from nlq.models import losses
from nlq.models.build import build_model, build_text_encoder
from nlq.models.snag_layers import LocalSelfAttentionBlock, downsample
from nlq.models.snag_targets import assign_targets, level_points, regression_ranges, windows_to_steps
from nlq.models.spans import soft_nms, vote_windows

QUERIES = ["where did I put the knife", "what did I cut", "#C C picks a cup", "where is the cup"]
VIDEO_DIM = 6
TINY = {"name": "snag", "hidden_dim": 16, "num_heads": 2, "max_len": 64, "num_levels": 4, "window_size": 5,
        "num_conv_layers": 1, "num_head_layers": 1}


def make_model(**overrides):
    torch.manual_seed(0)
    encoder = build_text_encoder({"name": "learned", "word_dim": 8, "char_dim": 4, "char_channels": [3, 5],
                                  "char_kernels": [1, 3]}, QUERIES)
    return build_model({**TINY, **overrides}, encoder, video_dim=VIDEO_DIM)


def make_batch(model, lengths=(13, 7, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    video = torch.randn(len(lengths), steps, VIDEO_DIM, generator=g) * mask[..., None]
    duration = torch.tensor([n * 0.5 for n in lengths])
    window = torch.stack([duration * 0.2, duration * 0.7], dim=1)
    return {"video": video, "video_mask": mask, "feature_dims": [VIDEO_DIM],
            "text": model.text_encoder.tokenize(QUERIES[:len(lengths)]), "duration": duration, "gt_window": window}


@pytest.mark.parametrize("lengths", [(13, 7, 4), (1,), (64, 33), (9, 9)])
def test_outputs_cover_every_level_and_ignore_padding(lengths):
    model = make_model(dropout=0.0).eval()
    batch = make_batch(model, lengths)
    out = model.compute_outputs(batch)
    t = max(lengths)
    level_sizes = [math.ceil(t / 2 ** level) for level in range(4)]
    points = sum(level_sizes)
    assert out["logits"].shape == (len(lengths), points) and out["offsets"].shape == (len(lengths), points, 2)
    assert (out["offsets"] >= 0).all() and torch.isfinite(out["logits"]).all()
    expected_valid = [sum(math.ceil(n / 2 ** level) for level in range(4)) for n in lengths]
    assert out["mask"].sum(dim=1).tolist() == expected_valid
    assert out["points"]["stride"].tolist() == [float(2 ** lv) for lv, n in enumerate(level_sizes) for _ in range(n)]
    # a sample alone (no padding) gives the same valid outputs as in the padded batch
    for b, n in enumerate(lengths):
        alone = {**batch, "video": batch["video"][b:b + 1, :n], "video_mask": batch["video_mask"][b:b + 1, :n],
                 "text": {k: v[b:b + 1] for k, v in batch["text"].items()}, "duration": batch["duration"][b:b + 1]}
        single = model.compute_outputs(alone)
        assert torch.allclose(single["logits"][0][single["mask"][0]], out["logits"][b][out["mask"][b]], atol=1e-5)
    results = model(batch)
    assert len(results) == len(lengths)
    for r, duration in zip(results, batch["duration"].tolist()):
        assert len(r["windows"]) == 5 and len(r["scores"]) == 5
        assert all(0.0 <= s <= e <= duration + 1e-9 for s, e in r["windows"])
        assert r["scores"] == sorted(r["scores"], reverse=True)


def test_longer_than_max_len_is_an_error():
    model = make_model()
    with pytest.raises(ValueError, match="max_len 64"):
        model.compute_outputs(make_batch(model, (65, 3)))


def test_local_attention_is_a_sliding_window():
    torch.manual_seed(0)
    block = LocalSelfAttentionBlock(8, num_heads=2, window_size=5, dropout=0.0).eval()
    x, mask = torch.randn(2, 11, 8), torch.arange(11)[None] < torch.tensor([[11], [6]])
    steps = torch.arange(11)
    band = ((steps[:, None] - steps[None]).abs() <= 2)[None] & mask[:, None, :]
    h = block.norm(x)
    reference = block.feed_forward(x + block.attention(h, h, band)) * mask[..., None]
    assert torch.allclose(block(x, mask), reference, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        LocalSelfAttentionBlock(8, 2, window_size=4)


def test_downsample_halves_odd_lengths():
    x = torch.arange(7.0).view(1, 7, 1)
    pooled, mask = downsample(x, torch.tensor([[True] * 5 + [False] * 2]))
    assert mask.tolist() == [[True, True, True, False]]
    assert pooled[0, :, 0].tolist() == [1.0, 3.0, 4.0, 0.0]  # max over steps 0-1, 1-3, 3-5 (step 5 padded)


def test_regression_ranges_and_center_sampling_hand_case():
    assert regression_ranges(4) == [(0.0, 4.0), (2.0, 8.0), (4.0, 16.0), (8.0, math.inf)]
    points = level_points([8, 4], regression_ranges(2))  # positions 0..7 (stride 1), 0, 2, 4, 6 (stride 2)
    assert points["position"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6]
    # a window over steps 2..4 (seconds [1.0, 2.5] of an 8-step, 4 s clip) -> [1.5, 4.5]; centre 3
    segment = windows_to_steps(torch.tensor([[1.0, 2.5]]), torch.tensor([4.0]), torch.tensor([8]))
    assert segment.tolist() == [[1.5, 4.5]]
    labels, offsets = assign_targets(points, segment, center_radius=1.5)
    # level 0: inside (1.5, 4.5) and max distance < 4 -> steps 2, 3, 4; level 1 (range [2, inf)):
    # position 2 (max distance 2.5) and 4 (2.5) inside the centre region (1.5, 4.5)
    assert labels[0].nonzero().flatten().tolist() == [2, 3, 4, 9, 10]
    assert offsets[0, 3].tolist() == [1.5, 1.5] and offsets[0, 9].tolist() == [0.25, 1.25]  # / stride 2
    long_window = assign_targets(points, torch.tensor([[0.0, 7.0]]), center_radius=1.5)[0]
    # centre 3.5: level 0's centre region (2, 5) holds steps 3 and 4, but their larger distance is 4,
    # outside level 0's [0, 4); level 1's region (0.5, 6.5) holds positions 2, 4, 6 (distances 5, 4, 6)
    assert long_window[0].nonzero().flatten().tolist() == [9, 10, 11]


def test_focal_and_offset_losses_hand_values():
    logits, labels = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    # p = 0.5 and no smoothing: each term is log(2) * 0.5^2, weighted alpha / 1 - alpha
    assert float(losses.sigmoid_focal_loss(logits, labels, alpha=0.25)) == pytest.approx(math.log(2) * 0.25)
    smoothed = losses.sigmoid_focal_loss(torch.tensor([10.0]), torch.tensor([1.0]), smoothing=0.2)
    assert float(smoothed) > float(losses.sigmoid_focal_loss(torch.tensor([10.0]), torch.tensor([1.0])))
    pred, target = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 3.0]])
    assert float(losses.offset_iou_loss(pred, target)) == pytest.approx(0.5)  # IoU 2/4
    # DIoU: centres -> (1 - 1) / 2 = 0 vs (3 - 1) / 2 = 1 apart, enclosing length 4: + (1/4)^2
    assert float(losses.offset_iou_loss(pred, target, "diou")) == pytest.approx(0.5 + 1 / 16)
    with pytest.raises(ValueError):
        losses.offset_iou_loss(pred, target, "giou")


def test_soft_nms_hand_cases():
    windows = torch.tensor([[0.0, 10.0], [0.0, 10.0], [0.0, 5.0], [20.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.5])
    kept, kept_scores = soft_nms(windows, scores, sigma=0.5, min_score=0.001, k=4)
    # 1st: [0, 10]; the duplicate decays by exp(-1/0.5), [0, 5] (IoU 0.5) by exp(-0.25/0.5) to 0.42,
    # so the disjoint window (0.5, never decayed) comes 2nd; picking [0, 5] decays the duplicate again
    assert kept.tolist() == [[0.0, 10.0], [20.0, 30.0], [0.0, 5.0], [0.0, 10.0]]
    expected = [0.9, 0.5, 0.7 * math.exp(-0.5), 0.8 * math.exp(-2.0) * math.exp(-0.25 / 0.5)]
    assert kept_scores.tolist() == pytest.approx(expected, rel=1e-5)
    # scores decayed below min_score are dropped; k limits the output
    kept, _ = soft_nms(windows, scores, sigma=0.5, min_score=0.2, k=5)
    assert kept.tolist() == [[0.0, 10.0], [20.0, 30.0], [0.0, 5.0]]
    assert soft_nms(windows, scores, k=1)[0].tolist() == [[0.0, 10.0]]
    voted = vote_windows(torch.tensor([[0.0, 10.0]]), torch.tensor([[0.0, 10.0], [0.0, 10.2], [0.0, 5.0]]),
                         torch.tensor([0.6, 0.2, 0.9]), iou_threshold=0.95)
    assert voted[0].tolist() == pytest.approx([0.0, 10.05])  # (0.6 * 10 + 0.2 * 10.2) / 0.8


def test_tiny_overfit_decreases_finite_losses():
    model = make_model(dropout=0.0)
    batch = make_batch(model, (13, 7, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        model.train()
        out = model(batch)
        assert set(out) == {"loss", "cls_loss", "reg_loss"} and all(torch.isfinite(v) for v in out.values())
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append(float(out["loss"].detach()))
    assert history[-1] < 0.5 * history[0]
    assert "loss_norm" in model.state_dict() and float(model.loss_norm) != 10.0  # running, saved with the weights
    model.eval()
    best = model(batch)[0]["windows"][0]
    gt = batch["gt_window"][0].tolist()
    inter = max(0.0, min(best[1], gt[1]) - max(best[0], gt[0]))
    assert inter / (max(best[1], gt[1]) - min(best[0], gt[0])) > 0.5  # the top window found the GT


def test_snag_preset_keeps_native_length():
    from tests.nlq.test_nlq_train import train_config

    cfg = resolve_train_config(train_config("model=snag", "stage=joint"))
    assert cfg.model.max_len == cfg.data.max_len == 1024 and list(cfg.data.features.names) == ["synthetic"]
    assert (cfg.batch_size, cfg.weight_decay, cfg.grad_clip) == (32, 0.05, 1.0)
    assert resolve_train_config(train_config("model=vslnet", "stage=joint")).model.max_len == 48
    paper = resolve_train_config(train_config("preset=paper", "model=snag", "stage=nlq_only"))
    assert paper.model.max_len == 2304 and paper.model.hidden_dim == 512 and paper.model.num_levels == 8


def test_two_stage_naq_recipe_end_to_end(tmp_path):
    from nlq.data.synthetic import generate_nlq
    from tests.nlq.test_nlq_train import TINY_DATA, train_config

    root = tmp_path / "data"
    generate_nlq(root, seed=3, **TINY_DATA)
    joint, finetune = tmp_path / "joint", tmp_path / "finetune"
    common = ["model=snag", f"data.root={root}", "max_epochs=1", "model.num_levels=4"]
    summary = train(train_config(*common, "stage=joint", f"output_dir={joint}", f"naq_file={tmp_path / 'naq.json'}"))
    assert summary["epochs"] == 1 and (joint / "model_best.pth").is_file()
    assert read_json(joint / "data_report.json")["train"]["naq"] > 0 and any((joint / "tensorboard").iterdir())
    summary = train(train_config(*common, "stage=finetune", f"output_dir={finetune}",
                                 f"init={joint / 'model_best.pth'}"))
    assert summary["epochs"] == 1
    for key in ("R@1_IoU0.3", "R@5_IoU0.5", "mIoU"):
        assert 0.0 <= summary["last_metrics"][key] <= 100.0
    checkpoint = torch.load(finetune / "model_best.pth", weights_only=False)
    assert checkpoint["config"]["model"]["name"] == "snag" and "loss_norm" in checkpoint["model"]

    metrics = evaluate_checkpoint(finetune / "model_best.pth", root, "val", tmp_path / "eval_val")
    assert metrics["num_evaluated"] > 0 and {"R@1_IoU0.3", "MR@1"} <= set(metrics)
    evaluate_checkpoint(finetune / "model_best.pth", root, "test_unannotated", tmp_path / "eval_test")
    test = load_nlq_annotations(root / "v2/annotations/nlq_test_unannotated.json")
    assert validate_submission(read_json(tmp_path / "eval_test/submission.json"), test) == []


def test_resume_equals_uninterrupted(tmp_path):
    """The running loss normaliser is saved with the weights: a run stopped after epoch 1 and
    resumed ends where an uninterrupted one does."""
    from nlq.data.synthetic import generate_nlq
    from tests.nlq.test_nlq_train import TINY_DATA, train_config

    root = tmp_path / "data"
    generate_nlq(root, seed=3, **{**TINY_DATA, "n_moments_clips": 0})
    common = ["model=snag", "stage=nlq_only", f"data.root={root}", "schedule_epochs=2", "seed=5",
              "model.num_levels=3", "model.hidden_dim=16"]
    train(train_config(*common, f"output_dir={tmp_path / 'a'}", "max_epochs=2"))
    train(train_config(*common, f"output_dir={tmp_path / 'b'}", "max_epochs=1"))
    train(train_config(*common, f"output_dir={tmp_path / 'b'}", "max_epochs=2"))
    a = torch.load(tmp_path / "a" / "model_0002.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "model_0002.pth", weights_only=False)
    assert float(a["model"]["loss_norm"]) != 10.0
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
