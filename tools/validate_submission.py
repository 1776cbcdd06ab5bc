"""Check a VQ2D challenge submission file against its annotation file before uploading.

    python tools/validate_submission.py annotations=vq_test_unannotated.json submission=sub.json

Exits 0 when the file is valid (warnings, e.g. flipped boxes, are printed but do not make it
invalid: the official scorer accepts them); otherwise prints every problem and exits 1.
"""
from __future__ import annotations

from omegaconf import DictConfig

from episodic.cli import tool_main
from episodic.errors import DataError
from vq2d.evaluation.validate import check_submission_file


@tool_main("../configs/vq2d", "validate_submission")
def main(cfg: DictConfig) -> None:
    try:
        problems, warnings, num_queries = check_submission_file(cfg.annotations, cfg.submission)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    for w in warnings:
        print(f"warning: {w}")
    if problems:
        print("\n".join(problems))
        raise SystemExit(f"INVALID: {cfg.submission}: {len(problems)} problems")
    print(f"OK: {cfg.submission} answers all {num_queries} valid query sets"
          + (f" ({len(warnings)} warnings)" if warnings else ""))


if __name__ == "__main__":
    main()
