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


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, expected):
    import os
    import stat

    import torch

    from episodic.io import atomic_torch_save, atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        atomic_write_bytes(tmp_path / "x.bin", b"1")
        atomic_torch_save(tmp_path / "model.pth", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("metrics.json", "x.bin", "model.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_full_disk_names_the_folder_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_json(path, {"new": 2})
    assert e.value.errno == errno.ENOSPC
    assert e.value.strerror == f"no space left on {tmp_path} (writing metrics.json; the previous file is unchanged)"
    assert json.loads(path.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
