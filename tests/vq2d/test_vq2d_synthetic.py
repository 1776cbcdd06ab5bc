"""The synthetic VQ2D generator: Ego4D format, determinism, box invariants, decodable clips,
and boxes that really surround the rendered objects."""
from __future__ import annotations

import json
import re
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vq2d.data.synthetic import PRESETS, generate_vq2d
from vq2d.data.synthetic.camera import CameraPath, order_visits
from vq2d.data.synthetic.generate import make_clip, resolve_settings
from vq2d.data.synthetic.render import motion_blur, render_frame, render_labels
from vq2d.data.synthetic.sightings import MIN_TRACK_FRAMES, Visibility, choose_query, runs

TINY = dict(num_train_clips=2, num_val_clips=2, num_test_clips=1, frame_size=(160, 120),
            frames_per_clip=(42, 56), invalid_prob=0.25)
SEED = 3
FILES = {"train": "vq_train.json", "val": "vq_val.json", "test": "vq_test_unannotated.json"}
UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("vq2d_synth")
    summary = generate_vq2d(root, seed=SEED, **TINY)
    return root, summary


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "v2" / "annotations" / FILES[split]).read_text(encoding="utf-8"))


def _clips(data: dict):
    for video in data["videos"]:
        for clip in video["clips"]:
            yield video, clip


def _valid_query_sets(data: dict):
    for _, clip in _clips(data):
        for ai, ann in enumerate(clip["annotations"]):
            for key, qs in ann["query_sets"].items():
                if qs["is_valid"]:
                    yield clip, ai, key, qs


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _xyxy(box: dict) -> tuple[float, float, float, float]:
    return box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]


def test_determinism_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root, summary = dataset
    again = generate_vq2d(tmp_path / "again", seed=SEED, **TINY)
    other = generate_vq2d(tmp_path / "other", seed=SEED + 1, **TINY)
    assert again == summary
    for name in FILES.values():
        first = (root / "v2" / "annotations" / name).read_bytes()
        assert (tmp_path / "again" / "v2" / "annotations" / name).read_bytes() == first
        assert (tmp_path / "other" / "v2" / "annotations" / name).read_bytes() != first
    uids = {c["clip_uid"] for _, c in _clips(_load(root, "val"))}
    assert not uids & {c["clip_uid"] for _, c in _clips(_load(tmp_path / "other", "val"))}


def test_format_matches_real_ego4d_files(dataset, ego4d_samples):
    root, summary = dataset
    real_val = json.loads((ego4d_samples / "vq_val_sample_v1.json").read_text())
    real_test = json.loads((ego4d_samples / "vq_test_unannotated_sample_v1.json").read_text())
    real_clip = next(_clips(real_val))[1]
    real_qs = next(_valid_query_sets(real_val))[3]
    real_test_qs = next(_valid_query_sets(real_test))[3]
    real_invalid = next(qs for _, c in _clips(real_test) for a in c["annotations"]
                        for qs in a["query_sets"].values() if not qs["is_valid"])
    seen_invalid = 0
    for split in FILES:
        data = _load(root, split)
        assert list(data) == ["version", "date", "description", "manifest", "videos"]
        assert data["version"] == "2"
        assert summary[split]["clips"] == len(data["videos"]) == TINY[f"num_{split}_clips"]
        assert summary[split]["queries"] == sum(1 for _ in _valid_query_sets(data))
        for video, clip in _clips(data):
            assert video["split"] == split and UID.match(video["video_uid"])
            assert set(clip) == set(real_clip) and UID.match(clip["clip_uid"])
            assert clip["clip_fps"] == 5.0 and clip["annotations"]
            assert clip["video_end_frame"] - clip["video_start_frame"] == clip["clip_end_frame"]
            for ann in clip["annotations"]:
                assert list(ann) == ["query_sets", "warnings", "annotation_uid"] and UID.match(ann["annotation_uid"])
                assert 1 <= len(ann["query_sets"]) <= 3 and set(ann["query_sets"]) <= {"1", "2", "3"}
                for qs in ann["query_sets"].values():
                    if not qs["is_valid"]:
                        seen_invalid += 1
                        assert set(qs) == set(real_invalid) and qs["errors"]
                    elif split == "test":
                        assert set(qs) == set(real_test_qs)
                    else:
                        assert set(qs) == set(real_qs) and qs["object_title"]
                        assert all(set(b) == set(real_qs["visual_crop"]) for b in qs["response_track"])
                    if qs["is_valid"]:
                        assert set(qs["visual_crop"]) == set(real_qs["visual_crop"])
    assert seen_invalid > 0


