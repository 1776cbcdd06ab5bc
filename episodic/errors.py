"""Errors raised on bad input. Messages name the file, the place in it and what is wrong."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data (annotation files, clips, features, predictions)."""


class AnnotationError(DataError):
    """An annotation file violates the Ego4D format.

    ``str(err)`` reads ``<file>: <json path>: <problem>``, e.g.
    ``vq_val.json: videos[3].clips[0].annotations[1].query_sets["2"].response_track[4]:
    width must be > 0 (got 0)``.
    """

    def __init__(self, file: str, where: str, problem: str):
        self.file, self.where, self.problem = str(file), where, problem
        super().__init__(f"{self.file}: {where}: {problem}" if where else f"{self.file}: {problem}")
