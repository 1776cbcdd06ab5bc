"""Check a VQ2D challenge submission before sending it.

The rules are those of the official ``validate_challenge_predictions.py`` /
``evaluate_vq.py`` (structure, counts, keys): ``version`` equals the annotation file's,
``challenge`` is ``ego4d_vq2d_challenge``; videos, clips and annotations follow the
annotation file in order and number (uids must agree); every query set the official code
reads as valid has an entry ``{"bboxes", "score"}`` and no entry names an unknown query
set. Boxes are read as the official scorer reads them (docs/vq2d.md#submission): any
finite numbers, so float, negative or out-of-frame coordinates are valid; what the
official scorer would raise on (frames not contiguous, a box without a field, a score
that is not a number) is a problem. Likely mistakes it accepts (a flipped box, a frame
given twice, a NaN score) are warnings. The checks are made while reading the file
(:mod:`vq2d.evaluation.predictions`), so scoring and validation never disagree.
"""
from __future__ import annotations

import os
from typing import Any

from episodic.errors import DataError
from episodic.io import read_json
from vq2d.data.annotations import VQAnnotationFile, parse_vq_annotations
from vq2d.evaluation.ground_truth import valid_query_sets
from vq2d.evaluation.predictions import read_submission


def check_submission(sub: Any, annotations: VQAnnotationFile, raw: Any = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of ``sub`` (a decoded submission), each naming its place.
    ``raw``: the annotation file's decoded JSON, whose ``is_valid`` flags decide which
    query sets need an answer (default: the valid query sets of ``annotations``)."""
    keys = None if raw is None else [k for k, _ in valid_query_sets(raw)]
    _, problems, warnings = read_submission(sub, annotations, keys)
    return problems, warnings


def validate_submission(sub: Any, annotations: VQAnnotationFile, raw: Any = None) -> list[str]:
    """Every problem of ``sub`` (a decoded submission), each naming its place; [] = valid."""
    return check_submission(sub, annotations, raw)[0]


def check_submission_file(annotations_path: str | os.PathLike, submission_path: str | os.PathLike
                          ) -> tuple[list[str], list[str], int]:
    """Check a submission file. Returns (problems, warnings, number of query sets that need
    an answer); an unreadable or malformed submission is one problem. A bad annotation
    file raises; a malformed query set in it is still required (the official code reads
    it as valid)."""
    raw = read_json(annotations_path)
    annotations = parse_vq_annotations(raw, str(annotations_path), strict=False)
    num_queries = sum(1 for _ in valid_query_sets(raw))
    try:
        sub = read_json(submission_path)
    except DataError as e:
        return [str(e)], [], num_queries
    problems, warnings = check_submission(sub, annotations, raw)
    return problems, warnings, num_queries


def validate_submission_file(annotations_path: str | os.PathLike,
                             submission_path: str | os.PathLike) -> tuple[list[str], int]:
    """(problems, number of query sets that need an answer) of a submission file."""
    problems, _, num_queries = check_submission_file(annotations_path, submission_path)
    return problems, num_queries
