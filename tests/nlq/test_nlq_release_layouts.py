"""Files as people download them: NaQ's released NLQ + NaQ layout, per-video features sliced
by the clip's own video times (real nlq_val_v2.json), and the pooled feature store."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from episodic.errors import DataError
from episodic.io import read_json
from nlq.data.annotations import load_nlq_annotations, parse_nlq_annotations
from nlq.data.dataset import EpochSampler, NLQCollator, NLQDataset
from nlq.data.features import FeatureStore, video_slice
from nlq.data.naq import make_naq
from nlq.data.pooled_store import open_or_build_store
from nlq.data.synthetic import generate_nlq
from nlq.engine.build import build_training_data, resolve_train_config

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = dict(n_train_clips=2, n_val_clips=2, n_test_clips=1, n_moments_clips=2, clip_duration=(30.0, 40.0),
                 feature_dim=24, clip_feature_dim=12, queries_per_clip=(6, 8))
NAQ_QUERY_KEYS = ("clip_start_sec", "clip_end_sec", "video_start_sec", "video_end_sec", "query")


def released_layout(merged: dict) -> dict:
    """An NLQ + NaQ file as NaQ's merge_naq_and_nlq writes it: {"videos"} only, clips with
    video times / frames but no clip_start_sec / clip_end_sec, a split per video, narration
    queries with NAQ_QUERY_KEYS only."""
    videos = []
    for video in merged["videos"]:
        clips = []
        for clip in video["clips"]:
            annotations = []
            for ann in clip["annotations"]:
                queries = [{k: q[k] for k in NAQ_QUERY_KEYS} if q.get("template") == "NaQ" else q
                           for q in ann["language_queries"]]
                annotations.append({**ann, "language_queries": queries})
            clips.append({"clip_uid": clip["clip_uid"], "video_start_sec": clip["video_start_sec"],
                          "video_end_sec": clip["video_end_sec"], "video_start_frame": int(clip["video_start_sec"] * 30),
                          "video_end_frame": int(clip["video_end_sec"] * 30), "annotations": annotations})
        videos.append({"video_uid": video["video_uid"], "clips": clips, "split": "train"})
    return {"videos": videos}


@pytest.fixture(scope="module")
def naq_release(tmp_path_factory) -> tuple[Path, Path]:
    """(synthetic data root, NLQ + NaQ file in NaQ's released layout)."""
    root = tmp_path_factory.mktemp("naq_release")
    generate_nlq(root, seed=5, **TINY_DATA)
    merged = root / "merged.json"
    make_naq(root / "v2/narrations/egoclip.tsv", root / "v2/annotations", merged, progress=False)
    release = root / "nlq_aug_naq_train_v2.json"
    release.write_text(json.dumps(released_layout(read_json(merged))))
    return root, release


def test_released_naq_layout_loads_and_says_what_it_derived(naq_release, caplog):
    root, release = naq_release
    with caplog.at_level(logging.INFO, logger="nlq.data.annotations"):
        ann = load_nlq_annotations(release)
    clips = [c for _, c in ann.clips()]
    assert ann.version == "" and ann.derived == {"version": 1, "clip_start_sec": len(clips), "clip_end_sec": len(clips)}
    assert "clip_end_sec (= clip_start_sec + video_end_sec - video_start_sec)" in caplog.text
    for clip in clips:
        assert clip.clip_start_sec == 0.0 and clip.duration == pytest.approx(clip.video_end_sec - clip.video_start_sec)
    naq = [q for q in ann.queries() if q.query.startswith("#")]
    nlq = load_nlq_annotations(root / "v2/annotations/nlq_train.json").queries()
    assert naq and len(ann.queries()) == len(naq) + len(nlq)
    v1 = parse_nlq_annotations({**read_json(root / "v2/annotations/nlq_train.json"), "version": "1"})
    assert v1.version == "1" and not v1.derived


def test_train_tool_accepts_the_released_naq_layout(naq_release, tmp_path):
    root, release = naq_release
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tools/train_nlq.py"), "preset=tiny", "model=vslnet", "stage=joint",
           f"data.root={root}", f"naq_file={release}", "max_epochs=1", f"output_dir={out}", "num_workers=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = read_json(out / "data_report.json")
    assert report["naq_file"]["derived"]["clip_end_sec"] > 0
    assert report["naq_file"]["clips_checked_against_nlq_train"] == 2
    assert report["train"]["naq"] > 0 and Path(report["train"]["feature_store"]).is_dir()


def _train_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["preset=tiny", "num_workers=0", *overrides])
    return resolve_train_config(cfg)


