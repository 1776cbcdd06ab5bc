"""VQ2D inference pipeline on a tiny generated split with a random-init tiny R18 model:
batched vs per-query detection pass, shard + merge, resume, failures scored empty, and the
checkpoint mode of tools/eval_vq2d.py end to end."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vq2d.data.annotations import load_vq_annotations
from episodic.errors import DataError
from vq2d.data.synthetic import generate_vq2d
from vq2d.engine.build import final_state
from vq2d.evaluation.scoring import score_predictions_file
from vq2d.evaluation.validate import validate_submission_file
from vq2d.inference.checkpoint_io import load_detector
from vq2d.inference.detection_pass import DetectionPass
from vq2d.inference.evaluate import resolve_settings
from vq2d.inference.frame_source import ClipFrames, original_size_of
from vq2d.inference.pool import (CLIPS_DIR, DETECTIONS_DIR, clip_cost, collect_outcomes, queries_by_clip,
                                 run_pool, run_shard, shard_clips)
from vq2d.inference.report import write_reports
from vq2d.modeling.build import build_model

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"depth": 18, "fpn_channels": 16, "min_size": [64], "max_size": 96, "crop_size": 32,
              "rpn": {"pre_nms_top_n_test": 40, "post_nms_top_n_test": 16},
              "head": {"hidden_size": 32, "num_residual_blocks": 1, "pooler_resolution": 7}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic split (3 val clips, 2 test clips of 96x64 frames) and a random-init
    tiny model saved in the trainer's model_final.pth format."""
    root = tmp_path_factory.mktemp("vq2d_infer")
    generate_vq2d(root / "data", seed=3, preset="small", num_train_clips=1, num_val_clips=3, num_test_clips=2,
                  frame_size=(96, 64), frames_per_clip=(30, 40), invalid_prob=0.0)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    torch.save(final_state(model, TINY_MODEL, iteration=0), root / "model_final.pth")  # what the trainer writes
    return root


def _settings(fixture_dir, out, **overrides):
    cfg = OmegaConf.load(REPO / "configs/vq2d/eval.yaml")
    for key in ("defaults", "hydra"):
        cfg.pop(key)
    cfg.launcher = OmegaConf.load(REPO / "configs/vq2d/launcher/local.yaml")
    cfg.launcher.name = "test"
    base = {"checkpoint": str(fixture_dir / "model_final.pth"), "data": {"root": str(fixture_dir / "data")},
            "output_dir": str(out), "threads_per_worker": 1, "device": "cpu",
            "detection": {"frame_height": None}, "plots": {"num_curves": 1, "num_false_positives": 4}}
    cfg = OmegaConf.merge(cfg, base, overrides)
    return resolve_settings(cfg)


def _mtimes(out):
    return {p.name: p.stat().st_mtime_ns for sub in (CLIPS_DIR, DETECTIONS_DIR) for p in (out / sub).iterdir()}


def test_load_detector_reads_trainer_checkpoints_and_bare_state_dicts(data, tmp_path):
    model = load_detector(data / "model_final.pth", "cpu")
    assert not model.training and model.crop_size == TINY_MODEL["crop_size"]
    state = model.state_dict()
    torch.save({"model": state}, tmp_path / "bare.pth")
    with pytest.raises(DataError, match="no model config"):
        load_detector(tmp_path / "bare.pth")
    again = load_detector(tmp_path / "bare.pth", model_config=TINY_MODEL)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    torch.save({"model": state, "config": {"model": {**TINY_MODEL, "head": {"hidden_size": 64}}}}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="do not fit"):
        load_detector(tmp_path / "bad.pth")


class CountingFrames(ClipFrames):
    """ClipFrames counting every frame it hands out."""

    served: list

    def iter_frames(self, indices):
        for item in super().iter_frames(indices):
            self.served.append(item[0])
            yield item


def test_batched_and_per_query_passes_give_the_same_detections(data):
    annotations = load_vq_annotations(data / "data/v2/annotations/vq_val.json")
    clip_uid, queries = max(queries_by_clip(annotations.queries()).items(), key=lambda kv: len(kv[1]))
    assert len(queries) >= 2
    model = load_detector(data / "model_final.pth", "cpu")
    results, served = {}, {}
    for mode in ("batched", "per_query"):
        frames = CountingFrames(clip_uid, data / f"data/v2/clips/{clip_uid}.mp4",
                                original_size=original_size_of(queries))
        frames.served = []
        with frames:
            results[mode], errors = DetectionPass(model=model, mode=mode, frames_per_batch=4).run(frames, queries)
        assert errors == {}
        served[mode] = frames.served
    # batched: every needed frame decoded once (the crop frames, then the search window)
    needed = set(range(max(q.query_frame for q in queries))) | {q.visual_crop.frame_number for q in queries}
    assert sorted(served["batched"]) == sorted(needed)
    assert len(served["per_query"]) > len(served["batched"])
    for q in queries:
        a, b = results["batched"][q.name], results["per_query"][q.name]
        assert a.num_frames == q.query_frame and a.counts.min() > 0
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        assert (a.boxes[..., 2] <= 96.01).all() and (a.boxes[..., 3] <= 64.01).all()  # original pixels


