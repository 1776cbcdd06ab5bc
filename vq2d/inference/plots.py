"""Diagnostic figures of a VQ2D evaluation (matplotlib, Agg backend; files written atomically).

* :func:`plot_score_curve`: one query's score curve (raw and median filtered), its peaks,
  the chosen peak, the predicted track interval and the GT interval.
* :func:`plot_false_positive_gallery`: the top-scoring detections on frames outside the
  response track, each frame region beside the query's visual crop.
* :func:`top_false_positives`: pick those detections from the cached detections.
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
