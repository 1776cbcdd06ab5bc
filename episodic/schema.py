"""Typed field access for JSON annotation files, with errors that say where.

A :class:`Node` wraps one JSON value together with its file and JSON path
(``videos[3].clips[0].annotations[1].query_sets["2"]``), so every check can raise an
:class:`~episodic.errors.AnnotationError` naming the file, the place and the problem.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

from episodic.errors import AnnotationError

_MISSING = object()
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "a boolean"}

# Annotation file versions this toolkit understands: "1", "v1", "1.0", "2", "v2", "2.0".
_VERSION = re.compile(r"^v?[12](\.\d+)?$")


def check_version(version: Any, file: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise AnnotationError(file, "version", f"unknown version {version!r} (expected 1.x or 2.x)")
    return version


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Node:
    """A JSON value at a known place of a known file."""

    value: Any
    file: str
    where: str = ""

    def error(self, problem: str) -> AnnotationError:
        return AnnotationError(self.file, self.where, problem)

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.where}[{key}]"
        if key.isidentifier():
            return f"{self.where}.{key}" if self.where else key
        return f'{self.where}["{key}"]'

    def child(self, key: str | int) -> "Node":
        return Node(self.value[key], self.file, self._child_path(key))

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value and self.value[key] is not None

    def expect(self, kind: type) -> "Node":
        ok = isinstance(self.value, kind) and not (kind in (int, float) and isinstance(self.value, bool))
        if kind is float and isinstance(self.value, int) and not isinstance(self.value, bool):
            ok = True
        if not ok:
            raise self.error(f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {_describe(self.value)}")
        return self

    def field(self, key: str, default: Any = _MISSING) -> "Node":
        """The child ``key`` of an object; missing (or null) -> error unless a default is given."""
        self.expect(dict)
        if key not in self.value or self.value[key] is None:
            if default is not _MISSING:
                return Node(default, self.file, self._child_path(key))
            raise self.error(f"missing field '{key}'")
        return self.child(key)

    # Typed getters -------------------------------------------------------------------------
    def str(self, key: str, default: Any = _MISSING) -> str | None:
        node = self.field(key, default)
        return node.value if node.value is default and default is not _MISSING else node.expect(str).value

    def int(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> int | None:
        node = self.field(key, default)
        if node.value is default and default is not _MISSING:
            return default
        value = node.value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        Node(value, node.file, node.where).expect(int)
        if minimum is not None and value < minimum:
            raise node.error(f"must be >= {minimum} (got {value})")
        return value

    def float(self, key: str, default: Any = _MISSING, positive: bool = False) -> float | None:
        node = self.field(key, default)
        if node.value is default and default is not _MISSING:
            return default
        value = float(node.expect(float).value)
        if not math.isfinite(value):
            raise node.error(f"must be a finite number (got {value})")
        if positive and value <= 0:
            raise node.error(f"must be > 0 (got {value:g})")
        return value

    def bool(self, key: str, default: Any = _MISSING) -> bool | None:
        node = self.field(key, default)
        if node.value is default and default is not _MISSING:
            return default
        return node.expect(bool).value

    def items(self) -> Iterator["Node"]:
        """Children of a list."""
        self.expect(list)
        for i in range(len(self.value)):
            yield self.child(i)

    def list(self, key: str, default: Any = _MISSING) -> list["Node"]:
        node = self.field(key, default)
        if node.value is default and default is not _MISSING:
            return []
        return list(node.items())


def extras(obj: dict, known: set[str]) -> dict:
    """The fields of ``obj`` a typed structure does not model (kept for faithful round trips)."""
    return {k: v for k, v in obj.items() if k not in known}
