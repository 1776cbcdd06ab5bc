"""Pretrained-weight loading and the detectron2 checkpoint converter (random-init models only):
torchvision and ImageNet files, a detectron2 model-zoo .pkl initialising backbone + RPN (built
with the real key names and shapes), the max_iter=0 dry run, a torchvision variant and files
of neither format rejected with the file named."""
from __future__ import annotations

import functools
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from episodic.errors import DataError
from vq2d.engine.build import final_state
from vq2d.engine.dry_run import dry_run
from vq2d.inference.checkpoint_io import load_detector
from vq2d.modeling.build import build_model, load_weights
from vq2d.modeling.weights import (
    convert_detectron2_state_dict,
    export_detectron2_state_dict,
    load_detectron2_init,
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


# the COCO Mask R-CNN R50-FPN heads of detectron2's model_final_f10217.pkl (80 classes)
COCO_HEADS = {
    "roi_heads.box_head.fc1.weight": (1024, 12544), "roi_heads.box_head.fc1.bias": (1024,),
    "roi_heads.box_head.fc2.weight": (1024, 1024), "roi_heads.box_head.fc2.bias": (1024,),
    "roi_heads.box_predictor.cls_score.weight": (81, 1024), "roi_heads.box_predictor.cls_score.bias": (81,),
    "roi_heads.box_predictor.bbox_pred.weight": (320, 1024), "roi_heads.box_predictor.bbox_pred.bias": (320,),
    **{f"roi_heads.mask_head.mask_fcn{i}.{p}": (256, 256, 3, 3) if p == "weight" else (256,)
       for i in range(1, 5) for p in ("weight", "bias")},
    "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2), "roi_heads.mask_head.deconv.bias": (256,),
    "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1), "roi_heads.mask_head.predictor.bias": (80,),
}


@pytest.fixture(scope="module")
def model_zoo_pkl(tmp_path_factory):
    """A detectron2 model-zoo file as the model zoo ships it: a pickle of numpy arrays under
    "model", with the detector's box and mask heads; its backbone + RPN from a random model."""
    source = build("r50_fpn_detectron2", seed=0)
    trunk = {k: v for k, v in source.state_dict().items() if k.startswith(("backbone.", "rpn."))}
    d2 = {k: v.numpy() for k, v in export_detectron2_state_dict(trunk).items()}
    rng = np.random.default_rng(0)
    heads = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in COCO_HEADS.items()}
    path = tmp_path_factory.mktemp("zoo") / "model_final_f10217.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {**d2, **heads}, "__author__": "Detectron2 Model Zoo"}, f)
    return path, trunk


def test_model_zoo_pickle_names_and_shapes_are_detectron2s(model_zoo_pkl):
    path, _ = model_zoo_pkl
    with open(path, "rb") as f:
        sd = pickle.load(f)["model"]
    expected = {
        "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.bottom_up.res2.0.conv1.weight": (64, 64, 1, 1),
        "backbone.bottom_up.res2.0.conv1.norm.running_mean": (64,),
        "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
        "backbone.bottom_up.res4.5.conv3.weight": (1024, 256, 1, 1),
        "backbone.fpn_lateral2.weight": (256, 256, 1, 1),
        "backbone.fpn_output5.weight": (256, 256, 3, 3),
        "proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
        "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
    }
    for name, shape in expected.items():
        assert isinstance(sd[name], np.ndarray) and sd[name].shape == shape, name


def test_model_zoo_pickle_initialises_backbone_and_rpn(model_zoo_pkl):
    path, trunk = model_zoo_pkl
    model = build("r50_fpn_detectron2", seed=1)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    report = load_weights(model, "detectron2", str(path))
    assert len(report.loaded) == len(trunk) and report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == sorted(COCO_HEADS)  # box and mask heads skipped by name
    ours = model.state_dict()
    for k, v in trunk.items():
        assert torch.equal(ours[k], v), k
    assert all(torch.equal(v, ours[k]) for k, v in head_before.items())  # the siamese head keeps its init


