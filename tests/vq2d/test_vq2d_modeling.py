"""SiamRCNN model: modules, ROI labelling, losses, inference paths, freezing, input formats."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchvision.ops import FrozenBatchNorm2d, box_iou

from vq2d.modeling.backbone import build_resnet_fpn_backbone
from vq2d.modeling.build import build_model
from vq2d.modeling.proposal_sampling import cross_batch_labels, mine_hard_negatives, sample_proposals
from vq2d.modeling.siam_head import SiameseHead

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "vq2d"


@functools.lru_cache(maxsize=None)
def model_config(name: str) -> dict:
    """The composed ``model`` group option ``name`` as a plain dict."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model({**model_config("r18_fpn"), **overrides})


def frames_and_crops(seed: int = 1):
    """Two frames of different sizes (the second one a negative frame) and their crops."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 128, 160, generator=g) * 255, torch.rand(3, 112, 150, generator=g) * 255]
    crops = torch.rand(2, 3, 64, 64, generator=g) * 255
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0]])}, {"boxes": torch.zeros(0, 4)}]
    return images, crops, targets


# --------------------------------------------------------------------------- modules
def test_backbone_output_shapes():
    backbone = build_resnet_fpn_backbone(depth=18, out_channels=64)
    out = backbone(torch.rand(2, 3, 128, 160))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    for key, stride in zip(out, (4, 8, 16, 32, 64)):
        assert out[key].shape == (2, 64, 128 // stride, -(-160 // stride))


def test_narrow_trunk_keeps_torchvision_names_and_shapes():
    from torchvision.models import resnet18

    narrow = build_resnet_fpn_backbone(depth=18, out_channels=32, width=16, frozen_bn=False)
    full_names = {k for k in resnet18(weights=None).state_dict() if not k.startswith("fc.")}
    assert set(narrow.body.state_dict()) == full_names  # same module tree, narrower tensors
    assert narrow.body.layer4[0].conv1.weight.shape == (128, 64, 3, 3)  # 16 * 2**3 channels
    out = narrow(torch.rand(2, 3, 96, 128))
    for key, stride in zip(out, (4, 8, 16, 32, 64)):
        assert out[key].shape == (2, 32, -(-96 // stride), -(-128 // stride))
    n_narrow = sum(p.numel() for p in narrow.body.parameters())
    n_full = sum(p.numel() for p in build_resnet_fpn_backbone(depth=18, out_channels=32).body.parameters())
    assert n_narrow < n_full / 10  # (16 / 64)**2 of the weights
    with pytest.raises(ValueError, match="width"):
        build_resnet_fpn_backbone(depth=18, width=0)


def test_stride_in_1x1_moves_the_stride():
    torchvision_style = build_resnet_fpn_backbone(depth=50, out_channels=32)
    detectron2_style = build_resnet_fpn_backbone(depth=50, out_channels=32, stride_in_1x1=True)
    for layer in ("layer2", "layer3", "layer4"):
        tv_block = getattr(torchvision_style.body, layer)[0]
        d2_block = getattr(detectron2_style.body, layer)[0]
        assert (tv_block.conv1.stride, tv_block.conv2.stride) == ((1, 1), (2, 2))
        assert (d2_block.conv1.stride, d2_block.conv2.stride) == ((2, 2), (1, 1))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        tv_shapes = {k: v.shape for k, v in torchvision_style(x).items()}
        assert tv_shapes == {k: v.shape for k, v in detectron2_style(x).items()}
    with pytest.raises(ValueError, match="bottleneck"):
        build_resnet_fpn_backbone(depth=18, stride_in_1x1=True)


def test_frozen_bn_and_trainable_layers():
    backbone = build_resnet_fpn_backbone(depth=18, out_channels=32, trainable_layers=3)
    norms = [m for m in backbone.body.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    frozen_all = build_resnet_fpn_backbone(depth=18, out_channels=32, trainable_layers=0)
    assert not any(p.requires_grad for p in frozen_all.body.parameters())
    assert all(p.requires_grad for p in frozen_all.fpn.parameters())


def test_siamese_head_shapes_and_bilinear_score():
    torch.manual_seed(0)
    head = SiameseHead(in_channels=16, hidden_size=32, num_residual_blocks=4, pooler_resolution=7)
    tail = ["AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in head.projector] == ["ResidualBlock"] * 4 + tail
    proposals = head.embed(torch.rand(5, 16, 7, 7))
    queries = head.embed(torch.rand(3, 16, 7, 7))
    assert proposals.shape == (5, 32) and queries.shape == (3, 32)
    logits = head.score(proposals, queries)
    assert logits.shape == (3, 5)
    for q in range(3):  # logit[q, k] = compare(p_k, q_q)
        expected = head.compare(proposals, queries[q].expand(5, -1))[:, 0]
        torch.testing.assert_close(logits[q], expected, rtol=1e-5, atol=1e-5)


def test_ncc_head_is_a_normalised_cross_correlation_per_channel():
    torch.manual_seed(0)
    head = SiameseHead(in_channels=4, hidden_size=8, num_residual_blocks=0, pooler_resolution=3, similarity="ncc")
    assert len(head.projector) == 0 and [type(m).__name__ for m in head.compare] == ["Linear", "ReLU", "Linear"]
    query = torch.rand(1, 4, 3, 3)
    proposals = torch.stack([query[0] * 2.0 + 1.0, -query[0], torch.rand(4, 3, 3)])  # scaled+shifted, negated, other
    p_emb, q_emb = head.embed(proposals), head.embed(query)
    assert p_emb.shape == (3, 4 * 9 + 4)
    seen = []
    head.compare.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    logits = head.score(p_emb, q_emb)
    assert logits.shape == (1, 3)
    pairs = seen[0]  # [Q, K, 2C]: per-channel correlation, then |mean difference|
    torch.testing.assert_close(pairs[0, 0, :4], torch.ones(4))  # a gain and an offset do not change the layout
    torch.testing.assert_close(pairs[0, 1, :4], -torch.ones(4))
    torch.testing.assert_close(pairs[0, 0, 4:], (query.mean(dim=(2, 3)) + 1.0)[0])  # ... but they change the colour
    assert (pairs[0, 2, :4].abs() < 1).all()
    torch.testing.assert_close(logits, head.compare(pairs)[..., 0])


def test_ncc_head_with_pixels_compares_three_more_channels():
    head = SiameseHead(in_channels=4, hidden_size=8, num_residual_blocks=1, pooler_resolution=3,
                       similarity="ncc", pixels=True)
    assert head.compare[0].in_features == 2 * (4 + 3)
    maps = torch.rand(2, 4 + 3, 3, 3)
    emb = head.embed(maps)
    assert emb.shape == (2, 7 * 9 + 7)
    torch.testing.assert_close(emb[:, -3:], maps[:, 4:].mean(dim=(2, 3)))  # the pixels skip the projector
    assert head.score(emb, emb).shape == (2, 2)
    with pytest.raises(ValueError, match="ncc"):
        SiameseHead(in_channels=4, hidden_size=8, similarity="bilinear", pixels=True)


def test_pixel_channels_of_a_box_match_the_crop_cut_from_it():
    """With ``head.pixels`` the ROI embeddings end with the frame pooled in the box, the crop
    embedding with the crop pooled: a crop cut from a box correlates with that box's ROI."""
    model = tiny_model(head={"similarity": "ncc", "num_residual_blocks": 0, "hidden_size": 16, "pixels": True},
                       box_head={"enabled": True, "hidden_size": 8, "detach_features": True}).eval()
    g = torch.Generator().manual_seed(0)
    frame = F.interpolate(torch.rand(1, 3, 16, 20, generator=g), size=(128, 160), mode="bilinear")[0] * 255
    box = torch.tensor([[32.0, 48.0, 96.0, 112.0]])  # 64 x 64: the crop size, so no resize
    crop = frame[:, 48:112, 32:96][None]
    image_list, features, _, _, _ = model._run_detector([frame])
    assert image_list.image_sizes[0] == (128, 160)
    c, r2 = model.head.in_channels, model.head.pooler_resolution ** 2
    boxes = [torch.cat([box, torch.tensor([[0.0, 0.0, 64.0, 64.0], [90.0, 10.0, 154.0, 74.0]])])]
    rois = model._pool_rois(features, boxes)  # [3, C, R, R]: the box head's input
    assert rois.shape[:2] == (3, c)
    embeddings = model._embed_rois(rois, image_list.tensors, boxes)  # [3, (C + 3) * R * R + C + 3]
    query = model.encode_crops(crop)  # [1, (C + 3) * R * R + C + 3]
    assert embeddings.shape == (3, query.shape[1]) == (3, (c + 3) * (r2 + 1))
    pixel_maps = query[0, : (c + 3) * r2].view(c + 3, r2)[c:]  # normalised layout of each colour channel
    corr = [(pixel_maps * embeddings[k, : (c + 3) * r2].view(c + 3, r2)[c:]).sum(1) for k in range(3)]
    assert (corr[0] > 0.95).all()  # the same pixels, pooled by RoIAlign vs average pooling
    assert all(corr[0].mean() > corr[k].mean() + 0.2 for k in (1, 2))
    frames = model.extract_frames([frame])  # the box head reads the feature channels only
    assert frames.embeddings[0].shape[1] == query.shape[1]
    images, crops, targets = frames_and_crops()
    losses = model.train()(images, crops, targets)
    sum(losses.values()).backward()
    assert "loss_box_reg" in losses and model.head.compare[0].weight.grad[:, c : c + 3].abs().sum() > 0