def test_files_pass_the_strict_annotation_loader(dataset):
    from vq2d.data.annotations import load_vq_annotations

    root, summary = dataset
    for split, name in FILES.items():
        ann = load_vq_annotations(root / "v2" / "annotations" / name, strict=True)
        assert ann.version == "2" and not ann.problems
        queries = ann.queries()
        assert len(queries) == summary[split]["queries"]
        assert all(q.annotation_uid for q in queries)
        assert all((q.response_track is None) == (split == "test") for q in queries)


def test_box_and_frame_invariants(dataset):
    root, _ = dataset
    width, height = TINY["frame_size"]
    count = 0
    for split in FILES:
        for clip, _, _, qs in _valid_query_sets(_load(root, split)):
            count += 1
            num_frames = clip["clip_end_frame"] // 6
            start = clip["video_start_frame"]
            assert 0 <= qs["query_frame"] < num_frames
            assert qs["query_video_frame"] == start + 6 * qs["query_frame"]
            boxes = [qs["visual_crop"]] + qs.get("response_track", [])
            for box in boxes:
                assert box["width"] > 0 and box["height"] > 0 and box["rotation"] == 0
                assert (box["original_width"], box["original_height"]) == (width, height)
                assert box["video_frame_number"] == start + 6 * box["frame_number"]
                assert 0 <= box["frame_number"] < num_frames
                for v in (box["x"], box["y"], box["width"], box["height"]):
                    assert isinstance(v, float) and round(v, 2) == v
            crop = _xyxy(qs["visual_crop"])
            assert 0 <= crop[0] < crop[2] <= width and 0 <= crop[1] < crop[3] <= height
            if split != "test":
                frames = [b["frame_number"] for b in qs["response_track"]]
                assert frames and frames == list(range(frames[0], frames[0] + len(frames)))
                assert frames[-1] < qs["query_frame"]
                assert not frames[0] <= qs["visual_crop"]["frame_number"] <= frames[-1]
                for box in qs["response_track"]:  # at most a pixel or two outside the frame
                    x1, y1, x2, y2 = _xyxy(box)
                    assert -3 < x1 < x2 < width + 3 and -3 < y1 < y2 < height + 3
    assert count >= 5


