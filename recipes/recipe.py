"""The frame every recipe (``make demo``, ``make reproduce``) shares: resolve its folders,
generate the data set as its first step, and at the end write ``OUT/results.json`` and the
step timings."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from episodic.io import atomic_write_json
from recipes.data import SUMMARY_FILE, generate
from recipes.report import RESULTS_FILE, TIMINGS_FILE, publish
from recipes.steps import StepRunner

DATA_SUMMARY = "data_summary.json"  # OUT/: the generated data set's summary (copied from the data root)


@dataclass
class RecipeRun:
    """One run of a recipe. ``root``/``out``: absolute data root and output folder (the tools
    are given absolute paths: tools/train_nlq.py misreads a relative data.root)."""

    root: Path
    out: Path
    runner: StepRunner
    data_step: str  # name of the data step, for ``depends``
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def begin(cls, name: str, cfg: Any) -> "RecipeRun":
        """Print where ``name`` works, then run (or reuse) the data step of ``cfg`` (data.root,
        output_dir, resume, seed, preset, synthetic) and copy its summary to OUT/."""
        start = time.perf_counter()
        root, out = Path(cfg.data.root).resolve(), Path(cfg.output_dir).resolve()
        runner = StepRunner(out, resume=bool(cfg.resume))
        print(f"{name}: data {root}, outputs {out}", flush=True)
        data_step = generate(runner, "data", root=root, seed=int(cfg.seed), preset=str(cfg.preset),
                             synthetic=cfg.get("synthetic"))
        publish(root / SUMMARY_FILE, out / DATA_SUMMARY)
        return cls(root, out, runner, data_step, start)

    def finish(self, vq2d: Any, nlq: Any, **extra: Any) -> dict:
        """Write and return ``{"vq2d": vq2d, "nlq": nlq, **extra, "seconds": total}``
        (OUT/results.json) and the step timings (OUT/timings.json)."""
        results = {"vq2d": vq2d, "nlq": nlq, **extra, "seconds": round(time.perf_counter() - self.start, 1)}
        atomic_write_json(self.out / RESULTS_FILE, results, indent=2)
        atomic_write_json(self.out / TIMINGS_FILE, self.runner.timings(), indent=1)
        return results
