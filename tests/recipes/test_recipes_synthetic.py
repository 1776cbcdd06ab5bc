"""tools/make_synthetic.py: the whole Ego4D-style tree, deterministic for a seed, valid for the loaders."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes.synthetic import format_summary, summarize
from nlq.data.annotations import load_nlq_annotations
from vq2d.data.annotations import load_vq_annotations

REPO = Path(__file__).resolve().parents[2]
TINY = ["+vq2d.num_train_clips=2", "+vq2d.num_val_clips=1", "+vq2d.num_test_clips=1",
        "+nlq.n_train_clips=2", "+nlq.n_val_clips=1", "+nlq.n_test_clips=1", "+nlq.n_moments_clips=2"]
ANNOTATIONS = ["vq_train.json", "vq_val.json", "vq_test_unannotated.json", "nlq_train.json", "nlq_val.json",
               "nlq_test_unannotated.json", "moments_train.json"]


def _make(out: Path, seed: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "make_synthetic.py"), f"out={out}", f"seed={seed}", *TINY]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        proc = _make(root / name, seed)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = (root / name, proc.stdout)
    return runs


def test_tree_is_complete_and_loads(two_runs):
    root, stdout = two_runs["a"]
    v2 = root / "v2"
    for name in ANNOTATIONS:
        assert (v2 / "annotations" / name).is_file(), name
    vq = load_vq_annotations(v2 / "annotations" / "vq_train.json")
    for _, clip in vq.clips():
        assert (v2 / "clips" / f"{clip.clip_uid}.mp4").stat().st_size > 0
    nlq = load_nlq_annotations(v2 / "annotations" / "nlq_val.json")
    shapes = json.loads((v2 / "nlq_features" / "synthetic" / "feature_shapes.json").read_text())
    for _, clip in nlq.clips():
        feat = torch.load(v2 / "nlq_features" / "synthetic" / f"{clip.clip_uid}.pt")
        assert feat.shape[0] == shapes[clip.clip_uid]
    assert (v2 / "narrations" / "egoclip.tsv").read_text().splitlines()[0].split("\t")[0] == "clip_idx"
    assert "vq2d   train" in stdout and "narrations" in stdout


def test_same_seed_gives_identical_annotations(two_runs):
    a, b, c = (two_runs[k][0] / "v2" / "annotations" for k in "abc")
    for name in ANNOTATIONS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "vq_train.json").read_bytes() != (c / "vq_train.json").read_bytes()
    assert (a / "nlq_train.json").read_bytes() != (c / "nlq_train.json").read_bytes()


def test_summary_counts_match_the_files(two_runs):
    root, _ = two_runs["a"]
    summary = summarize(root)
    assert summary["vq2d"]["train"]["clips"] == 2
    assert summary["vq2d"]["train"]["queries"] == len(load_vq_annotations(
        root / "v2" / "annotations" / "vq_train.json").queries())
    assert summary["nlq"]["val"]["queries"] == len(load_nlq_annotations(
        root / "v2" / "annotations" / "nlq_val.json").queries())
    assert summary["nlq"]["narrations"] > 0
    text = format_summary(summary)
    assert "test_unannotated" in text


def test_unknown_size_knob_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic.py"), f"out={tmp_path}",
                           "+vq2d.no_such_knob=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no_such_knob" in proc.stderr
