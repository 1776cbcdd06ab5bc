"""Atomic writers leave either the old file or the whole new one, never a partial file."""
import json

import pytest

from episodic.io import atomic_open, atomic_write_json, atomic_write_text


def test_atomic_write_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"a": [1, 2], "b": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2], "b": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