def test_shard_merge_equals_single_run_and_resume_recomputes_nothing(data, tmp_path):
    single = _settings(data, tmp_path / "single")
    annotations = load_vq_annotations(single["annotations"])
    queries = annotations.queries()
    summaries = run_pool(single, annotations)
    assert sum(s["clips_done"] for s in summaries) == 3
    one = collect_outcomes(single["output_dir"], queries, single)
    # the same clips in two shards run one after the other, merged from their clip files
    sharded = _settings(data, tmp_path / "sharded", workers=2)
    costs = {c: clip_cost(qs) for c, qs in queries_by_clip(queries).items()}
    shards = shard_clips(costs, 2)
    assert len(shards) == 2 and sorted(sum(shards, [])) == sorted(costs)
    for i, clips in enumerate(shards):
        run_shard({"shard": i, "clip_uids": clips, "settings": sharded, "in_process": True})
    two = collect_outcomes(sharded["output_dir"], queries, sharded)

    def answers(outcomes):  # everything but the timings
        return {k: {f: x for f, x in v.to_dict().items() if f != "timings"} for k, v in outcomes.items()}
    assert answers(one) == answers(two)
    assert all(set(o.timings) == {"read", "detection", "peaks", "tracking"} for o in one.values())
    assert sum(o.timings["detection"] for o in one.values()) > 0
    assert all(o.error is None and o.track for o in one.values())
    # resume: nothing is recomputed or rewritten
    out = Path(single["output_dir"])
    before = _mtimes(out)
    assert run_pool(single, annotations) == []
    assert _mtimes(out) == before
    # after a "kill" that lost one clip's results, only that clip is redone, from cached detections
    lost = shards[0][0]
    (out / CLIPS_DIR / f"{lost}.json").unlink()
    summaries = run_pool(single, annotations)
    assert [(s["clips_done"], s["clips_skipped"]) for s in summaries] == [(1, 0)]
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != f"{lost}.json"} == \
        {k: v for k, v in before.items() if k != f"{lost}.json"}
    # other peak settings: answers redone, detections reused
    retuned = _settings(data, tmp_path / "single", peaks={"prominence": 0.01})
    assert sum(s["clips_done"] for s in run_pool(retuned, annotations)) == 3
    assert {k: v for k, v in _mtimes(out).items() if k.endswith(".npz")} == \
        {k: v for k, v in before.items() if k.endswith(".npz")}


def test_broken_clip_and_bad_query_are_scored_empty_while_others_succeed(data, tmp_path):
    root = tmp_path / "data"
    (root / "v2/annotations").mkdir(parents=True)
    shutil.copytree(data / "data/v2/clips", root / "v2/clips")
    ann = json.loads((data / "data/v2/annotations/vq_val.json").read_text())
    clips = [c for v in ann["videos"] for c in v["clips"]]
    (root / f"v2/clips/{clips[0]['clip_uid']}.mp4").write_bytes(b"not an mp4 at all")
    bad_qs = clips[1]["annotations"][0]["query_sets"]["1"]
    bad_qs["query_frame"] = 999  # past the end of the clip
    gap_qs = clips[2]["annotations"][0]["query_sets"]["1"]  # a GT track with a gap: the official code raises
    gap_qs["response_track"] = gap_qs["response_track"][:1] + gap_qs["response_track"][2:]
    gap_name = f"{clips[2]['clip_uid']}_0_1"
    (root / "v2/annotations/vq_val.json").write_text(json.dumps(ann))
    settings = _settings(data, tmp_path / "out", data={"root": str(root)})
    annotations = load_vq_annotations(settings["annotations"], strict=False)
    assert len(annotations.problems) == 1  # the loader skips the gap query: never answered
    run_pool(settings, annotations)
    outcomes = collect_outcomes(settings["output_dir"], annotations.queries(), settings)
    metrics = write_reports(settings, annotations, outcomes)
    rows = {r["name"]: r for r in json.loads((tmp_path / "out/per_query.json").read_text())}
    broken = [r for r in rows.values() if r["clip_uid"] == clips[0]["clip_uid"]]
    assert broken and all("unreadable video" in r["error"] and r["track_length"] == 0 for r in broken)
    assert "past the end" in rows[f"{clips[1]['clip_uid']}_0_1"]["error"]
    ok = [r for r in rows.values() if r["error"] is None]
    assert len(ok) == len(rows) - len(broken) - 1 and ok and all(r["track_length"] >= 1 for r in ok)
    # the same GT rules as scoring mode: the gap query is dropped from the count, by name
    assert gap_name not in rows and metrics["num_queries"] == len(rows)
    assert metrics["num_dropped"] == 1 and "not contiguous" in metrics["dropped_queries"][gap_name]
    assert metrics["num_skipped"] == 1 and "non-contiguous" in metrics["skipped_queries"][gap_name]
    rescored = score_predictions_file(settings["annotations"], tmp_path / "out/predictions.json", tmp_path)
    assert {k: rescored[k] for k in ("stAP", "tAP", "success", "recovery", "num_queries", "dropped_queries")} == \
        {k: metrics[k] for k in ("stAP", "tAP", "success", "recovery", "num_queries", "dropped_queries")}
    preds = json.loads((tmp_path / "out/predictions.json").read_text())
    empty = [qs for v in preds["results"]["videos"] for c in v["clips"] if c["clip_uid"] == clips[0]["clip_uid"]
             for a in c["predictions"] for qs in a["query_sets"].values()]
    assert empty and all(qs == {"bboxes": [], "score": 0.0} for qs in empty)
    # failed clips are retried on the next run; the others are not redone
    summaries = run_pool(settings, annotations)
    assert sum(s["clips_done"] for s in summaries) == 2 and sum(s["clips_skipped"] for s in summaries) == 0


