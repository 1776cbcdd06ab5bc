"""Pretrained-weight loading and the detectron2 checkpoint converter (random-init models only)."""
from __future__ import annotations

import functools
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from episodic.errors import DataError
from vq2d.modeling.build import build_model
from vq2d.modeling.weights import (
    convert_detectron2_state_dict,
    export_detectron2_state_dict,
    load_imagenet_backbone,
    load_torchvision_detector,
)

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def model_config(name: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "configs" / "vq2d"), version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def build(name: str, seed: int, **overrides):
    torch.manual_seed(seed)
    return build_model({**model_config(name), **overrides})


def assert_same_state(a: dict, b: dict, prefix: str = "") -> None:
    """Same names and tensors under ``prefix`` (BatchNorm's num_batches_tracked aside)."""
    keys = [k for k in a if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix) and not k.endswith("num_batches_tracked")}
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def test_detectron2_round_trip_loads_strict():
    model = build("r50_fpn_detectron2", seed=0)
    ours = model.state_dict()
    d2 = export_detectron2_state_dict(ours)
    expected_shapes = {
        "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.bottom_up.stem.conv1.norm.running_var": (64,),
        "backbone.bottom_up.res2.0.conv1.weight": (64, 64, 1, 1),
        "backbone.bottom_up.res2.0.conv1.norm.bias": (64,),
        "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
        "backbone.bottom_up.res2.0.shortcut.norm.running_mean": (256,),
        "backbone.bottom_up.res3.0.conv1.weight": (128, 256, 1, 1),
        "backbone.bottom_up.res5.2.conv3.norm.weight": (2048,),
        "backbone.fpn_lateral2.weight": (256, 256, 1, 1),
        "backbone.fpn_lateral5.bias": (256,),
        "backbone.fpn_output2.weight": (256, 256, 3, 3),
        "proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
        "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.bias": (12,),
        "roi_heads.siam_head.projector.0.conv1.weight": (256, 256, 3, 3),
        "roi_heads.siam_head.projector.3.conv2.weight": (256, 256, 3, 3),
        "roi_heads.siam_head.projector.6.weight": (1024, 256),
        "roi_heads.siam_head.projector.8.bias": (1024,),
        "roi_heads.siam_head.compare.weight": (1, 1024, 1024),
        "roi_heads.siam_head.compare.bias": (1,),
    }
    for name, shape in expected_shapes.items():
        assert tuple(d2[name].shape) == shape, name
    assert all(k.startswith(("backbone.bottom_up.", "backbone.fpn_", "proposal_generator.", "roi_heads.")) for k in d2)
    # what a released file also holds: pixel statistics, the COCO detector's box head
    released = {
        "model": {
            **d2,
            "pixel_mean": torch.zeros(3, 1, 1),
            "roi_heads.box_head.fc1.weight": torch.zeros(4, 4),
            "roi_heads.box_predictor.cls_score.bias": torch.zeros(81),
        }
    }
    converted = convert_detectron2_state_dict(released)
    assert_same_state(converted, ours)
    fresh = build("r50_fpn_detectron2", seed=1)
    assert not torch.equal(fresh.state_dict()["head.compare.weight"], ours["head.compare.weight"])
    fresh.load_state_dict(converted, strict=True)
    assert_same_state(fresh.state_dict(), ours)
    with pytest.raises(DataError, match="unshared projectors"):
        convert_detectron2_state_dict({"roi_heads.siam_head.projector_1.0.conv1.weight": torch.zeros(1)})


def test_convert_tool_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    source = build("r18_fpn", seed=0)
    d2_file = tmp_path / "model_final.pth"
    torch.save({"model": export_detectron2_state_dict(source.state_dict()), "iteration": 5}, d2_file)
    out_file = tmp_path / "converted" / "siam_rcnn.pth"
    tool = REPO / "tools" / "convert_detectron2_checkpoint.py"
    argv = [f"input={d2_file}", f"output={out_file}", "model=r18_fpn", f"hydra.run.dir={tmp_path / 'run'}",
            "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", [str(tool), *argv])
    runpy.run_path(str(tool), run_name="__main__")  # as `python tools/convert_detectron2_checkpoint.py ...`
    saved = torch.load(out_file, map_location="cpu", weights_only=True)
    assert set(saved) == {"model", "config", "meta"}  # the model config makes it evaluate with no model flag
    assert saved["meta"]["num_tensors"] == len(saved["model"]) and saved["config"]["depth"] == 18
    assert saved["config"]["weights"] == {"format": "none", "path": None}
    loaded = build("r18_fpn", seed=1, weights={"format": "siamrcnn", "path": str(out_file)})
    assert_same_state(loaded.state_dict(), source.state_dict())
    # the same file loads directly as detectron2 format too
    direct = build("r18_fpn", seed=2, weights={"format": "detectron2", "path": str(d2_file)})
    assert_same_state(direct.state_dict(), source.state_dict())


def test_load_torchvision_detector_fills_backbone_and_rpn(tmp_path):
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(detector.state_dict(), path)
    model = build("r50_fpn", seed=1)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    report = load_torchvision_detector(model, path)
    assert report.missing == [] and report.unexpected == []
    assert report.ignored and all(k.startswith("roi_heads.") for k in report.ignored)
    ours, theirs = model.state_dict(), detector.state_dict()
    for prefix in ("backbone.body.", "backbone.fpn.", "rpn.head."):
        assert_same_state(ours, theirs, prefix)
    assert all(torch.equal(v, ours[k]) for k, v in head_before.items())  # head untouched


def test_load_imagenet_backbone_and_bad_files(tmp_path):
    torch.manual_seed(0)
    trunk = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(trunk.state_dict(), path)
    model = build("r18_fpn", seed=1, weights={"format": "imagenet", "path": str(path)})
    ours = model.state_dict()
    for k, v in trunk.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(ours[f"backbone.body.{k}"], v), k
    report = load_imagenet_backbone(model, path)
    assert report.missing == [] and report.ignored == ["fc.weight", "fc.bias"]
    with pytest.raises(DataError, match="resnet18.pth.*shape"):
        load_imagenet_backbone(build("r50_fpn", seed=0), path)
    with pytest.raises(DataError, match="not found"):
        load_torchvision_detector(model, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="weights.path is empty"):
        build("r18_fpn", seed=0, weights={"format": "imagenet", "path": None})
