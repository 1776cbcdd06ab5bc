"""Ego4D VQ2D annotation entries (docs/data.md#vq2d-annotations, version "2") for synthetic clips.

Field order follows the real files. Boxes get a little annotator jitter and are rounded
to 2 decimals; response-track boxes keep coordinates outside the frame (as drawn by an
annotator at the image border), visual crops are clipped to the image. The test split
carries neither ``response_track`` nor ``object_title``, like the real test file.
"""
from __future__ import annotations

import uuid

import numpy as np

from vq2d.data.synthetic.clip import SyntheticClip
from vq2d.data.synthetic.sightings import QueryPlan

VERSION = "2"
CANONICAL_FRAMES_PER_CLIP_FRAME = 6   # 30 fps canonical video, 5 fps clips
CANONICAL_FPS = 30
SPLIT_FILES = {"train": "vq_train.json", "val": "vq_val.json", "test": "vq_test_unannotated.json"}
QUERY_SET_WARNING = "Extra query set annotation"   # what the real files carry on every query set


def random_uid(rng: np.random.Generator) -> str:
    """A uuid4-looking string drawn from ``rng``."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def box_entry(frame_number: int, xyxy: np.ndarray, frame_size: tuple[int, int], video_start_frame: int) -> dict:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return {"frame_number": int(frame_number), "x": round(x1, 2), "y": round(y1, 2),
            "width": round(x2 - x1, 2), "height": round(y2 - y1, 2), "rotation": 0,
            "original_width": frame_size[0], "original_height": frame_size[1],
            "video_frame_number": video_start_frame + CANONICAL_FRAMES_PER_CLIP_FRAME * int(frame_number)}


def jittered(rng: np.random.Generator, xyxy: np.ndarray, noise_px: float) -> np.ndarray:
    """An annotator's version of an exact box: each edge moved by N(0, noise_px), size kept > 1 px."""
    x1, y1, x2, y2 = np.asarray(xyxy, float) + rng.normal(0.0, noise_px, size=4)
    return np.array([x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)])


def query_set_entry(rng: np.random.Generator, clip: SyntheticClip, plan: QueryPlan, video_start_frame: int,
                    annotated: bool, invalid: bool, noise_px: float) -> dict:
    """One query set. ``annotated=False``: test format (no response track, no title)."""
    frame_size = clip.camera.frame_size
    track = range(plan.track[0], plan.track[1] + 1)
    k = plan.label - 1
    if invalid:  # as in the real test file: only the validity fields survive
        dropped = list(track)
        if len(dropped) > 2:
            del dropped[int(rng.integers(1, len(dropped) - 1))]
        return {"is_valid": False,
                "errors": [f"Response track is non-contiguous. Response track frames = {dropped}"],
                "warnings": [QUERY_SET_WARNING]}
    out = {"is_valid": True, "errors": [], "warnings": [QUERY_SET_WARNING], "query_frame": plan.query_frame,
           "query_video_frame": video_start_frame + CANONICAL_FRAMES_PER_CLIP_FRAME * plan.query_frame}
    if annotated:
        out["response_track"] = [box_entry(t, jittered(rng, clip.visibility.boxes[t, k], noise_px),
                                           frame_size, video_start_frame) for t in track]
        out["object_title"] = clip.scene.objects[k].title
    crop = jittered(rng, clip.visibility.boxes[plan.crop_frame, k], noise_px)
    crop = np.clip(crop, 0, [frame_size[0], frame_size[1], frame_size[0], frame_size[1]])
    out["visual_crop"] = box_entry(plan.crop_frame, crop, frame_size, video_start_frame)
    return out


def video_entry(rng: np.random.Generator, clip: SyntheticClip, split: str, invalid_prob: float,
                noise_px: float) -> dict:
    """The ``videos[i]`` entry of one synthetic video holding one clip."""
    video_uid, clip_uid, source_clip_uid = random_uid(rng), random_uid(rng), random_uid(rng)
    num = clip.num_frames
    start_sec = int(rng.integers(0, 1200))
    start_frame = start_sec * CANONICAL_FPS
    annotations = []
    for plans in clip.annotations:
        keys = [str(i + 1) for i in range(len(plans))]
        order = rng.permutation(len(plans))  # real files list query sets in any key order
        query_sets = {}
        for i in order:
            invalid = bool(rng.random() < invalid_prob)
            query_sets[keys[i]] = query_set_entry(rng, clip, plans[i], start_frame, annotated=split != "test",
                                                  invalid=invalid, noise_px=noise_px)
        annotations.append({"query_sets": query_sets, "warnings": [], "annotation_uid": random_uid(rng)})
    duration = num / 5.0
    clip_entry = {
        "clip_uid": clip_uid, "video_start_sec": float(start_sec), "video_end_sec": round(start_sec + duration, 2),
        "video_start_frame": start_frame, "video_end_frame": start_frame + CANONICAL_FRAMES_PER_CLIP_FRAME * num,
        "clip_start_sec": 0, "clip_end_sec": round(duration, 2), "clip_start_frame": 0,
        "clip_end_frame": CANONICAL_FRAMES_PER_CLIP_FRAME * num, "clip_fps": 5.0, "annotation_complete": True,
        "source_clip_uid": source_clip_uid, "annotations": annotations,
    }
    return {"video_uid": video_uid, "split": split, "clips": [clip_entry]}


def annotation_file(split: str, videos: list[dict], seed: int) -> dict:
    """The whole ``vq_<split>.json`` document."""
    description = "VQ Annotations (test) (test unannotated)" if split == "test" else f"VQ Annotations ({split})"
    return {"version": VERSION, "date": "synthetic",
            "description": f"{description}, synthetic mini-Ego4D (seed {seed})",
            "manifest": "synthetic://vq2d.data.synthetic", "videos": videos}