def test_cosine_head_and_spatial_pool():
    torch.manual_seed(0)
    head = SiameseHead(in_channels=4, hidden_size=8, num_residual_blocks=0, pooler_resolution=4,
                       similarity="cosine", spatial_pool=2, init_scale=10.0, init_bias=-5.0)
    assert not hasattr(head, "compare") and head.projector[2].in_features == 4 * 2 * 2
    emb = head.embed(torch.rand(3, 4, 4, 4))
    logits = head.score(emb, emb)
    torch.testing.assert_close(torch.diagonal(logits), torch.full((3,), 5.0))  # cos 1: 10 * 1 - 5
    assert (logits <= 5.0 + 1e-5).all()
    with pytest.raises(ValueError, match="similarity"):
        SiameseHead(in_channels=4, hidden_size=8, similarity="dot")


# ------------------------------------------------------------------- ROI labelling
def test_negative_frame_gives_only_negative_rois():
    proposals = [torch.tensor([[0.0, 0, 50, 50], [10, 10, 60, 60], [5, 5, 40, 40]])]
    boxes, labels = sample_proposals(
        proposals, [torch.zeros(0, 4)], rois_per_image=64, positive_fraction=0.1, fg_iou_thresh=0.5
    )
    assert len(boxes[0]) == 3 and labels[0].tolist() == [0, 0, 0]


