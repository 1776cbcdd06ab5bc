"""The data step of the recipes: the synthetic mini-Ego4D through ``tools/make_synthetic.py``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from episodic.config import to_container
from recipes.steps import StepRunner

SUMMARY_FILE = "v2/synthetic_summary.json"  # written last by make_synthetic
DATA_DIRS = ("v2/annotations", "v2/clips")  # a change in them re-runs the data step and what read it
# what the data set is a function of besides seed and knobs: the generators' code and the tool's config
# (a generator change re-makes the data, and through the stamps every step that read it)
GENERATOR_SOURCES = ("configs/make_synthetic.yaml", "tools/make_synthetic.py", "recipes/synthetic.py",
                     "vq2d/data/synthetic", "nlq/data/synthetic.py", "nlq/data/synthetic_language.py",
                     "nlq/data/synthetic_world.py")
FRAME_CACHE = "frame_cache"  # JPEG frames extracted from the clips by the VQ2D tools (default location)


def override_value(value: Any) -> str:
    """A python value as a hydra command-line value (lists/numbers/bools as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def generator_overrides(synthetic: Mapping[str, Mapping] | None) -> list[str]:
    """``{"vq2d": {knob: v}, "nlq": {knob: v}}`` -> ``["+vq2d.knob=v", "+nlq.knob=v", ...]``."""
    synthetic = to_container(synthetic) or {}
    args = []
    for task in ("vq2d", "nlq"):
        for knob, value in (synthetic.get(task) or {}).items():
            args.append(f"+{task}.{knob}={override_value(value)}")
    return args


def generate(runner: StepRunner, name: str, *, root: Path, seed: int, preset: str,
             synthetic: Mapping[str, Mapping] | None = None) -> str:
    """Step ``name``: write the synthetic data set to ``root`` (reused when an earlier run of
    the recipe wrote it with the same settings and the same generator code,
    ``GENERATOR_SOURCES``). Returns the step name (for ``depends``).

    The frame cache under ``root`` is removed before generating: its JPEGs belong to the old
    clips, and clip uids can repeat between data sets made with the same seed."""
    def drop_frame_cache() -> None:
        shutil.rmtree(Path(root) / FRAME_CACHE, ignore_errors=True)

    runner.tool(name, "make_synthetic.py", [f"out={root}", f"seed={seed}", f"preset={preset}",
                                            *generator_overrides(synthetic)],
                outputs=[Path(root) / SUMMARY_FILE, *(Path(root) / d for d in DATA_DIRS)], prepare=drop_frame_cache,
                watch=GENERATOR_SOURCES)
    return name
