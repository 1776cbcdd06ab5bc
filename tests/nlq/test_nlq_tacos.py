"""TACoS in NaQ's reformatted NLQ layout (tacos_{train,val,test}.json, no version, clips with
video times only) with per-clip features: `dataset=tacos` trains on TACoS + NaQ-style
narrations and a checkpoint evaluates on tacos_test.json (R@k at IoU 0.3 / 0.5)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from episodic.errors import DataError
from episodic.io import read_json
from nlq.data.naq import make_naq
from nlq.data.synthetic import generate_nlq
from nlq.engine.build import resolve_train_config
from nlq.engine.inference import evaluate_checkpoint
from nlq.engine.trainer import train

from .test_nlq_release_layouts import TINY_DATA, released_layout

REPO = Path(__file__).resolve().parents[2]


def _tacos_names(data: dict, names: dict[str, str]) -> dict:
    """Rename clips to TACoS-style video names (s13-d21, ...)."""
    for video in data["videos"]:
        for clip in video["clips"]:
            clip["clip_uid"] = names.setdefault(clip["clip_uid"], f"s{13 + len(names)}-d{21 + len(names)}.avi")
    return data


@pytest.fixture(scope="module")
def tacos_root(tmp_path_factory) -> Path:
    """A small TACoS-format sample: DATA/tacos/tacos_{train,val,test}.json + tacos_aug_naq_train.json,
    DATA/tacos_features/slowfast/<clip>.pt (per clip)."""
    synth = tmp_path_factory.mktemp("tacos_synth")
    generate_nlq(synth, seed=11, **TINY_DATA)
    root = tmp_path_factory.mktemp("tacos")
    (root / "tacos").mkdir()
    names: dict[str, str] = {}
    for split, source in (("train", "nlq_train.json"), ("val", "nlq_val.json"), ("test", "nlq_val.json")):
        data = _tacos_names(released_layout(read_json(synth / "v2/annotations" / source)), names)
        (root / "tacos" / f"tacos_{split}.json").write_text(json.dumps(data))
    make_naq(synth / "v2/narrations/egoclip.tsv", synth / "v2/annotations", synth / "merged.json", progress=False)
    merged = _tacos_names(released_layout(read_json(synth / "merged.json")), names)
    (root / "tacos" / "tacos_aug_naq_train.json").write_text(json.dumps(merged))
    features = root / "tacos_features" / "slowfast"
    features.mkdir(parents=True)
    shapes = read_json(synth / "v2/nlq_features/synthetic/feature_shapes.json")
    for clip_uid in shapes:
        shutil.copy(synth / "v2/nlq_features/synthetic" / f"{clip_uid}.pt", features / f"{names.get(clip_uid, clip_uid)}.pt")
    return root


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        return compose(config_name="train", overrides=["preset=tiny", "num_workers=0", "dataset=tacos", *overrides])


def test_tacos_config_points_at_the_tacos_files(tacos_root):
    cfg = resolve_train_config(_cfg("model=reler", f"data.root={tacos_root}"))
    assert (cfg.data.annotations_dir, cfg.data.train_file, cfg.data.val_file) == ("tacos", "tacos_train.json", "tacos_val.json")
    assert list(cfg.data.features.names) == ["slowfast", "clip"] and cfg.narrations is None
    assert cfg.naq_file == f"{tacos_root}/tacos/tacos_aug_naq_train.json"


def test_tacos_with_naq_trains_and_a_checkpoint_evaluates_on_test(tacos_root, tmp_path):
    out = tmp_path / "joint"
    summary = train(_cfg("model=vslnet", "stage=joint", f"data.root={tacos_root}", f"output_dir={out}", "max_epochs=1"))
    assert summary["epochs"] == 1
    report = read_json(out / "data_report.json")
    assert report["train"]["naq"] > 0 and report["naq_file"]["clips_checked_against_nlq_train"] > 0
    metrics = evaluate_checkpoint(out / "model_best.pth", tacos_root, "test", tmp_path / "eval",
                                  annotations=tacos_root / "tacos" / "tacos_test.json")
    assert {"R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5"} <= set(metrics)
    assert 0.0 <= metrics["R@1_IoU0.5"] <= metrics["R@5_IoU0.5"] <= 100.0
    (tacos_root / "tacos" / "tacos_aug_naq_train.json").rename(tacos_root / "tacos" / "hidden.json")
    try:
        with pytest.raises(DataError, match="tacos_aug_naq_train.json.*no narrations to build it from"):
            train(_cfg("model=vslnet", "stage=joint", f"data.root={tacos_root}", f"output_dir={tmp_path / 'x'}"))
    finally:
        (tacos_root / "tacos" / "hidden.json").rename(tacos_root / "tacos" / "tacos_aug_naq_train.json")
