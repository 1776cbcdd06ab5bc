"""Check a VQ2D challenge submission before sending it.

The rules are those the challenge server applies, plus the box rules of docs/vq2d.md#submission:
``version`` equals the annotation file's, ``challenge`` is ``ego4d_vq2d_challenge``;
videos, clips and annotations follow the annotation file in order and number (uids must
agree); every valid query set has an entry and no entry names an unknown query set; boxes
have integer ``fno, x1, y1, x2, y2``, non-negative, ``x2 > x1``, ``y2 > y1``, on contiguous
frames; scores are finite numbers. The checks are made while reading the file
(:mod:`vq2d.evaluation.predictions`), so scoring and validation never disagree.
"""
from __future__ import annotations

import os
from typing import Any

from episodic.errors import DataError
from episodic.io import read_json
from vq2d.data.annotations import VQAnnotationFile, load_vq_annotations
from vq2d.evaluation.predictions import read_submission


def validate_submission(sub: Any, annotations: VQAnnotationFile) -> list[str]:
    """Every problem of ``sub`` (a decoded submission), each naming its place; [] = valid."""
    return read_submission(sub, annotations)[1]


def validate_submission_file(annotations_path: str | os.PathLike,
                             submission_path: str | os.PathLike) -> tuple[list[str], int]:
    """Validate a submission file. Returns (problems, number of valid query sets); an
    unreadable or malformed submission is one problem. A bad annotation file raises; a
    malformed query set in it is treated as invalid (not required)."""
    annotations = load_vq_annotations(annotations_path, strict=False)
    num_queries = len(annotations.queries())
    try:
        sub = read_json(submission_path)
    except DataError as e:
        return [str(e)], num_queries
    return validate_submission(sub, annotations), num_queries