def test_positive_frame_sampling_appends_gt_and_caps_positives():
    torch.manual_seed(0)
    gt = torch.tensor([[100.0, 100, 200, 200]])
    near = gt + torch.randn(30, 4) * 3  # IoU >= 0.5 with the GT
    far = torch.rand(100, 4) * 50 + torch.tensor([0.0, 0, 60, 60])  # x1,y1 in [0,50], x2,y2 in [60,110]: IoU < 0.5
    boxes, labels = sample_proposals(
        [torch.cat([near, far])], [gt], rois_per_image=20, positive_fraction=0.25, fg_iou_thresh=0.5
    )
    assert len(boxes[0]) == 20 and int(labels[0].sum()) == 5  # int(20 * 0.25) positives
    only_gt, only_gt_labels = sample_proposals(
        [far], [gt], rois_per_image=20, positive_fraction=0.25, fg_iou_thresh=0.5
    )
    assert int(only_gt_labels[0].sum()) == 1  # the appended GT is the only positive
    assert any(torch.equal(b, gt[0]) for b in only_gt[0][only_gt_labels[0] == 1])


def test_cross_batch_labels_positive_only_on_own_image():
    labels, valid = cross_batch_labels([torch.tensor([1, 0, 1]), torch.tensor([0, 1])])
    assert labels.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]]
    assert valid.all()
    _, own_only = cross_batch_labels([torch.tensor([1, 0, 1]), torch.tensor([0, 1])], cross_batch=False)
    assert own_only.tolist() == [[True, True, True, False, False], [False, False, False, True, True]]
    labels, valid = cross_batch_labels([torch.tensor([1, 0]), torch.tensor([0, 1])], queries_per_image=2)
    assert labels.tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]  # crops 0, 1 of image 0


