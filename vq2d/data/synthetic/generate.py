"""Write a synthetic VQ2D data set in the Ego4D layout (docs/data.md#vq2d-annotations and docs/data.md#synthetic):
``ROOT/v2/annotations/vq_{train,val,test_unannotated}.json`` and ``ROOT/v2/clips/<clip_uid>.mp4``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from episodic.io import atomic_write_json
from vq2d.data.synthetic.annotate import SPLIT_FILES, annotation_file, video_entry
from vq2d.data.synthetic.clip import SyntheticClip, synthesize_clip
from vq2d.data.synthetic.render import render_clip, write_mp4

_SMALL = dict(
    num_train_clips=16,            # clips (= videos) per split
    num_val_clips=6,
    num_test_clips=4,
    frame_size=(320, 240),         # (width, height) of the frames, even numbers
    frames_per_clip=(60, 100),     # inclusive range of 5 fps frames per clip
    annotations_per_clip=(1, 2),   # inclusive range
    query_sets_per_annotation=(2, 3),  # inclusive range, at most 3 (keys "1", "2", "3")
    clutter_objects=(2, 4),        # objects never planned as queries (inclusive range)
    distractor_prob=0.6,           # chance that a query object has a look-alike in the world
    world_scale=3.5,               # world size in frames (at zoom 1)
    object_size=(0.14, 0.35),      # an object's longer side, in frame heights at zoom 1
    zoom_range=(0.75, 1.5),        # frame pixels per world pixel at the camera's visits
    max_roll_deg=20.0,             # camera roll at a visit, uniform in +-this
    shake_px=2.0,                  # per-frame hand shake (std, frame pixels)
    blur_prob=0.08,                # chance of an extra strongly motion-blurred frame
    invalid_prob=0.05,             # chance that a query set is written as is_valid: false
    box_noise_px=0.5,              # annotator jitter of each box edge (std, pixels)
    crf=20,                        # H.264 quality (lower = better, bigger files)
    encoder_preset="ultrafast",    # x264 speed preset: "ultrafast" writes fast, "medium" writes small files
)
PRESETS: dict[str, dict] = {
    "small": _SMALL,  # CPU demo: ~26 clips of 320x240, generated in well under a minute
    "large": {**_SMALL, "num_train_clips": 240, "num_val_clips": 60, "num_test_clips": 60,
              "frame_size": (640, 480), "frames_per_clip": (100, 180), "world_scale": 4.0},
}
SPLITS = ("train", "val", "test")
_COUNT_KEYS = {"train": "num_train_clips", "val": "num_val_clips", "test": "num_test_clips"}
_FILE_KEYS = ("invalid_prob", "box_noise_px", "crf", "encoder_preset")


def resolve_settings(preset: str = "small", **overrides) -> dict:
    """The preset's keyword arguments updated by ``overrides``; unknown names are errors."""
    if preset not in PRESETS:
        raise ValueError(f"unknown VQ2D synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    settings = dict(PRESETS[preset])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"unknown VQ2D synthetic setting(s) {unknown}; known: {sorted(settings)}")
    settings.update(overrides)
    if any(v % 2 for v in settings["frame_size"]):
        raise ValueError(f"frame_size must be even for yuv420p H.264 (got {settings['frame_size']})")
    if not 1 <= settings["query_sets_per_annotation"][0] <= settings["query_sets_per_annotation"][1] <= 3:
        raise ValueError(f"query_sets_per_annotation must lie in 1..3 (got {settings['query_sets_per_annotation']})")
    return settings


def clip_settings(settings: dict) -> dict:
    """The keyword arguments of :func:`synthesize_clip` among ``settings``."""
    return {k: v for k, v in settings.items() if k not in _COUNT_KEYS.values() and k not in _FILE_KEYS}


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of clip ``index`` of ``split``: clips are independent of each other."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def make_clip(seed: int, split: str, index: int, settings: dict) -> tuple[np.random.Generator, SyntheticClip]:
    """Clip ``index`` of ``split`` and its random stream, positioned after the clip's planning."""
    rng = clip_rng(seed, split, index)
    for _ in range(10):  # a clip without any query is drawn again
        clip = synthesize_clip(rng, **clip_settings(settings))
        if clip.annotations:
            return rng, clip
    raise RuntimeError(f"could not place any query in {split} clip {index}: settings too tight ({settings})")


def generate_vq2d(root: str | Path, seed: int = 0, preset: str = "small", **overrides) -> dict:
    """Write ``root/v2/annotations/vq_{train,val,test_unannotated}.json`` and
    ``root/v2/clips/<clip_uid>.mp4``; the annotation files are a pure function of ``seed``
    and the settings (PRESETS[preset] updated by ``overrides``).

    Returns:
        {split: {"clips": n, "queries": valid query sets, "frames": 5 fps frames}} for
        split in "train", "val", "test".
    """
    settings = resolve_settings(preset, **overrides)
    root = Path(root)
    summary = {}
    for split in SPLITS:
        videos, frames, queries = [], 0, 0
        for index in tqdm(range(settings[_COUNT_KEYS[split]]), desc=f"vq2d synthetic {split}", unit="clip"):
            rng, clip = make_clip(seed, split, index, settings)
            video = video_entry(rng, clip, split, settings["invalid_prob"], settings["box_noise_px"])
            clip_uid = video["clips"][0]["clip_uid"]
            frames += write_mp4(root / "v2" / "clips" / f"{clip_uid}.mp4", render_clip(clip.scene, clip.camera),
                                crf=settings["crf"], encoder_preset=settings["encoder_preset"])
            queries += sum(qs["is_valid"] for a in video["clips"][0]["annotations"] for qs in a["query_sets"].values())
            videos.append(video)
        atomic_write_json(root / "v2" / "annotations" / SPLIT_FILES[split], annotation_file(split, videos, seed))
        summary[split] = {"clips": len(videos), "queries": int(queries), "frames": frames}
    return summary