def _eval_tool(*args):
    proc = subprocess.run([sys.executable, "tools/eval_vq2d.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_eval_tool_checkpoint_mode_end_to_end(data, tmp_path):
    common = [f"checkpoint={data / 'model_final.pth'}", f"data.root={data / 'data'}", "device=cpu",
              "threads_per_worker=1", "detection.frame_height=null", "plots.num_curves=2"]
    out = tmp_path / "val"
    proc = _eval_tool(*common, "split=val", f"output_dir={out}", "workers=2")
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {"stAP@0.25", "tAP@0.25", "success", "recovery", "search_efficiency"} <= set(metrics)
    assert metrics["num_queries"] == len(load_vq_annotations(data / "data/v2/annotations/vq_val.json").queries())
    assert metrics["search_efficiency"] == 0.0  # every frame before the query frame was searched
    assert (out / "predictions.json").is_file() and (out / "per_query.csv").is_file()
    assert len(list((out / "plots/curves").glob("*.png"))) == 2 and (out / "plots/false_positives.png").is_file()
    gifs = sorted(p.name for p in (out / "plots/tracks").glob("*.gif"))
    assert [g.split("_")[0] for g in gifs] == ["best"] * 3 + ["worst"] * 3, gifs
    assert set(metrics["timings_s"]) == {"read", "detection", "peaks", "tracking"} and metrics["timings_s"]["detection"] > 0
    header = (out / "per_query.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["read_s", "detection_s", "peaks_s", "tracking_s"]
    rows = json.loads((out / "per_query.json").read_text())
    assert len(rows) == metrics["num_queries"] and all(r["error"] is None and "stiou" in r for r in rows)
    assert len(list((out / "submitit").rglob("*_result.pkl"))) == 2  # two shards ran
    test_out = tmp_path / "test"
    proc = _eval_tool(*common, "split=test_unannotated", f"output_dir={test_out}", "workers=1")  # in-process
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    problems, num = validate_submission_file(data / "data/v2/annotations/vq_test_unannotated.json",
                                             test_out / "submission.json")
    assert problems == [] and num == summary["num_queries"] > 0
    assert not (test_out / "predictions.json").exists()


def _changed_annotations(src, dst):
    """A copy of ``src`` with the first query's visual crop moved and its query frame
    brought forward (still after its response track); returns that query's name."""
    ann = json.loads(Path(src).read_text())
    clip = ann["videos"][0]["clips"][0]
    qs = clip["annotations"][0]["query_sets"]["1"]
    crop = qs["visual_crop"]
    crop["x"] = max(0.0, min(crop["x"] + 9.0, crop["original_width"] - crop["width"] - 1))
    crop["y"] = max(0.0, crop["y"] - 7.0)
    last = max(b["frame_number"] for b in qs["response_track"])
    assert qs["query_frame"] > last + 2
    qs["query_frame"] = last + 2
    Path(dst).write_text(json.dumps(ann))
    return f"{clip['clip_uid']}_0_1"


def _evaluate(settings):
    annotations = load_vq_annotations(settings["annotations"])
    summaries = run_pool(settings, annotations)
    metrics = write_reports(settings, annotations, collect_outcomes(settings["output_dir"], annotations.queries(),
                                                                    settings))
    rows = json.loads((Path(settings["output_dir"]) / "per_query.json").read_text())
    return summaries, metrics, rows


def test_rerun_with_changed_annotations_equals_a_fresh_folder_and_says_why(data, tmp_path, caplog):
    a1 = data / "data/v2/annotations/vq_val.json"
    a2 = tmp_path / "vq_val_changed.json"
    changed = _changed_annotations(a1, a2)
    out = tmp_path / "out"
    _evaluate(_settings(data, out, annotations=str(a1)))
    with caplog.at_level("INFO"):
        summaries, metrics, rows = _evaluate(_settings(data, out, annotations=str(a2)))
    _, fresh_metrics, fresh_rows = _evaluate(_settings(data, tmp_path / "fresh", annotations=str(a2)))
    def scores(m):  # everything but the wall-clock timings
        return {k: v for k, v in m.items() if k != "timings_s"}
    assert scores(metrics) == scores(fresh_metrics)
    # the same answers (scores up to float noise: the detection head ran on other query batches)
    timing = {"timings", "read_s", "detection_s", "peaks_s", "tracking_s"}  # wall-clock seconds differ
    assert [{k: pytest.approx(v, rel=1e-5) if isinstance(v, float) else v for k, v in r.items() if k not in timing}
            for r in rows] == [{k: v for k, v in r.items() if k not in timing} for r in fresh_rows]
    assert sum(s["clips_done"] for s in summaries) == 1  # only the changed query's clip was redone
    clip_uid = changed.rsplit("_", 2)[0]
    messages = [r.getMessage() for r in caplog.records]
    assert f"clip {clip_uid}: query 0_1's query frame changed; recomputing" in messages
    assert f"clip {clip_uid}: query 0_1's visual crop changed; recomputing" in messages
    assert any(m.startswith(f"{changed}.npz: cached detections made with other inputs") and "visual crop" in m
               for m in messages)
    # new frames in a clip file: that clip is redone, and says so
    other = next(r["clip_uid"] for r in rows if r["clip_uid"] != clip_uid)
    mp4 = data / "data/v2/clips" / f"{other}.mp4"
    st = mp4.stat()
    os.utime(mp4, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    with caplog.at_level("INFO"):
        summaries, again, _ = _evaluate(_settings(data, out, annotations=str(a2)))
    os.utime(mp4, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sum(s["clips_done"] for s in summaries) == 1 and scores(again) == scores(metrics)
    assert f"clip {other}: the clip file changed; recomputing" in [r.getMessage() for r in caplog.records]


def test_checkpoint_identity_follows_the_weights_not_the_file_name(data, tmp_path):
    from vq2d.inference.checkpoint_io import checkpoint_identity

    original = data / "model_final.pth"
    copy = tmp_path / "renamed.pth"
    shutil.copyfile(original, copy)
    assert checkpoint_identity(copy) == checkpoint_identity(original)
    state = torch.load(original, weights_only=False)
    next(iter(state["model"].values())).add_(1.0)
    torch.save(state, copy)
    assert checkpoint_identity(copy) != checkpoint_identity(original)


def test_failed_queries_are_counted_in_metrics_and_the_exit_status(data, tmp_path, capsys):
    from episodic.cli import run_one_mode

    root = tmp_path / "data"
    (root / "v2/annotations").mkdir(parents=True)
    shutil.copytree(data / "data/v2/clips", root / "v2/clips")
    ann = json.loads((data / "data/v2/annotations/vq_val.json").read_text())
    broken = ann["videos"][0]["clips"][0]["clip_uid"]
    (root / f"v2/clips/{broken}.mp4").write_bytes(b"not an mp4")
    (root / "v2/annotations/vq_val.json").write_text(json.dumps(ann))
    settings = _settings(data, tmp_path / "out", data={"root": str(root)})
    _, metrics, rows = _evaluate(settings)
    failed = sorted(r["name"] for r in rows if r["error"])
    assert failed and metrics["num_failed"] == len(failed)
    assert sorted(f["id"] for f in metrics["failed"]) == failed
    assert all("unreadable video" in f["reason"] and "\n" not in f["reason"] for f in metrics["failed"])
    assert json.loads((tmp_path / "out/metrics.json").read_text())["num_failed"] == len(failed)
    # the tool's ending: summary lines name them, the JSON line carries them, exit status 3
    cfg = OmegaConf.create({"predictions": None, "checkpoint": "C", "allow_failures": False})
    with pytest.raises(SystemExit) as e:
        run_one_mode(cfg, {"predictions": None, "checkpoint": lambda c: metrics}, lambda m: [f"{k}" for k in m])
    assert e.value.code == 3
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["num_failed"] == len(failed)
    assert f"FAILED: {len(failed)} queries" in lines and f"  {failed[0]}: " in "\n".join(lines)
    cfg.allow_failures = True
    assert run_one_mode(cfg, {"predictions": None, "checkpoint": lambda c: metrics}, lambda m: [])["num_failed"]