def test_several_crops_per_frame_train_and_inference_keeps_one():
    model = tiny_model(head={"similarity": "ncc", "num_residual_blocks": 0, "hidden_size": 16}).train()
    images, crops, targets = frames_and_crops()
    losses = model(images, torch.stack([crops, crops.flip(-1)], dim=1).flatten(0, 1), targets)  # image-major
    assert torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()
    assert model.head.compare[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="crops per image"):
        model(images, crops[:1].expand(3, -1, -1, -1), targets)
    with pytest.raises(ValueError, match="one crop per image"):
        model.eval()(images, torch.cat([crops, crops]))


def test_hard_negative_mining_keeps_positives_and_top_negatives():
    logits = torch.tensor([[0.1, 5.0, -1.0, 3.0, 2.0, -4.0], [9.0, 1.0, 2.0, 0.0, -1.0, 8.0]])
    labels = torch.tensor([[1.0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0]])
    valid = torch.ones_like(labels, dtype=torch.bool)
    valid[1, 0] = False  # an invalid pair is never kept, even with the top score
    keep = mine_hard_negatives(logits, labels, valid, num_negatives=2)
    assert keep.tolist() == [
        [True, True, False, True, False, True],  # positives 0, 5 (low scores kept) + negatives 5.0, 3.0
        [False, False, True, False, True, True],  # positive 4 + negatives 8.0, 2.0
    ]
    assert mine_hard_negatives(logits, labels, valid, None).tolist() == valid.tolist()


# ----------------------------------------------------------------- full model
def test_training_losses_are_finite_and_backprop():
    model = tiny_model(trainable_backbone_layers=5).train()
    images, crops, targets = frames_and_crops()
    losses = model(images, crops, targets)
    assert set(losses) == {"loss_siam", "loss_rpn_objectness", "loss_rpn_box_reg"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)
    sum(losses.values()).backward()
    head, backbone = model.head, model.backbone
    for part in (head.projector, head.compare, model.rpn.head, backbone.body.conv1, backbone.fpn):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_channels_last_model_gives_the_same_losses_and_state():
    model = tiny_model(head={"similarity": "ncc", "num_residual_blocks": 0, "hidden_size": 16}).train()
    images, crops, targets = frames_and_crops()
    torch.manual_seed(3)
    plain = model(images, crops, targets)
    nhwc = tiny_model(head={"similarity": "ncc", "num_residual_blocks": 0, "hidden_size": 16}).train()
    nhwc = nhwc.to(memory_format=torch.channels_last)
    assert nhwc.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(3)
    other = nhwc(images, crops, targets)
    for name in plain:
        torch.testing.assert_close(other[name], plain[name], rtol=1e-4, atol=1e-5)
    fresh = tiny_model(seed=5, head={"similarity": "ncc", "num_residual_blocks": 0, "hidden_size": 16})
    fresh.load_state_dict(nhwc.state_dict())  # checkpoints do not depend on the layout
    torch.testing.assert_close(fresh.backbone.body.conv1.weight, model.backbone.body.conv1.weight)


