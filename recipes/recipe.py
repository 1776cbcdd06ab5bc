"""The frame every recipe (``make demo``, ``make reproduce``) shares: resolve its folders,
generate the data set as its first step, and at the end write ``OUT/results.json`` and the
step timings."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

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

    def side_by_side(self, main: Callable[..., Any], side: Callable[..., Any], parallel: bool) -> tuple[Any, Any]:
        """Run two independent chains of steps; returns ``(main's result, side's result)``. Each
        is called as ``f(self.runner, root=..., out=..., data_step=...)``. With ``parallel``,
        ``side`` runs in a second thread while ``main`` runs here (VQ2D training keeps one core
        busy and leaves the other mostly idle); otherwise one after the other. A failure is
        raised only after the other chain has ended (``main``'s first when both fail)."""
        paths = dict(root=self.root, out=self.out, data_step=self.data_step)
        first, second = run_together([partial(main, self.runner, **paths), partial(side, self.runner, **paths)],
                                     parallel=parallel)
        return first, second

    def finish(self, vq2d: Any, nlq: Any, **extra: Any) -> dict:
        """Write and return ``{"vq2d": vq2d, "nlq": nlq, **extra, "seconds": total}``
        (OUT/results.json) and the step timings (OUT/timings.json)."""
        results = {"vq2d": vq2d, "nlq": nlq, **extra, "seconds": round(time.perf_counter() - self.start, 1)}
        atomic_write_json(self.out / RESULTS_FILE, results, indent=2)
        atomic_write_json(self.out / TIMINGS_FILE, self.runner.timings(), indent=1)
        return results


def run_together(calls: list[Callable[[], Any]], parallel: bool) -> list[Any]:
    """Call each of ``calls`` (independent chains of steps of one thread-safe StepRunner) and
    return their results in order: with ``parallel`` the first here and each other one in a
    thread of its own, else one after the other. A failure is raised only after every chain
    has ended (the first failing chain's, in the order of ``calls``)."""
    if not parallel or len(calls) < 2:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls) - 1, thread_name_prefix="side") as pool:
        others = [pool.submit(call) for call in calls[1:]]
        try:
            first = calls[0]()
        except BaseException:
            for other in others:  # let the other chains end first
                other.exception()
            raise
        return [first, *(other.result() for other in others)]
