"""Timeline plot of predicted vs ground-truth windows for a few NLQ queries."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

from episodic.io import atomic_write_bytes
from nlq.data.annotations import NLQKey, NLQQuery


def plot_timelines(results: Sequence[Mapping], queries: Sequence[NLQQuery], path: str | Path,
                   max_queries: int = 6) -> Path | None:
    """Draw one timeline per query (``max_queries`` queries with a result, evenly spread):
    the clip as a grey bar, the GT window in green (when known) and the predicted windows
    below it, best first, fading with rank. Written atomically as PNG; returns the path
    (None when there is nothing to draw).

    results: ``{"key": NLQKey, "windows": [[s, e], ...]}`` per query (seconds in the clip).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_key = {NLQKey(*r["key"]): r for r in results}
    candidates = [q for q in queries if q.key in by_key]
    if not candidates or max_queries <= 0:
        return None
    step = max(len(candidates) / max_queries, 1.0)  # spread over the split (different clips)
    shown = [candidates[int(i * step)] for i in range(min(max_queries, len(candidates)))]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.6 * len(shown) + 0.4), squeeze=False)
    for ax, query in zip(axes[:, 0], shown):
        windows = by_key[query.key]["windows"]
        rows = len(windows) + 1
        ax.broken_barh([(0.0, query.clip_duration)], (rows - 0.4, 0.8), color="0.85")
        if query.window is not None:
            start, end = query.window
            ax.broken_barh([(start, max(end - start, 1e-3))], (rows - 0.4, 0.8), color="tab:green", label="GT")
        for rank, (start, end) in enumerate(windows):
            ax.broken_barh([(float(start), max(float(end) - float(start), 1e-3))], (rows - 1.4 - rank, 0.8),
                           color="tab:blue", alpha=max(0.25, 1.0 - 0.18 * rank))
        ax.set_yticks([rows] + [rows - 1 - r for r in range(len(windows))])
        ax.set_yticklabels(["GT"] + [f"#{r + 1}" for r in range(len(windows))], fontsize=7)
        ax.set_xlim(0.0, query.clip_duration)
        ax.set_title(textwrap.shorten(f"{query.query}  ({query.clip_uid[:8]}, q{query.query_idx})", 110),
                     fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("seconds in the clip")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