def test_all_negative_batch_trains_with_zero_labels(monkeypatch):
    import vq2d.modeling.siamrcnn as siamrcnn

    seen = {}
    bce = F.binary_cross_entropy_with_logits

    def spy(logits, labels, *args, **kwargs):
        seen["labels"] = labels
        return bce(logits, labels, *args, **kwargs)

    monkeypatch.setattr(siamrcnn.F, "binary_cross_entropy_with_logits", spy)
    model = tiny_model().train()
    images, crops, _ = frames_and_crops()
    losses = model(images, crops, [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}])
    assert torch.isfinite(losses["loss_siam"]) and seen["labels"].numel() > 0
    assert seen["labels"].sum() == 0


def test_iou_targets_give_each_positive_pair_its_iou(monkeypatch):
    import vq2d.modeling.siamrcnn as siamrcnn

    seen = {}
    real_sample, real_loss = siamrcnn.sample_proposals, siamrcnn.siamese_loss

    def sample_spy(proposals, gt_boxes, **kwargs):
        seen["gt"], seen["rois"] = gt_boxes, real_sample(proposals, gt_boxes, **kwargs)
        return seen["rois"]

    def loss_spy(logits, labels, keep, **kwargs):
        seen.setdefault("labels", []).append(labels)
        return real_loss(logits, labels, keep, **kwargs)

    monkeypatch.setattr(siamrcnn, "sample_proposals", sample_spy)
    monkeypatch.setattr(siamrcnn, "siamese_loss", loss_spy)
    images, crops, targets = frames_and_crops()
    for iou_targets in (False, True):
        torch.manual_seed(0)
        tiny_model(iou_targets=iou_targets, positive_fraction=0.5).train()(images, crops, targets)
    binary, soft = seen["labels"]
    (rois, roi_labels), gt = seen["rois"], seen["gt"]
    positive = torch.cat(roi_labels) == 1
    assert positive.sum() > 1 and torch.equal(binary[0] > 0, positive)  # image 0's positives, crop 0
    expected = box_iou(gt[0], rois[0]).max(dim=0).values  # IoU of image 0's ROIs with its response box
    n0 = len(rois[0])
    torch.testing.assert_close(soft[0, :n0][positive[:n0]], expected[positive[:n0]])
    assert soft[0, :n0][positive[:n0]].min() >= 0.5 and soft[0, :n0][positive[:n0]].max() <= 1.0
    assert (soft[0, :n0][positive[:n0]] < 1.0).any()  # not all 1: the targets are the IoUs
    assert torch.equal(soft[~(binary > 0)], binary[~(binary > 0)])  # negatives stay 0
    assert soft[1].sum() == 0  # crop 1 belongs to the negative frame


def test_detect_matches_forward_inference():
    model = tiny_model().eval()
    images, crops, _ = frames_and_crops()
    with torch.no_grad():
        pairs = model(images, crops)
        frames = model.extract_frames(images)
        queries = model.encode_crops(crops.flip(0))  # query order reversed: query 1 = crop 0
        per_frame = model.detect(frames, queries)
    assert len(pairs) == 2 and len(per_frame) == 2 and all(len(r) == 2 for r in per_frame)
    for i, (image, result) in enumerate(zip(images, pairs)):
        k = len(result["scores"])
        assert 0 < k <= model.detections_per_frame
        assert result["boxes"].shape == (k, 4) and ((result["scores"] > 0) & (result["scores"] < 1)).all()
        assert (result["scores"][:-1] >= result["scores"][1:]).all()
        h, w = image.shape[-2:]
        assert (result["boxes"][:, 2] <= w + 1e-3).all() and (result["boxes"][:, 3] <= h + 1e-3).all()
        batched = per_frame[i][1 - i]
        torch.testing.assert_close(batched["boxes"], result["boxes"])
        torch.testing.assert_close(batched["scores"], result["scores"], rtol=1e-5, atol=1e-6)


