"""``tools/train_vq2d.py ... max_iter=0``: check a training config before a long job.

Builds the model of the config, loads its initial weights (``model.weights``), builds the
optimiser, prints what was loaded and skipped, writes the merged config to ``output_dir``
and stops: no data is read and nothing is trained (docs/vq2d.md#training).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from episodic.config import save_config
from episodic.logging import setup_logging
from vq2d.engine import build
from vq2d.modeling.build import build_model, load_weights

logger = logging.getLogger(__name__)


def dry_run(cfg) -> dict[str, Any]:
    """Model + initial weights + optimiser of the merged train config ``cfg``; returns
    ``{"parameters", "trainable_parameters", "weights": {...counts and names}, "config"}``."""
    output_dir = Path(cfg.output_dir)
    setup_logging(output_dir)
    config_path = save_config(cfg, output_dir)
    model_cfg = build.model_config(cfg)
    model = build_model(build.inference_config(model_cfg))
    weights = model_cfg["weights"]
    report = load_weights(model, weights["format"], weights["path"])
    build.build_optimizer(cfg, model)  # the parameter groups of the preset must build too
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {
        "parameters": params,
        "trainable_parameters": trainable,
        "weights": {"format": weights["format"], "path": weights["path"],
                    "loaded": len(report.loaded) if report else 0,
                    "skipped": len(report.ignored) if report else 0,
                    "skipped_names": report.ignored if report else [],
                    "missing": report.missing if report else [],
                    "unexpected": report.unexpected if report else []},
        "config": str(config_path),
    }
    if report is None:
        print("dry run: random init (model.weights.format=none)")
    else:
        print(f"dry run: {weights['format']} weights from {weights['path']}: loaded {len(report.loaded)} tensors, "
              f"skipped {len(report.ignored)} by name, missing {len(report.missing)}, "
              f"unexpected {len(report.unexpected)}")
        if report.ignored:
            prefixes = sorted({".".join(k.split(".")[:2]) for k in report.ignored})
            print(f"dry run: skipped parts: {', '.join(prefixes)}")
    print(f"dry run: {params:,} parameters, {trainable:,} trainable; merged config: {config_path}")
    return summary
