"""Diagnostic figures of a VQ2D evaluation (matplotlib, Agg backend; files written atomically).

* :func:`plot_score_curve`: one query's score curve (raw and median filtered), its peaks,
  the chosen peak, the predicted track interval and the GT interval.
* :func:`plot_false_positive_gallery`: the top-scoring detections on frames outside the
  response track, each frame region beside the query's visual crop.
* :func:`top_false_positives`: pick those detections from the cached detections.
* :func:`write_track_gif`: a short GIF of a predicted track beside its ground truth.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from episodic.io import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_score_curve(path: str | os.PathLike, *, raw: np.ndarray, smoothed: np.ndarray, peaks: Sequence[int],
                     chosen: int | None, track_interval: tuple[int, int] | None,
                     gt_interval: tuple[int, int] | None, query_frame: int, title: str = "") -> None:
    """Score curve figure. raw, smoothed: ``[T]``; peaks: frame numbers; intervals are
    inclusive ``(first, last)`` frames or None."""
    fig, ax = plt.subplots(figsize=(8, 3))
    t = np.arange(len(raw))
    if gt_interval is not None:
        ax.axvspan(gt_interval[0] - 0.5, gt_interval[1] + 0.5, color="tab:blue", alpha=0.2, label="GT track")
    if track_interval is not None:
        ax.axvspan(track_interval[0] - 0.5, track_interval[1] + 0.5, color="tab:green", alpha=0.25,
                   label="predicted track")
    ax.plot(t, raw, color="0.6", lw=0.8, label="score")
    ax.plot(t, smoothed, color="tab:orange", lw=1.5, label="median filtered")
    peaks = np.asarray(peaks, dtype=int)
    if peaks.size:
        ax.plot(peaks, smoothed[peaks], "v", color="tab:purple", ms=6, label="peaks")
    if chosen is not None and 0 <= chosen < len(smoothed):
        ax.plot([chosen], [smoothed[chosen]], "*", color="tab:red", ms=14, label="chosen peak")
    ax.axvline(query_frame, color="k", ls="--", lw=1, label="query frame")
    ax.set_xlim(-1, max(query_frame, 1) + 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("frame (5 fps)")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.tight_layout()
    _save(fig, path)


@dataclass(frozen=True)
class FalsePositive:
    """A detection on a frame outside the query's GT response track."""

    query: str
    clip_uid: str
    frame: int
    box: tuple[float, float, float, float]
    score: float


def top_false_positives(candidates: Sequence[tuple[str, str, np.ndarray, np.ndarray, tuple[int, int]]],
                        num: int = 16, max_per_query: int = 2) -> list[FalsePositive]:
    """The ``num`` highest-scoring false positives over all queries.

    candidates: (query name, clip_uid, top box per frame ``[T, 4]``, top score per frame
    ``[T]`` (0 = no detection), GT interval (first, last)). At most ``max_per_query`` per
    query (its highest-scoring frames outside the GT interval)."""
    found: list[FalsePositive] = []
    for name, clip_uid, boxes, scores, (first, last) in candidates:
        frames = np.arange(len(scores))
        outside = ((frames < first) | (frames > last)) & (scores > 0)
        best = frames[outside][np.argsort(-scores[outside], kind="stable")][:max_per_query]
        found += [FalsePositive(name, clip_uid, int(f), tuple(float(v) for v in boxes[f]), float(scores[f]))
                  for f in best]
    found.sort(key=lambda fp: -fp.score)
    return found[:num]


def plot_false_positive_gallery(path: str | os.PathLike, items: Sequence[tuple[np.ndarray, np.ndarray, str]],
                                columns: int = 4) -> None:
    """A grid of (visual crop ``[S, S, 3]``, detected region ``[S, S, 3]``, label) pairs."""
    rows = max((len(items) + columns - 1) // columns, 1)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2 * columns * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (crop, region, label) in enumerate(items):
        r, c = divmod(i, columns)
        axes[r, 2 * c].imshow(crop)
        axes[r, 2 * c].set_title("visual crop", fontsize=6)
        axes[r, 2 * c + 1].imshow(region)
        axes[r, 2 * c + 1].set_title(label, fontsize=6)
    if not items:
        axes[0, 0].text(0.0, 0.5, "no false positives", fontsize=9)
    fig.suptitle("top-scoring detections outside the response track", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


GT_COLOR, PRED_COLOR = (40, 200, 40), (230, 40, 40)


def gif_frame_numbers(gt_frames: Sequence[int], pred_frames: Sequence[int], max_frames: int,
                      num_frames: int | None = None) -> list[int]:
    """Frames a track GIF shows: the span of both tracks (clipped to ``[0, num_frames)``),
    evenly thinned to at most ``max_frames``."""
    frames = [int(f) for f in [*gt_frames, *pred_frames]]
    if not frames:
        return []
    first, last = max(min(frames), 0), max(frames)
    if num_frames is not None:
        last = min(last, num_frames - 1)
    if last < first:
        return []
    span = np.arange(first, last + 1)
    if len(span) > max_frames:
        span = span[np.round(np.linspace(0, len(span) - 1, max(max_frames, 1))).astype(int)]
    return sorted({int(f) for f in span})


def _panel(image: np.ndarray, box, color, label: str, height: int):
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    scale = height / float(h)
    panel = Image.fromarray(np.ascontiguousarray(image[..., :3])).resize((max(int(round(w * scale)), 1), height))
    draw = ImageDraw.Draw(panel)
    if box is not None:
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=2)
    draw.rectangle(draw.textbbox((2, 2), label), fill=(0, 0, 0))
    draw.text((2, 2), label, fill=color)
    return panel


def write_track_gif(path: str | os.PathLike, frames, *, gt: np.ndarray, pred: Sequence[Sequence[float]],
                    max_frames: int = 40, height: int = 180, fps: float = 5.0, title: str = "") -> None:
    """GIF of the ground truth (left, green) beside the prediction (right, red), frame by
    frame over both tracks' span. ``frames``: a :class:`vq2d.inference.frame_source.ClipFrames`
    (``read``, ``num_frames``); ``gt``: rows ``[N, 5]`` (frame, x1, y1, x2, y2); ``pred``:
    rows ``[M, 5]`` likewise, in the frames' pixel coordinates."""
    from PIL import Image, ImageDraw

    gt_boxes = {int(r[0]): r[1:5] for r in np.asarray(gt, dtype=np.float64)}
    pred_boxes = {int(r[0]): r[1:5] for r in pred}
    indices = gif_frame_numbers(list(gt_boxes), list(pred_boxes), max_frames, frames.num_frames)
    if not indices:
        return
    images = frames.read(indices)
    pictures = []
    for f in indices:
        left = _panel(images[f], gt_boxes.get(f), GT_COLOR, f"GT  f{f}", height)
        right = _panel(images[f], pred_boxes.get(f), PRED_COLOR, f"prediction  f{f}", height)
        canvas = Image.new("RGB", (left.width + right.width + 4, height + 14), (0, 0, 0))
        canvas.paste(left, (0, 14))
        canvas.paste(right, (left.width + 4, 14))
        ImageDraw.Draw(canvas).text((4, 1), title, fill=(255, 255, 255))
        pictures.append(canvas.convert("P", palette=Image.ADAPTIVE))
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=int(1000 / fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
