"""What the recipes show a user: results tables (text), bar charts of the headline metrics
(matplotlib Agg, PNG) and the ``README.md`` of a recipe's output folder."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

from episodic.io import atomic_write_bytes, atomic_write_text

RESULTS_FILE = "results.json"  # what a recipe measured (the interface of `make demo` / `make reproduce`)
TIMINGS_FILE = "timings.json"  # the steps of the run and their wall time
PICTURES_DIR = "pictures"      # the charts and the tools' plots worth a look

# Headline metrics, in table order. VQ2D: stAP/tAP and bg_peak_score are on a 0-1 scale,
# the others in percent; NLQ: all percent.
VQ2D_COLUMNS = ("ap_pos", "ap_posneg", "bg_peak_score", "stAP@0.25", "stAP", "tAP@0.25", "tAP", "success",
                "recovery")
VQ2D_PERCENT = ("ap_pos", "ap_posneg", "success", "recovery")
VQ2D_UNIT = ("bg_peak_score", "stAP@0.25", "tAP@0.25", "stAP", "tAP")
NLQ_COLUMNS = ("R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1.0 else f"{value:.2f}"
    return str(value)


def format_table(rows: Mapping[str, Mapping], columns: Sequence[str], first: str = "run") -> str:
    """A fixed-width text table: one row per ``rows`` entry, one column per metric key."""
    header = [first, *columns]
    body = [[name, *(_cell(metrics.get(c)) for c in columns)] for name, metrics in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in body]
    return "\n".join(lines)


def results_tables(vq2d: Mapping[str, Mapping], nlq: Mapping[str, Mapping]) -> str:
    """The VQ2D and NLQ tables of a recipe (rows: runs)."""
    return ("VQ2D (val; ap_* = frame AP %, bg_peak_score = mean best score on frames without the object)\n"
            + format_table(vq2d, VQ2D_COLUMNS, "detector")
            + "\n\nNLQ (val; recall and mIoU in %)\n" + format_table(nlq, NLQ_COLUMNS, "training"))


def publish(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file a tool made (a submission, a plot) into the recipe's output folder, atomically."""
    atomic_write_bytes(dst, Path(src).read_bytes())
    return Path(dst)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _spread(values: Mapping, metric: str) -> float:
    """Standard deviation over the seeds of a run averaged by the reproduce recipe (0 without)."""
    import numpy as np

    seeds = [m.get(metric) for m in (values.get("per_seed") or {}).values()]
    seeds = [v for v in seeds if isinstance(v, (int, float))]
    return float(np.std(seeds)) if len(seeds) > 1 else 0.0


def _bars(ax, runs: Mapping[str, Mapping], metrics: Sequence[str], ylabel: str) -> None:
    """Grouped bars: one group per metric, one bar per run (error bar: the seed spread)."""
    import numpy as np

    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(metrics))
    for i, (name, values) in enumerate(runs.items()):
        heights = [float(values.get(m) or 0.0) for m in metrics]
        errors = [_spread(values, m) for m in metrics]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width, label=name,
                      yerr=errors if any(errors) else None, capsize=2)
        ax.bar_label(bars, fmt="%.2f" if max(heights, default=0.0) <= 1.0 else "%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, metrics, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def bar_chart(path: str | os.PathLike, panels: Sequence[tuple[str, Mapping[str, Mapping], Sequence[str], str]],
              title: str) -> Path:
    """One PNG of grouped bar charts; ``panels``: (panel title, {run: metrics}, metric keys,
    y label) each, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [max(4.5, 0.35 * len(metrics) * len(runs) + 1.5) for _, runs, metrics, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 4.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (name, runs, metrics, ylabel) in zip(axes[0], panels):
        _bars(ax, runs, metrics, ylabel)
        ax.set_title(name, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def vq2d_panels(runs: Mapping[str, Mapping]) -> list:
    return [("VQ2D: percent", runs, VQ2D_PERCENT, "%"), ("VQ2D: 0-1 scale", runs, VQ2D_UNIT, "")]


def nlq_panels(runs: Mapping[str, Mapping]) -> list:
    return [("NLQ val", runs, NLQ_COLUMNS, "%")]


def format_steps(timings: Sequence[Mapping]) -> str:
    """The steps of a run, their time and whether they were reused."""
    rows = {t["name"]: {"seconds": round(float(t["seconds"]), 1), "reused": "yes" if t["skipped"] else ""}
            for t in timings}
    return format_table(rows, ("seconds", "reused"), "step")


def write_readme(path: str | os.PathLike, *, title: str, summary: Sequence[str], tables: str,
                 pictures: Sequence[tuple[str, str]], notes: Sequence[str] = (), timings: Sequence[Mapping] = ()
                 ) -> Path:
    """The ``README.md`` of a recipe's output folder. ``pictures``: (caption, path relative to
    the README) each; ``summary`` and ``notes``: markdown lines."""
    parts = [f"# {title}", "", *summary, "", "## Results", "", "```", tables, "```", ""]
    if notes:
        parts += ["## Notes", "", *notes, ""]
    if pictures:
        parts += ["## Pictures", ""]
        for caption, rel in pictures:
            parts += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    if timings:
        parts += ["## Steps", "", "Logs: `logs/<step>.log`.", "", "```", format_steps(timings), "```", ""]
    atomic_write_text(path, "\n".join(parts))
    return Path(path)