def test_frozen_options_freeze_and_param_groups():
    model = tiny_model(freeze_backbone=True, freeze_rpn=True).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.rpn.parameters())
    groups = model.param_groups(lr_head=0.02, lr_backbone=0.002, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["head"] and groups[0]["lr"] == 0.02
    assert len(groups[0]["params"]) == len(list(model.head.parameters()))
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    optimizer = torch.optim.SGD(groups, lr=0.02, momentum=0.9)
    images, crops, targets = frames_and_crops()
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(images, crops, targets).values()).backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and FrozenBN statistics

    trained = tiny_model(trainable_backbone_layers=5)
    groups = {g["name"]: g for g in trained.param_groups(lr_head=0.02, lr_backbone=0.002, weight_decay=1e-4)}
    assert groups["backbone"]["lr"] == 0.002 and groups["backbone"]["weight_decay"] == 1e-4
    expected = len(list(trained.backbone.parameters())) + len(list(trained.rpn.parameters()))
    assert len(groups["backbone"]["params"]) == expected


def test_bgr_model_flips_input_channels():
    stats = {"pixel_mean": [120.0, 110.0, 100.0], "pixel_std": [70.0, 60.0, 50.0]}
    rgb = tiny_model(seed=3, **stats).eval()
    bgr = tiny_model(seed=4, input_format="BGR", **stats).eval()
    bgr.load_state_dict(rgb.state_dict())
    crops = frames_and_crops()[1]
    with torch.no_grad():
        same = bgr.encode_crops(crops)
        torch.testing.assert_close(same, rgb.encode_crops(crops.flip(1)), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(same, rgb.encode_crops(crops), atol=1e-3)


def test_autocast_bf16_train_and_inference():
    model = tiny_model()
    images, crops, targets = frames_and_crops()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, crops, targets)
        with torch.no_grad():
            results = model.eval()(images, crops)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(r["boxes"].dtype == torch.float32 and torch.isfinite(r["scores"]).all() for r in results)


def test_sgd_steps_lower_the_loss_on_a_fixed_batch():
    model = tiny_model(trainable_backbone_layers=0).train()  # FPN, RPN and head train
    images, crops, targets = frames_and_crops()
    optimizer = torch.optim.SGD(model.param_groups(0.005, 0.005, 0.0), lr=0.005, momentum=0.9)

    def loss_at_fixed_sampling() -> float:
        torch.manual_seed(123)  # same ROI / anchor sampling each time
        with torch.no_grad():
            return float(sum(model(images, crops, targets).values()))

    initial = loss_at_fixed_sampling()
    for step in range(6):
        torch.manual_seed(step)
        optimizer.zero_grad()
        sum(model(images, crops, targets).values()).backward()
        optimizer.step()
    assert loss_at_fixed_sampling() < 0.85 * initial


# ------------------------------------------------------------------------ config
@pytest.mark.parametrize("name", ["r18_fpn", "r50_fpn", "r50_fpn_detectron2"])
def test_config_group_options_build(name):
    model = build_model(model_config(name))
    cfg = model_config(name)
    assert model.input_format == cfg["input_format"]
    first_block = model.backbone.body.layer2[0]
    strided = first_block.conv1 if cfg["stride_in_1x1"] or cfg["depth"] < 50 else first_block.conv2
    assert strided.stride == (2, 2)
    assert model.transform.min_size == tuple(cfg["min_size"])


def test_build_model_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model({"depth": 18, "dpeth": 50})
    with pytest.raises(ValueError, match="model.rpn"):
        build_model({"depth": 18, "rpn": {"nms_thres": 0.7}})
    with pytest.raises(ValueError, match="crops must be"):
        tiny_model().eval()([torch.rand(3, 64, 64)], torch.rand(1, 3, 32, 32))


# --------------------------------------------------------------------------- box refinement
def test_box_head_is_off_by_default_and_absent_from_the_state_dict():
    for name in ("r18_fpn", "r50_fpn", "r50_fpn_detectron2"):
        assert model_config(name)["box_head"]["enabled"] is False
    assert tiny_model().box_head is None
    assert not any(k.startswith("box_head.") for k in tiny_model().state_dict())