def test_clips_decode_to_announced_frames_and_size(dataset):
    root, summary = dataset
    total = 0
    for split in FILES:
        for _, clip in _clips(_load(root, split)):
            path = root / "v2" / "clips" / f"{clip['clip_uid']}.mp4"
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name == "h264" and float(stream.average_rate) == 5.0
                frames = [f for f in container.decode(video=0)]
            assert len(frames) == clip["clip_end_frame"] // 6
            assert {(f.width, f.height, f.format.name) for f in frames} == {(*TINY["frame_size"], "yuv420p")}
            total += len(frames)
        assert summary[split]["frames"] == sum(c["clip_end_frame"] // 6 for _, c in _clips(_load(root, split)))
    assert total == sum(s["frames"] for s in summary.values())


def test_boxes_surround_the_rendered_object(dataset):
    """Rebuild the val clips' plans, render their label maps: each response box is the
    extent of the queried object's pixels, the object is absent at the query frame, and
    the mp4 holds exactly the rendered frames."""
    root, _ = dataset
    settings = resolve_settings("small", **TINY)
    checked = 0
    for index, (_, clip_json) in enumerate(_clips(_load(root, "val"))):
        _, clip = make_clip(SEED, "val", index, settings)
        decoded = _decode(root / "v2" / "clips" / f"{clip_json['clip_uid']}.mp4")
        assert len(decoded) == clip.num_frames
        for t in (0, clip.num_frames // 2):
            frame = decoded[t].astype(float)
            assert np.abs(frame - render_frame(clip.scene, clip.camera, t)).mean() < 6.0
            elsewhere = render_frame(clip.scene, clip.camera, (t + clip.num_frames // 2) % clip.num_frames)
            assert np.abs(frame - elsewhere).mean() > 10.0
        for ai, ann in enumerate(clip_json["annotations"]):
            for key, qs in ann["query_sets"].items():
                plan = clip.annotations[ai][int(key) - 1]
                if not qs["is_valid"]:
                    continue
                assert plan.query_frame == qs["query_frame"]
                assert not (render_labels(clip.scene, clip.camera, plan.query_frame) == plan.label).any()
                for box in qs["response_track"] + [qs["visual_crop"]]:
                    rows, cols = np.nonzero(render_labels(clip.scene, clip.camera, box["frame_number"]) == plan.label)
                    assert len(rows) > 0
                    truth = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
                    assert _iou(truth, _xyxy(box)) > 0.75
                    checked += 1
    assert checked >= 5


def test_visual_crop_looks_like_the_response_object(dataset):
    """Through the mp4 only: the crop's colours match the response box better than a
    same-size box elsewhere in the same frame, for most queries."""
    root, _ = dataset

    def hist(frame, box):
        x1, y1, x2, y2 = (int(round(v)) for v in _xyxy(box))
        patch = frame[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        hsv = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1], None, [12, 6], [0, 180, 0, 256])
        return cv2.normalize(h, None).flatten()

    rng = np.random.default_rng(0)
    wins = total = 0
    for split in ("train", "val"):
        for clip, _, _, qs in _valid_query_sets(_load(root, split)):
            frames = _decode(root / "v2" / "clips" / f"{clip['clip_uid']}.mp4")
            crop = hist(frames[qs["visual_crop"]["frame_number"]], qs["visual_crop"])
            box = qs["response_track"][len(qs["response_track"]) // 2]
            frame = frames[box["frame_number"]]
            w, h = max(2, int(box["width"])), max(2, int(box["height"]))
            x, y = rng.integers(0, frame.shape[1] - w + 1), rng.integers(0, frame.shape[0] - h + 1)
            decoy = dict(box, x=float(x), y=float(y))
            true_score = cv2.compareHist(crop, hist(frame, box), cv2.HISTCMP_CORREL)
            decoy_score = cv2.compareHist(crop, hist(frame, decoy), cv2.HISTCMP_CORREL)
            wins += true_score > decoy_score
            total += 1
    assert total >= 8 and wins >= 0.75 * total


def test_settings_validation():
    assert set(PRESETS) >= {"small", "large"}
    with pytest.raises(TypeError, match="num_trian_clips"):
        resolve_settings("small", num_trian_clips=3)
    with pytest.raises(ValueError, match="even"):
        resolve_settings("small", frame_size=(161, 120))
    with pytest.raises(ValueError, match="preset"):
        resolve_settings("huge")


def test_runs_and_visit_order():
    assert runs(np.array([], bool)) == []
    assert runs(np.array([1, 1, 0, 1, 0, 0, 1], bool)) == [(0, 1), (3, 3), (6, 6)]
    assert runs(np.ones(4, bool)) == [(0, 3)]
    rng = np.random.default_rng(0)
    points = {k: rng.uniform(0, 100, 2) for k in range(4)}
    for _ in range(20):
        order = order_visits(rng, {0: 3, 1: 2, 2: 2, 3: 0}, points, reach=30.0)
        assert sorted(order) == [0, 0, 0, 1, 1, 2, 2]
        assert all(a != b for a, b in zip(order, order[1:]))


def _still_camera(num: int) -> CameraPath:
    return CameraPath(frame_size=(160, 120), centers=np.zeros((num, 2)), zooms=np.ones(num), rolls=np.zeros(num),
                      gains=np.ones((num, 3)), blurs=np.zeros((num, 2)))


def test_response_tracks_are_never_single_frames():
    # frames: 0-4 whole object (crop source), 5-6 absent, 7 one-frame glimpse, 8-11 absent,
    # 12-14 a three-frame sighting, 15-19 absent. Real VQ2D v1 val has no one-frame response
    # track; the glimpse at 7 must never be one, the sightings 0-4 and 12-14 may.
    seen = np.zeros(20, bool)
    seen[[0, 1, 2, 3, 4, 7, 12, 13, 14]] = True
    boxes = np.full((20, 1, 4), np.nan)
    boxes[seen, 0] = (10.0, 10.0, 40.0, 40.0)
    vis = Visibility(boxes=boxes, fraction=seen[:, None].astype(float))
    assert MIN_TRACK_FRAMES == 2
    rng = np.random.default_rng(0)
    tracks = {choose_query(rng, vis, _still_camera(20), label=1).track for _ in range(200)}
    assert tracks == {(0, 4), (12, 14)}
    # without the three-frame sighting and with a sliver of the object on frames 5-6 (no
    # query frame can follow 0-4), the glimpse is the only candidate left: no query
    fraction = seen.astype(float)
    fraction[12:15] = 0.0
    fraction[5:7] = 0.05
    glimpse_only = Visibility(boxes=np.where(fraction[:, None, None] > 0.1, boxes, np.nan), fraction=fraction[:, None])
    assert choose_query(rng, glimpse_only, _still_camera(20), label=1) is None


def test_generated_response_tracks_are_never_single_frames(dataset):
    root, _ = dataset
    lengths = [len(qs["response_track"]) for split in ("train", "val")
               for _, _, _, qs in _valid_query_sets(_load(root, split))]
    assert lengths and min(lengths) >= MIN_TRACK_FRAMES


def test_motion_blur_keeps_still_frames_and_smears_moving_ones():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert motion_blur(frame, np.array([0.5, 0.5])) is frame
    blurred = motion_blur(frame, np.array([8.0, 0.0]))
    assert blurred.shape == frame.shape and blurred.dtype == np.uint8
    # a horizontal streak smooths along x much more than along y
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < 0.5 * np.abs(np.diff(blurred.astype(int), axis=0)).mean()
