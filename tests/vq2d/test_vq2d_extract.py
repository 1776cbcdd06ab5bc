"""Which frames a split needs, the JPEG frame cache, and resumable frame extraction."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from episodic.errors import DataError
from vq2d.data.annotations import BBox, QuerySet, VQQuery, load_vq_annotations, parse_vq_annotations
from vq2d.data.extract import extract_frames
from vq2d.data.frame_cache import FrameCache, frames_for_split, needed_frames
from vq2d.data.frames import ClipReader
from vq2d.data.synthetic.render import write_mp4

REPO = Path(__file__).resolve().parents[2]
ORIGINAL = (128, 96)  # annotation resolution; the mp4s are 64 x 48


def _query(query_frame, crop_frame, track_frames):
    track = tuple(BBox(f, 1, 2, 3, 4) for f in track_frames) if track_frames is not None else None
    qs = QuerySet(query_frame=query_frame, visual_crop=BBox(crop_frame, 1, 2, 3, 4), response_track=track)
    return VQQuery("v", "c", 0, None, "1", 5.0, 0, qs)


def test_needed_frames_rules():
    q = _query(query_frame=25, crop_frame=40, track_frames=range(10, 14))
    assert needed_frames(q, {"crop"}) == {40}
    assert needed_frames(q, {"response_track"}) == {10, 11, 12, 13}
    assert needed_frames(q, {"negatives"}) == {14, 15, 16, 17}  # f + len(track)
    assert needed_frames(q, {"negatives"}, negatives_per_positive=2) == set(range(14, 22))
    assert needed_frames(q, {"search_window"}) == set(range(25))
    assert needed_frames(q, {"crop", "response_track", "negatives"}) == {40, *range(10, 18)}
    # negatives stop before the query frame
    assert needed_frames(_query(16, 0, range(10, 14)), {"negatives"}) == {14, 15}
    assert needed_frames(_query(14, 0, range(10, 14)), {"negatives"}) == set()
    # a test query has no response track
    assert needed_frames(_query(5, 7, None), {"crop", "response_track", "negatives"}) == {7}
    assert needed_frames(q, set()) == set()
    with pytest.raises(ValueError, match="unknown frame parts"):
        needed_frames(q, {"crops"})


def _box(frame):
    return {"frame_number": frame, "x": 4, "y": 4, "width": 20, "height": 16, "rotation": 0,
            "original_width": ORIGINAL[0], "original_height": ORIGINAL[1], "video_frame_number": 6 * frame}


def _qs(query_frame, crop, track):
    return {"is_valid": True, "query_frame": query_frame, "object_title": "cup",
            "visual_crop": _box(crop), "response_track": [_box(f) for f in track]}


def _clip(clip_uid, *annotations):
    return {"clip_uid": clip_uid, "video_start_sec": 0.0, "video_end_sec": 10.0, "video_start_frame": 0,
            "video_end_frame": 300, "clip_fps": 5.0,
            "annotations": [{"query_sets": {str(k + 1): qs for k, qs in enumerate(a)}} for a in annotations]}


# needed (crop, response_track, negatives): c0 14 frames, c1 7, c2 5 (frame 15 past its end), gone 5
SPLIT = {"version": "1", "videos": [
    {"video_uid": "v0", "clips": [
        _clip("c0", [_qs(30, 35, range(10, 14)), _qs(20, 2, [5, 6])]),
        _clip("c1", [_qs(12, 0, [3, 4, 5])])]},
    {"video_uid": "v1", "clips": [
        _clip("c2", [_qs(8, 15, [2, 3])]),
        _clip("gone", [_qs(10, 1, [2, 3])])]},
]}
CLIP_LENGTHS = {"c0": 40, "c1": 20, "c2": 10}  # 5 fps frames; "gone" has no mp4


def _frame(clip_index, t):
    """A smooth 64 x 48 RGB frame that changes with t."""
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 3 + t * 5, y * 4 + clip_index * 60, (x + y + 7 * t) % 200], -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_split(root: Path, split="val"):
    (root / "v2" / "annotations").mkdir(parents=True)
    (root / "v2" / "annotations" / f"vq_{split}.json").write_text(json.dumps(SPLIT))
    for k, (clip_uid, length) in enumerate(CLIP_LENGTHS.items()):
        write_mp4(root / "v2" / "clips" / f"{clip_uid}.mp4", (_frame(k, t) for t in range(length)), fps=5)
    return root / "v2" / "annotations" / f"vq_{split}.json", root / "v2" / "clips"


def test_frames_for_split_unions_queries():
    frames = frames_for_split(parse_vq_annotations(SPLIT), {"crop", "response_track", "negatives"})
    assert frames["c0"] == [2, 5, 6, 7, 8, *range(10, 18), 35]
    assert frames["c1"] == [0, 3, 4, 5, 6, 7, 8]
    assert frames["c2"] == [2, 3, 4, 5, 15]
    assert sorted(frames) == ["c0", "c1", "c2", "gone"]
    window = frames_for_split(parse_vq_annotations(SPLIT), {"search_window"})
    assert window["c0"] == list(range(30))


def test_frames_for_real_val_sample(ego4d_samples):
    ann = load_vq_annotations(ego4d_samples / "vq_val_sample_v1.json")
    frames = frames_for_split(ann, {"crop", "response_track", "negatives"})
    assert len(frames) == 44
    for q in ann.queries():
        track = {b.frame_number for b in q.response_track}
        assert track | {q.visual_crop.frame_number} <= set(frames[q.clip_uid])


def test_frame_cache_round_trip_and_errors(tmp_path):
    cache = FrameCache(tmp_path, jpeg_quality=90)
    image = _frame(0, 3)
    path = cache.save("clipA", 7, image)
    assert path == tmp_path / "clipA" / "000007.jpg" and cache.has("clipA", 7)
    assert np.abs(cache.load("clipA", 7).astype(int) - image).mean() < 3  # RGB order kept
    assert cache.missing("clipA", [9, 7, 1]) == [1, 9]
    with pytest.raises(DataError, match="frame 8 of clip clipA"):
        cache.load("clipA", 8)
    cache.path("clipA", 8).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="unreadable JPEG"):
        cache.load("clipA", 8)
    assert not list(tmp_path.rglob("*.tmp"))


def _jpegs(cache_root: Path):
    return sorted(str(p.relative_to(cache_root)) for p in cache_root.rglob("*.jpg"))


def test_extract_resume_and_failures(tmp_path):
    annotations, clips_dir = _write_split(tmp_path / "data")
    cache_root = tmp_path / "cache"
    run = dict(annotations_path=annotations, clips_dir=clips_dir, cache_root=cache_root, workers=1,
               parts=["crop", "response_track", "negatives"], progress=False)

    first = extract_frames(**run)
    assert (first.clips, first.clips_extracted, first.clips_skipped, first.clips_failed) == (4, 2, 0, 2)
    assert (first.frames_needed, first.frames_extracted) == (31, 14 + 7 + 4)
    reasons = dict(first.failures)
    assert "gone.mp4" in reasons["gone"] and "not found" in reasons["gone"]
    assert "[15]" in reasons["c2"] and "past the end" in reasons["c2"] and "10 frames" in reasons["c2"]
    assert "FAILED gone" in first.format()
    assert len(_jpegs(cache_root)) == 25 and "c2/000002.jpg" in _jpegs(cache_root)
    assert not list(cache_root.rglob("*.tmp"))  # atomic writes leave no temporary files

    # the JPEG holds the decoded frame at the annotation's original size
    cache = FrameCache(cache_root)
    with ClipReader(clips_dir / "c0.mp4", original_size=ORIGINAL) as reader:
        decoded = reader.read([10, 35])
    for i, frame in decoded.items():
        cached = cache.load("c0", i)
        assert cached.shape == (ORIGINAL[1], ORIGINAL[0], 3)
        assert np.abs(cached.astype(int) - frame).mean() < 3

    second = extract_frames(**run)  # resume: nothing left but the failing clips
    assert (second.clips_skipped, second.clips_failed, second.frames_extracted) == (2, 2, 0)

    cache.path("c0", 12).unlink()
    (clips_dir / "c1.mp4").write_bytes(b"broken")  # c1 is complete: it must not be opened
    third = extract_frames(**run)
    assert (third.clips_extracted, third.clips_skipped, third.frames_extracted) == (1, 1, 1)
    assert cache.has("c0", 12) and sorted(dict(third.failures)) == ["c2", "gone"]


def _run_tool(cwd, *overrides):
    return subprocess.run([sys.executable, str(REPO / "tools" / "extract_frames.py"), *overrides],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_extract_tool(tmp_path):
    root = tmp_path / "data"
    _write_split(root, split="val")
    work = tmp_path / "work"
    work.mkdir()
    done = _run_tool(work, f"data.root={root}", "split=val", "workers=2", "jpeg_quality=80",
                     "parts=[crop,response_track,negatives,search_window]")
    assert done.returncode == 3, done.stderr  # the run finished, but two clips failed
    assert "2 extracted" in done.stdout and "FAILED gone" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["num_failed"] == 2 and [f["id"] for f in result["failed"]] == ["c2", "gone"]
    assert "past the end" in result["failed"][0]["reason"]
    assert "2 failed; exit status 3" in done.stderr
    # with the search window: c0 0..29 + 35, c1 0..11, c2 0..7 (its frame 15 fails), gone none
    assert len(_jpegs(root / "frame_cache")) == 31 + 12 + 8
    assert list(work.iterdir()) == []  # hydra wrote no outputs/.hydra/log files
    again = _run_tool(work, f"data.root={root}", "split=val", "workers=1", "allow_failures=true",
                      "parts=[crop,response_track,negatives,search_window]")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["num_failed"] == 2
    bad = _run_tool(work, f"data.root={root}", "no_such_key=1")
    assert bad.returncode != 0