def test_box_head_loss_matches_the_fast_rcnn_definition_by_hand():
    from vq2d.modeling.box_head import BoxRefineHead

    head = BoxRefineHead(in_channels=2, resolution=2, hidden_size=4)
    rois = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    labels = [torch.tensor([1, 0]), torch.tensor([0])]
    gt = [torch.tensor([[1.0, 0.0, 11.0, 10.0]]), torch.zeros(0, 4)]  # image 2: a negative frame
    deltas = torch.zeros(3, 4)
    # roi 0 (centre 5, 5, size 10) -> GT (centre 6, 5, size 10): dx = 10 * 1 / 10 = 1, the rest 0
    loss = head.loss(deltas, rois, labels, gt)
    assert torch.isclose(loss, torch.tensor((1.0 - 0.5 / 9.0) / 3.0))  # smooth L1 (beta 1/9), / 3 ROIs
    exact = torch.tensor([[1.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0], [9.0, 9.0, 9.0, 9.0]])
    assert head.loss(exact, rois, labels, gt) == 0  # only positives count
    none = head.loss(deltas.requires_grad_(), rois, [torch.tensor([0, 0]), torch.tensor([0])], gt)
    assert none == 0 and none.requires_grad
    refined = head.refine(exact[:1], rois[0][:1], (100, 100))
    torch.testing.assert_close(refined, gt[0])  # the deltas decode back to the GT box
    assert head.refine(torch.tensor([[0.0, 0.0, 5.0, 0.0]]), rois[0][:1], (8, 100))[0, 3] == 8  # clipped


def test_box_head_trains_and_refines_the_answer_boxes():
    model = tiny_model(box_head={"enabled": True, "hidden_size": 16}).train()
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("box_head.")} == {"fc1", "fc2", "deltas"}
    images, crops, targets = frames_and_crops()
    losses = model(images, crops, targets)
    assert set(losses) == {"loss_siam", "loss_rpn_objectness", "loss_rpn_box_reg", "loss_box_reg"}
    assert losses["loss_box_reg"] > 0  # the appended GT box and its neighbours are positives
    sum(losses.values()).backward()
    assert model.box_head.fc1.weight.grad.abs().sum() > 0
    names = {g["name"]: g for g in model.param_groups(lr_head=0.02, lr_backbone=0.002, weight_decay=0.0)}
    assert sum(p.numel() for p in names["head"]["params"]) == (
        sum(p.numel() for p in model.head.parameters()) + sum(p.numel() for p in model.box_head.parameters()))
    model.eval()
    with torch.no_grad():
        plain = model.extract_frames(images)
        model.box_head.deltas.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))  # dw = 1 / 5: width x e^0.2
        model.box_head.deltas.weight.zero_()
        wider = model.extract_frames(images)
    for before, after, image in zip(plain.boxes, wider.boxes, images):
        width = lambda b: b[:, 2] - b[:, 0]
        inside = (after[:, 0] > 0.5) & (after[:, 2] < image.shape[-1] - 0.5)  # not clipped
        assert inside.any()
        torch.testing.assert_close(width(after)[inside], width(before)[inside] * torch.exp(torch.tensor(0.2)),
                                   rtol=2e-2, atol=0.0)
    for e_plain, e_wide in zip(plain.embeddings, wider.embeddings):
        torch.testing.assert_close(e_plain, e_wide)  # the proposals' embeddings, not the refined boxes'


def test_benchmark_training_configs_build():
    """Every configuration ``benchmarks/bench_train_vq2d.py`` measures composes and builds
    (its ``tiny_before`` undoes the tiny preset's newer options, e.g. the pixel channels
    that only the ncc head accepts)."""
    import importlib.util

    from vq2d.engine.build import build_training_model

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_vq2d.py"
    spec = importlib.util.spec_from_file_location("bench_train_vq2d", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("tiny", "tiny_before", "tiny_nchw"):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=bench.OVERRIDES[name])
        model = build_training_model(cfg)
        assert model.head.pixels == (name != "tiny_before")
        assert (model.box_head is None) == (name == "tiny_before")
    with pytest.raises(ValueError, match="model.head.pixels=false"):
        SiameseHead(in_channels=4, hidden_size=8, similarity="cosine", pixels=True)