def test_naq_file_disagreeing_with_nlq_train_on_clip_times_is_an_error(naq_release, tmp_path):
    root, release = naq_release
    data = read_json(release)
    nlq_clip = load_nlq_annotations(root / "v2/annotations/nlq_train.json").videos[0].clips[0]
    clip = next(c for v in data["videos"] for c in v["clips"] if c["clip_uid"] == nlq_clip.clip_uid)
    clip["video_end_sec"] += 0.5
    bad = tmp_path / "bad_naq.json"
    bad.write_text(json.dumps(data))
    cfg = _train_cfg("model=vslnet", "stage=joint", f"data.root={root}", f"naq_file={bad}", f"output_dir={tmp_path / 'o'}")
    with pytest.raises(DataError, match=f"bad_naq.json: clip {nlq_clip.clip_uid} has video_end_sec .*nlq_train.json says"):
        build_training_data(cfg)


# Clip boundaries on the real val file ------------------------------------------------------
def test_per_video_slices_use_the_clips_own_video_end(ego4d_samples, tmp_path):
    """40+ real v2 val clips have video_end_sec != video_start_sec + clip duration; the slice
    of a per-video feature file must end at the clip's own video_end_sec."""
    ann = load_nlq_annotations(ego4d_samples / "nlq_val_v2.json")
    rate = 1.875
    moved = [(v, c) for v, c in ann.clips()
             if int((c.video_start_sec + c.duration) * rate) != int(c.video_end_sec * rate)]
    assert len(moved) >= 1
    video, clip = moved[0]
    steps = int(clip.video_end_sec * rate) + 2
    folder = tmp_path / "slowfast"
    folder.mkdir()
    torch.save(torch.arange(steps, dtype=torch.float32)[:, None].repeat(1, 2), folder / f"{video.video_uid}.pt")
    store = FeatureStore(tmp_path, ["slowfast"], per="video")
    queries = [q for q in ann.queries() if q.clip_uid == clip.clip_uid]
    assert queries[0].video_bounds == (clip.video_start_sec, clip.video_end_sec)
    dataset = NLQDataset(queries, store, max_len=4096, train=False, min_window_sec=None)
    expected = video_slice(clip.video_start_sec, clip.video_end_sec, rate)
    feat = dataset[0]["video"]
    assert feat.shape[0] == expected.stop - expected.start
    assert feat[-1, 0].item() == expected.stop - 1  # the last step is the clip's own end step


# Pooled feature store -----------------------------------------------------------------------
def test_store_matches_direct_loading_and_is_keyed_by_content(naq_release, tmp_path, caplog):
    root, _ = naq_release
    features = FeatureStore(root / "v2/nlq_features", ["synthetic", "synthetic_clip"])
    queries = load_nlq_annotations(root / "v2/annotations/nlq_val.json").queries()
    direct = NLQDataset(queries, features, max_len=16, train=False)
    stored = NLQDataset(queries, features, max_len=16, train=False)
    with caplog.at_level(logging.INFO, logger="nlq.data.pooled_store"):
        store = open_or_build_store(features, stored.clip_list(), stored.store_pool_len(), tmp_path / "store")
        stored.attach_store(store)
        assert "no store yet" in caplog.text
        for i in range(len(direct)):
            a, b = direct[i], stored[i]
            assert torch.allclose(a["video"], b["video"], atol=1e-6) and a["duration"] == b["duration"]
            assert (a["start_label"], a["end_label"]) == (b["start_label"], b["end_label"])
        caplog.clear()
        again = open_or_build_store(features, stored.clip_list(), 16, tmp_path / "store")
        assert again.folder == store.folder and "reusing" in caplog.text
        clip_uid = stored.clip_list()[0][0]
        path = features.path("synthetic", clip_uid)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a changed file
        caplog.clear()
        rebuilt = open_or_build_store(features, stored.clip_list(), 16, tmp_path / "store")
        assert rebuilt.folder != store.folder and "feature files (size or modification time)" in caplog.text
        caplog.clear()
        pooled_8 = open_or_build_store(features, stored.clip_list(), 8, tmp_path / "store")
        assert pooled_8.folder != rebuilt.folder and "pool_len 16 -> 8" in caplog.text
    with pytest.raises(ValueError, match="pooled to 8 steps, dataset needs 16"):
        stored.attach_store(pooled_8)


def test_epoch_sampler_draws_do_not_depend_on_workers(naq_release, tmp_path):
    root, _ = naq_release
    features = FeatureStore(root / "v2/nlq_features", ["synthetic"])
    queries = [q for q in load_nlq_annotations(root / "v2/annotations/nlq_train.json").queries() if q.window]
    naq_like = [dataclasses.replace(q, query="#C C " + q.query) for q in queries[:6]]
    dataset = NLQDataset(naq_like, features, max_len=16, train=True, seed=7)
    dataset.attach_store(open_or_build_store(features, dataset.clip_list(), 16, tmp_path / "store"))

    def windows(num_workers: int, epoch: int) -> dict:
        sampler = EpochSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=num_workers,
                            collate_fn=NLQCollator(lambda t: {}), persistent_workers=num_workers > 0)
        return {tuple(k): tuple(w.tolist()) for b in loader for k, w in zip(b["keys"], b["gt_window"])}

    assert windows(0, 1) == windows(2, 1)
    assert windows(0, 1) != windows(0, 2)