def test_model_zoo_pickle_with_other_names_or_gaps_is_an_error(model_zoo_pkl, tmp_path):
    path, _ = model_zoo_pkl
    with open(path, "rb") as f:
        zoo = pickle.load(f)

    def write(sd, name):
        p = tmp_path / name
        with open(p, "wb") as f:
            pickle.dump({"model": sd, "__author__": "Detectron2 Model Zoo"}, f)
        return p

    odd = write({**zoo["model"], "sem_seg_head.predictor.weight": np.zeros(3, np.float32)}, "panoptic.pkl")
    model = build("r50_fpn_detectron2", seed=1)
    with pytest.raises(DataError, match=r"panoptic\.pkl: unexpected key 'sem_seg_head\.predictor\.weight'"):
        load_detectron2_init(model, odd)
    gap = write({k: v for k, v in zoo["model"].items() if not k.startswith("backbone.fpn_output")}, "gap.pkl")
    with pytest.raises(DataError, match=r"gap\.pkl: not a detectron2 ResNet-FPN.*absent"):
        load_detectron2_init(model, gap)
    with pytest.raises(DataError, match=r"model_final_f10217\.pkl: not a detectron2 ResNet-FPN detector of this depth"):
        load_detectron2_init(build("r18_fpn", seed=0), path)


def test_dry_run_loads_the_init_weights_and_writes_the_config(model_zoo_pkl, tmp_path):
    path, trunk = model_zoo_pkl
    out = tmp_path / "O"
    proc = subprocess.run([sys.executable, "tools/train_vq2d.py", "preset=improved", "model.weights.format=detectron2",
                           f"model.weights.path={path}", "max_iter=0", f"output_dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"loaded {len(trunk)} tensors, skipped {len(COCO_HEADS)} by name" in proc.stdout
    assert "roi_heads.box_head" in proc.stdout and "roi_heads.mask_head" in proc.stdout
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.max_iter == 0 and saved.model.weights.path == str(path) and saved.batch_size == 64
    assert not list(out.glob("model_*.pth"))  # nothing trained
    with initialize_config_dir(config_dir=str(REPO / "configs" / "vq2d"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["preset=improved", f"model.weights.path={tmp_path / 'nope.pkl'}",
                                                      "max_iter=0", f"output_dir={tmp_path / 'bad'}"])
    with pytest.raises(DataError, match=r"nope\.pkl: weight file not found"):  # the tool prints it, exit 1
        dry_run(cfg)


def test_torchvision_v2_detector_is_rejected_not_half_loaded(tmp_path):
    torch.manual_seed(0)
    v2 = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    path = tmp_path / "fasterrcnn_resnet50_fpn_v2.pth"
    torch.save(v2.state_dict(), path)
    model = build("r50_fpn", seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match=r"fasterrcnn_resnet50_fpn_v2\.pth: not a torchvision fasterrcnn_resnet50_fpn "
                                        r"\(v1\).*fasterrcnn_resnet50_fpn_v2\?"):
        load_torchvision_detector(model, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing was loaded


def test_files_of_neither_format_and_checkpoints_of_other_models(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x00not a pickle at all" * 10)
    model = build("r18_fpn", seed=0)
    with pytest.raises(DataError, match=r"junk\.pkl: neither a torch checkpoint \(\.pth\) nor a detectron2 pickle"):
        load_weights(model, "detectron2", str(junk))
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r"list\.pkl: neither a torch checkpoint.*pickle: holds a list"):
        load_weights(model, "siamrcnn", str(listed))
    saved_list = tmp_path / "list.pth"
    torch.save([1, 2, 3], saved_list)
    with pytest.raises(DataError, match=r"list\.pth: no state dict found.*got list"):
        load_weights(model, "siamrcnn", str(saved_list))
    other = tmp_path / "nlq_vslnet.pth"  # a checkpoint of another model, with its config
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}, "config": model_config("r18_fpn")}, other)
    with pytest.raises(DataError, match=r"nlq_vslnet\.pth: not a VQ2D SiamRCNN checkpoint"):
        load_detector(other)
    r50 = build("r50_fpn", seed=0)
    wrong = tmp_path / "r50_as_r18.pth"  # our names, another architecture than its stored config
    torch.save({"model": r50.state_dict(), "config": model_config("r18_fpn")}, wrong)
    with pytest.raises(DataError, match=r"r50_as_r18\.pth: weights do not fit the model"):
        load_detector(wrong)
    ok = tmp_path / "ok.pth"
    torch.save(final_state(model, model_config("r18_fpn"), iteration=0), ok)
    assert isinstance(load_detector(ok), type(model))
