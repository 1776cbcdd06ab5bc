"""Training targets of span-based NLQ models (VSLNet / ReLER, docs/nlq.md#labels and docs/nlq.md#vslnet) and query text.

A clip of duration D seconds is seen as N feature steps. Candidate span (i, j), j >= i,
covers seconds ``(i * D / N, (j + 1) * D / N)``; the start/end labels of a GT window are the
candidate with the highest IoU against it. Highlight labels mark the label span extended by
10% of its length (in steps) on each side.

Two preparations of the seconds (``data.preparation``, docs/nlq.md#features):
``exact`` (this toolkit's: the annotated window and clip duration as they are) and
``released`` (NaQ's ``prepare_ego4d_dataset.py``: duration ``int(D * rate) / rate`` and the
window's both ends floored to the feature grid, :func:`released_grid`).

Query text is passed to the text encoder as written in the file: the encoder's ``tokenize``
normalises it (:func:`normalize_query`).
"""
from __future__ import annotations

import numpy as np

# Sentence normalisation (docs/nlq.md#labels: strip, drop "?", lower-case, add "?") is owned by the text
# encoders, which apply it in ``tokenize``; re-exported here so data code has one name for it.
from nlq.models.vocab import normalize_query  # noqa: F401

HIGHLIGHT_EXTEND = 0.1
PREPARATIONS = ("exact", "released")  # data.preparation


def released_duration(duration: float, rate: float) -> float:
    """The released clip duration: whole feature steps only, ``int(D * rate) / rate`` seconds."""
    return int(duration * rate) / rate


def released_grid(window: tuple[float, float], duration: float, rate: float) -> tuple[float, float]:
    """The released window: both ends floored to the feature grid (``int(t * rate) / rate``),
    then clipped to ``[0, duration]`` (``duration`` already :func:`released_duration`).

    A window inside one feature step becomes empty (start == end): its labels are then
    span (0, 0), as in the release.
    """
    start = max(0.0, int(window[0] * rate) / rate)
    end = min(int(window[1] * rate) / rate, duration)
    return start, end


def is_naq_query(text: str) -> bool:
    """NaQ samples are narrations: their text starts with "#" (``#C C picks a bag``)."""
    return text.lstrip().startswith("#")


def candidate_spans(duration: float, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end seconds of the N steps: ``starts[i] = i*D/N``, ``ends[j] = (j+1)*D/N``, [N] each."""
    unit = duration / num_steps
    return np.arange(num_steps) * unit, np.arange(1, num_steps + 1) * unit


def span_iou(starts: np.ndarray, ends: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """IoU = intersection / (max end - min start) of spans (broadcast arrays) with one window."""
    gt_start, gt_end = window
    inter = np.clip(np.minimum(ends, gt_end) - np.maximum(starts, gt_start), 0.0, None)
    union = np.maximum(ends, gt_end) - np.minimum(starts, gt_start)
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def span_labels(window: tuple[float, float], duration: float, num_steps: int) -> tuple[int, int]:
    """(start_index, end_index) of the candidate span with the highest IoU to ``window`` (seconds).

    Only spans with ``end_index >= start_index`` are candidates; ties go to the first in
    row-major (start, end) order.
    """
    if num_steps <= 0 or duration <= 0:
        raise ValueError(f"span_labels needs num_steps > 0 and duration > 0 (got {num_steps}, {duration})")
    starts, ends = candidate_spans(duration, num_steps)
    iou = span_iou(starts[:, None], ends[None, :], window)  # [N, N], [i, j] = span (i, j)
    iou[np.tril_indices(num_steps, -1)] = -1.0  # j < i is not a span
    flat = int(np.argmax(iou))
    return flat // num_steps, flat % num_steps


def highlight_labels(start_index: int, end_index: int, num_steps: int,
                     extend: float = HIGHLIGHT_EXTEND) -> np.ndarray:
    """Highlight targets ``[N]`` (float32 0/1): steps of the label span widened by
    ``round(extend * span length)`` steps on each side, clipped to the clip."""
    labels = np.zeros(num_steps, dtype=np.float32)
    pad = round(extend * float(end_index - start_index + 1))
    labels[max(0, start_index - pad): min(num_steps - 1, end_index + pad) + 1] = 1.0
    return labels


def steps_to_seconds(start_index: int, end_index: int, duration: float, num_steps: int) -> tuple[float, float]:
    """Seconds of span (i, j): ``(i * D / N, (j + 1) * D / N)`` (inverse of :func:`span_labels`)."""
    unit = duration / num_steps
    return start_index * unit, (end_index + 1) * unit
