"""What the evaluation tools of both tasks share: pick the mode, report, print the metrics.

Every eval tool prints human-readable lines, then the metrics as ONE JSON object on the
last line of stdout (what scripts and the acceptance checks parse).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from omegaconf import DictConfig

from episodic.errors import DataError


def run_one_mode(cfg: DictConfig, modes: Mapping[str, Callable[[DictConfig], dict]],
                 format_metrics: Callable[[dict], list[str]]) -> dict:
    """Run the mode whose config key is set (exactly one of ``modes``' keys must be).

    A DataError (bad input: a missing file, a malformed annotation) ends the tool with its
    message and a non-zero exit, without a traceback."""
    given = [key for key in modes if cfg[key] is not None]
    if len(given) != 1:
        options = " or ".join(f"{key}=..." for key in modes)
        raise SystemExit(f"give exactly one of {options}")
    try:
        metrics: dict[str, Any] = modes[given[0]](cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print("\n".join(format_metrics(metrics)))
    print(json.dumps(metrics), flush=True)
    return metrics
