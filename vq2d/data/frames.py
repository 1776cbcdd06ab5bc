"""Frames of a VQ2D clip at 5 fps, decoded from its mp4 with PyAV (docs/data.md#vq2d-annotations).

Clip frame ``i`` is the decoded frame shown at time ``i / clip_fps`` seconds after the
clip's first frame. Times come from the frames' time stamps, counted from the first
frame's (so offset time stamps are fine); the same code reads a canonical 30 fps clip
(clip frame ``i`` = decoded frame ``6 * i``) and a 5 fps clip (clip frame ``i`` =
decoded frame ``i``); at other rates the decoded frame nearest in time is taken.
Containers: mp4 (Ego4D), mkv, MPEG-TS; not AVI with B-frames, whose time stamps are
unreliable.

Each requested frame is decoded once, in one forward pass: seek to the keyframe before
the first wanted frame, decode forward, stop after the last one (with a forward seek
across long gaps between wanted frames).
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import cv2
import numpy as np

from episodic.errors import DataError

_FFMPEG_ERRORS = (av.error.FFmpegError, OSError)


def format_frames(frames: Sequence[int], limit: int = 10) -> str:
    """Frame numbers for messages: ``[3, 4, 5]``, or ``[3, 4, ..., 99] (12 frames)`` when long."""
    frames = list(frames)
    if len(frames) <= limit:
        return str(frames)
    head = ", ".join(str(f) for f in frames[: limit - 1])
    return f"[{head}, ..., {frames[-1]}] ({len(frames)} frames)"


class ClipReader:
    """Random access to the 5 fps frames of one clip file.

    Use as a context manager (or call :meth:`close`); the file stays open between reads.
    Frames are ``[H, W, 3]`` uint8 RGB arrays, resized to ``original_size`` when given.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        clip_fps: float = 5.0,  # rate of the annotation's frame numbers (Ego4D: 5)
        original_size: tuple[int, int] | None = None,  # (width, height) boxes refer to
        num_threads: int = 0,  # PyAV/FFmpeg decoding threads; 0 lets FFmpeg choose
        seek_gap_s: float = 10.0,  # seek forward instead of decoding across longer gaps
    ):
        self.path = Path(path)
        self.clip_fps = Fraction(clip_fps).limit_denominator(1000)
        if self.clip_fps <= 0:
            raise ValueError(f"clip_fps must be > 0 (got {clip_fps})")
        if original_size is not None:
            width, height = (int(v) for v in original_size)
            if width <= 0 or height <= 0:
                raise ValueError(f"original_size must be positive (width, height), got {original_size}")
            original_size = (width, height)
        self.original_size = original_size
        self.seek_gap = Fraction(seek_gap_s).limit_denominator(1000)
        if not self.path.is_file():
            raise DataError(f"{self.path}: clip file not found")
        try:
            self._container = av.open(str(self.path))
        except _FFMPEG_ERRORS as e:
            raise DataError(f"{self.path}: unreadable video file ({e})") from None
        try:
            if not self._container.streams.video:
                raise DataError(f"{self.path}: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = int(num_threads)
            self._time_base = Fraction(self._stream.time_base)
            rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
            if not rate:
                raise DataError(f"{self.path}: the video stream has no frame rate")
            self.source_fps = Fraction(rate)
            self.num_source_frames = self._count_source_frames()
            self._start_pts = self._first_pts()
        except BaseException:
            self._container.close()
            raise
        self.decoded_size = (self._stream.codec_context.width, self._stream.codec_context.height)
        n = self.num_source_frames
        # clip frame i exists when its time is within half a source period of the last frame
        self.num_frames = 0 if n == 0 else math.floor((2 * n - 1) * self.clip_fps / (2 * self.source_fps)) + 1

    def _count_source_frames(self) -> int:
        stream = self._stream
        if stream.frames:
            return int(stream.frames)
        if stream.duration:
            return round(stream.duration * self._time_base * self.source_fps)
        try:  # no count in the header: count the packets (demux only, no decoding)
            count = sum(1 for p in self._container.demux(stream) if p.size)
            self._container.seek(0)
        except _FFMPEG_ERRORS as e:
            raise DataError(f"{self.path}: unreadable video stream ({e})") from None
        return count

    def _first_pts(self) -> int:
        """Time stamp of the first frame shown: clip time 0 (robust to offset time stamps
        and to containers whose declared start differs from the first frame)."""
        try:
            first = next(iter(self._container.decode(self._stream)), None)
            self._container.seek(0)
        except _FFMPEG_ERRORS as e:
            raise DataError(f"{self.path}: corrupt or truncated video, its first frame does not "
                            f"decode ({e})") from None
        if first is None or first.pts is None:
            raise DataError(f"{self.path}: no frame with a time stamp could be decoded "
                            f"(truncated or corrupt file?)")
        return first.pts

    # -- public API ---------------------------------------------------------------------
    def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode the given clip frames (any order, repeats allowed), each once.

        Returns ``{index: [H, W, 3] uint8 RGB}``."""
        return dict(self.iter_frames(indices))

    def iter_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, [H, W, 3] uint8 RGB)`` for the sorted distinct ``indices``,
        streaming (only one decoded frame is held besides the one yielded).

        Raises :class:`DataError` up front for frames past the end, and while decoding
        when the file turns out truncated or corrupt (frames yielded before stay valid)."""
        targets = self._check(indices)  # checked now, not at the first next()
        return self._decode(targets) if targets else iter(())

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "ClipReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ClipReader({str(self.path)!r}, num_frames={self.num_frames}, "
                f"source_fps={float(self.source_fps):g}, decoded_size={self.decoded_size})")

    # -- internals ----------------------------------------------------------------------
    def _check(self, indices: Sequence[int]) -> list[int]:
        targets = sorted({int(i) for i in indices})
        negative = [i for i in targets if i < 0]
        if negative:
            raise DataError(f"{self.path}: negative frame numbers {format_frames(negative)}")
        past = [i for i in targets if i >= self.num_frames]
        if past:
            raise DataError(
                f"{self.path}: frames {format_frames(past)} are past the end of the clip, which has "
                f"{self.num_frames} frames at {float(self.clip_fps):g} fps (frames 0..{self.num_frames - 1})")
        return targets

    def _time(self, frame: av.VideoFrame) -> Fraction:
        if frame.pts is None:
            raise DataError(f"{self.path}: decoded a frame without a time stamp")
        return (frame.pts - self._start_pts) * self._time_base

    def _seek(self, time: Fraction) -> None:
        """Seek to the keyframe at or before ``time``; ``time <= 0`` rewinds the file."""
        if time <= 0:
            self._container.seek(0)  # container time 0 lies at or before every stream's start
        else:
            pts = self._start_pts + math.floor(time / self._time_base)
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        image = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
        if self.original_size is not None and (image.shape[1], image.shape[0]) != self.original_size:
            image = cv2.resize(image, self.original_size, interpolation=cv2.INTER_LINEAR)
        return image

    def _frames_from(self, time: Fraction) -> Iterator[tuple[Fraction, av.VideoFrame]]:
        """Seek to the keyframe at or before ``time`` (seconds from the clip start) and
        yield ``(time, frame)`` forward from there.

        Where seeking misbehaves (lands past ``time``, or yields nothing, as in some
        MPEG-TS files) it decodes from the start of the file instead."""
        self._seek(time)
        if time > 0:
            frames = self._container.decode(self._stream)
            first = next(frames, None)
            if first is None or self._time(first) > time + 1 / (2 * self.source_fps):
                self._seek(Fraction(0))
            else:
                yield self._time(first), first
                for frame in frames:
                    yield self._time(frame), frame
                return
        for frame in self._container.decode(self._stream):
            yield self._time(frame), frame

    def _decode(self, targets: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """One forward pass over ``targets`` (sorted, distinct, in range)."""
        times = [i / self.clip_fps for i in targets]
        period = 1 / self.source_fps
        j = 0
        last_t = None  # time of the last decoded frame
        try:
            while j < len(targets):
                sought_for = j
                prev = None  # (time, frame) of the previous decoded frame
                # start a period early so that the target's earlier neighbour is decoded too
                for t, frame in self._frames_from(times[j] - period):
                    last_t = t
                    while j < len(targets) and t >= times[j]:  # nearest frame; ties: earlier
                        use_prev = prev is not None and times[j] - prev[0] <= t - times[j]
                        yield targets[j], self._to_array(prev[1] if use_prev else frame)
                        j += 1
                    if j == len(targets):
                        return
                    if j != sought_for and times[j] - t > self.seek_gap:
                        break  # long gap to the next target: seek forward
                    prev = (t, frame)
                else:  # end of stream: the last frame serves targets within half a period
                    while j < len(targets) and prev is not None and times[j] - prev[0] <= period / 2:
                        yield targets[j], self._to_array(prev[1])
                        j += 1
                    if j < len(targets):
                        raise self._truncated(targets[j:], last_t)
        except _FFMPEG_ERRORS as e:
            raise DataError(f"{self.path}: corrupt or truncated video ({e}) while looking for "
                            f"frame {targets[j]}; frames not decoded: {format_frames(targets[j:])}") from None

    def _truncated(self, missing: list[int], last_t: Fraction | None) -> DataError:
        ended = "before its first frame" if last_t is None else f"at {float(last_t):.3f} s"
        return DataError(
            f"{self.path}: the video stream ended {ended} although the header promises "
            f"{self.num_source_frames} frames at {float(self.source_fps):g} fps (truncated file?); "
            f"frames not decoded: {format_frames(missing)}")

