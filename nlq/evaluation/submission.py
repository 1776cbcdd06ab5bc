"""NLQ challenge submission files (docs/nlq.md#metrics).

```
{"version": "1.0", "challenge": "ego4d_nlq_challenge",
 "results": [{"clip_uid", "annotation_uid", "query_idx", "predicted_times": [[s, e] x 5]}]}
```
Windows are seconds relative to the clip, best first. Predictions are always written to a
file first (:func:`write_submission`) and that file is scored
(:func:`nlq.evaluation.scoring.score_predictions_file`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Collection, Iterable, Mapping

from episodic.errors import DataError
from episodic.io import atomic_write_json, read_json
from nlq.data.annotations import NLQAnnotationFile, NLQKey

VERSION = "1.0"
CHALLENGE = "ego4d_nlq_challenge"
NUM_WINDOWS = 5


def _as_float(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def result_entry(result: Mapping) -> dict:
    """One ``results`` entry from a per-sample result: the key (``key``: NLQKey / 3-tuple, or
    ``clip_uid``, ``annotation_uid``, ``query_idx``) and the windows (``predicted_times`` or
    the models' ``windows``: [[s, e], ...] best first, lists / numpy / tensors)."""
    if "key" in result:
        key = NLQKey(*result["key"])
    else:
        key = NLQKey(result["clip_uid"], result["annotation_uid"], result["query_idx"])
    windows = result["predicted_times"] if "predicted_times" in result else result["windows"]
    if hasattr(windows, "tolist"):
        windows = windows.tolist()
    return {"clip_uid": str(key.clip_uid), "annotation_uid": str(key.annotation_uid),
            "query_idx": int(key.query_idx),
            "predicted_times": [[_as_float(s), _as_float(e)] for s, e in windows]}


def build_submission(results: Iterable[Mapping]) -> dict:
    """The challenge dict for per-sample results (see :func:`result_entry`), in the given order."""
    return {"version": VERSION, "challenge": CHALLENGE, "results": [result_entry(r) for r in results]}


def write_submission(sub: Mapping, path: str | os.PathLike) -> None:
    """Write a submission dict atomically."""
    atomic_write_json(path, dict(sub))


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """The ``results`` of a predictions file; a wrong version / challenge or a missing
    ``results`` list is a DataError naming the file."""
    sub = read_json(path)
    if not isinstance(sub, dict):
        raise DataError(f"{path}: expected a JSON object with version, challenge and results")
    if sub.get("version") != VERSION:
        raise DataError(f"{path}: version must be {VERSION!r} (got {sub.get('version')!r})")
    if sub.get("challenge") != CHALLENGE:
        raise DataError(f"{path}: challenge must be {CHALLENGE!r} (got {sub.get('challenge')!r})")
    if not isinstance(sub.get("results"), list):
        raise DataError(f"{path}: 'results' must be a list")
    return sub["results"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry_problems(entry: Any, where: str) -> tuple[NLQKey | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"{where}: expected an object, got {type(entry).__name__}"]
    problems = []
    for name in ("clip_uid", "annotation_uid"):
        if not isinstance(entry.get(name), str):
            problems.append(f"{where}: '{name}' must be a string (got {entry.get(name)!r})")
    idx = entry.get("query_idx")
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        problems.append(f"{where}: 'query_idx' must be an integer >= 0 (got {idx!r})")
    key = None if problems else NLQKey(entry["clip_uid"], entry["annotation_uid"], idx)
    if key is not None:
        where = f"{where} ({key.clip_uid}, {key.annotation_uid}, {key.query_idx})"
    times = entry.get("predicted_times")
    if not isinstance(times, list):
        problems.append(f"{where}: 'predicted_times' must be a list of {NUM_WINDOWS} [start, end] windows")
        return key, problems
    if len(times) != NUM_WINDOWS:
        problems.append(f"{where}: 'predicted_times' has {len(times)} windows, expected {NUM_WINDOWS}")
    for j, window in enumerate(times):
        if not (isinstance(window, list) and len(window) == 2 and all(_is_number(v) for v in window)):
            problems.append(f"{where}: predicted_times[{j}] must be [start, end] finite numbers (got {window!r})")
        elif window[1] < window[0]:
            problems.append(f"{where}: predicted_times[{j}] ends before it starts ({window[0]:g} > {window[1]:g})")
    return key, problems


def validate_submission(sub: Any, annotations: NLQAnnotationFile, unanswered: Collection[NLQKey] = ()) -> list[str]:
    """Every problem of a submission against its annotation file, one line each (empty = valid):
    header fields, malformed entries, windows, unknown / duplicated / missing queries
    (every query with text must be answered once, except those of ``unanswered``: queries
    already counted as failed, e.g. for want of features)."""
    if not isinstance(sub, dict):
        return [f"submission must be a JSON object (got {type(sub).__name__})"]
    problems = []
    if sub.get("version") != VERSION:
        problems.append(f"'version' must be {VERSION!r} (got {sub.get('version')!r})")
    if sub.get("challenge") != CHALLENGE:
        problems.append(f"'challenge' must be {CHALLENGE!r} (got {sub.get('challenge')!r})")
    results = sub.get("results")
    if not isinstance(results, list):
        return problems + ["'results' must be a list"]
    expected = {q.key for q in annotations.queries()}
    seen: set[NLQKey] = set()
    for i, entry in enumerate(results):
        key, entry_problems = _entry_problems(entry, f"results[{i}]")
        problems.extend(entry_problems)
        if key is None:
            continue
        if key not in expected:
            problems.append(f"results[{i}]: query ({key.clip_uid}, {key.annotation_uid}, {key.query_idx}) "
                            f"is not a query of {annotations.path or 'the annotation file'}")
        elif key in seen:
            problems.append(f"results[{i}]: query ({key.clip_uid}, {key.annotation_uid}, {key.query_idx}) "
                            "is answered more than once")
        seen.add(key)
    for q in annotations.queries():
        if q.key not in seen and q.key not in unanswered:
            problems.append(f"missing prediction for query ({q.clip_uid}, {q.annotation_uid}, {q.query_idx}): "
                            f"{q.query!r}")
    return problems
