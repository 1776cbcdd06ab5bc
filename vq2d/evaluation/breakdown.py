"""VQ2D metrics broken down by object size and by response-track length
(docs/vq2d.md#metrics).

Size: the official response-track area (its largest GT box, ``|w| * |h|`` in original
pixels) against the official ``area_ranges`` of ``compute_visual_query_metrics``
(medium ``[32**2, 96**2)``, large ``[96**2, 1e5**2)``), with COCO's small ``[0, 32**2)``
for the rest. Length: GT response-track boxes (5 fps frames) in ``1-8``, ``9-24``,
``25+``. Each group is scored on its own, as the official code scores an area pairing
(its queries only, npos = their number).
"""
from __future__ import annotations

from typing import Hashable, Mapping

from vq2d.evaluation.metrics import QueryResult, summarize

SIZE_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e5 ** 2)}
LENGTH_RANGES = {"1-8": (1, 9), "9-24": (9, 25), "25+": (25, None)}


def size_group(area: float) -> str:
    """The size group of a response-track area (see module docstring)."""
    for name, (low, high) in SIZE_RANGES.items():
        if low <= area < high:
            return name
    return "large"


def length_group(num_boxes: int) -> str:
    """The length group of a response track of ``num_boxes`` boxes."""
    for name, (low, high) in LENGTH_RANGES.items():
        if num_boxes >= low and (high is None or num_boxes < high):
            return name
    return "1-8"


def grouped_metrics(results: Mapping[Hashable, QueryResult], groups: Mapping[Hashable, str],
                    order: tuple[str, ...]) -> dict[str, dict]:
    """``{group: summarize(its results)}`` for every group of ``order`` that has queries
    (``groups``: result key -> group name)."""
    out = {}
    for name in order:
        subset = {k: r for k, r in results.items() if groups[k] == name}
        if subset:
            out[name] = summarize(subset)
    return out
