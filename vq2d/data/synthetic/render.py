"""Frames of a synthetic clip (world seen through the camera, light, motion blur), the
matching object-label maps, and the H.264 mp4 writer."""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import cv2
import numpy as np

from episodic.io import atomic_open
from vq2d.data.synthetic.camera import CameraPath
from vq2d.data.synthetic.scenes import Scene

CLIP_FPS = 5


def motion_blur(frame: np.ndarray, streak: np.ndarray, max_length: float = 24.0) -> np.ndarray:
    """Blur ``frame`` (uint8 ``[H, W, 3]``) along ``streak = (dx, dy)`` (frame pixels): the mean
    of copies shifted along the streak, about one copy per pixel of its length."""
    length = float(np.hypot(*streak))
    if length < 1.5:
        return frame
    streak = np.asarray(streak, float) * min(1.0, max_length / length)
    steps = int(np.ceil(min(length, max_length))) + 1
    shifts = np.round(np.linspace(-0.5, 0.5, steps)[:, None] * streak).astype(int)  # [steps, 2] (dx, dy)
    pad = int(np.abs(shifts).max())
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    h, w = frame.shape[:2]
    total = np.zeros(frame.shape, np.uint16)
    for dx, dy in shifts:
        total += padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w]
    return (total // steps).astype(np.uint8)


def render_frame(scene: Scene, camera: CameraPath, t: int) -> np.ndarray:
    """Frame ``t`` of the clip: uint8 ``[H, W, 3]`` RGB."""
    frame = cv2.warpAffine(scene.image, camera.matrix(t), camera.frame_size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    light = np.clip(np.arange(256)[:, None] * camera.gains[t], 0, 255).astype(np.uint8)[:, None, :]  # [256, 1, 3]
    frame = cv2.LUT(frame, light)
    return motion_blur(frame, camera.blurs[t])


def render_labels(scene: Scene, camera: CameraPath, t: int) -> np.ndarray:
    """Which object each pixel of frame ``t`` shows: uint8 ``[H, W]`` (0 = none, k = label k)."""
    return cv2.warpAffine(scene.labels, camera.matrix(t), camera.frame_size, flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def render_clip(scene: Scene, camera: CameraPath) -> Iterator[np.ndarray]:
    """All frames of the clip in order (uint8 ``[H, W, 3]`` each)."""
    for t in range(len(camera)):
        yield render_frame(scene, camera, t)


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int = CLIP_FPS, crf: int = 20,
              encoder_preset: str = "ultrafast") -> int:
    """Encode RGB frames (uint8 ``[H, W, 3]``, even sizes) as H.264 yuv420p mp4, atomically.

    Args:
        crf: x264 constant rate factor (quality; lower is better).
        encoder_preset: x264 speed preset ("ultrafast" ... "slow"): speed against file size.
    Returns the number of frames written."""
    import av

    count = 0
    with atomic_open(path, "wb") as f:
        with av.open(f, mode="w", format="mp4") as container:
            stream = None
            for frame in frames:
                if stream is None:
                    stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": encoder_preset})
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                video_frame.pts = count
                container.mux(stream.encode(video_frame))
                count += 1
            if stream is not None:
                container.mux(stream.encode(None))
    return count
