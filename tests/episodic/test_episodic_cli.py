"""The shared tool entry point: config values checked before anything is written, one-line
errors, and the exit status convention (0 ok, 1 error, 3 some items failed)."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from episodic.cli import (EXIT_FAILED_ITEMS, EXIT_OK, check_output_dir, config_type_problems, exit_status,
                          failure_fields, failure_lines, finish, os_error_line)
from episodic.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def test_type_problems_name_the_key_and_what_was_expected():
    defaults = {"max_iter": 400, "lr": 0.01, "resume": True, "parts": ["a"], "data": {"root": "x", "n": 2},
                "device": "auto", "maybe": None, "path": "${data.root}/y"}
    good = {"max_iter": 10, "lr": 1, "resume": False, "parts": ["b", "c"], "data": {"root": 5, "n": 3.0},
            "device": "cpu", "maybe": "abc", "path": "/z", "extra": "ok"}
    assert config_type_problems(good, defaults) == []
    assert config_type_problems({"amp": "bf16", "nlq": {"amp": "bf16"}}, {"amp": True, "nlq": {"amp": True}}) == []
    bad = {**good, "max_iter": "abc", "resume": "maybe", "parts": "a", "data": {"root": "x", "n": 2.5},
           "lr": "fast"}
    problems = config_type_problems(bad, defaults)
    assert len(problems) == 5
    assert "max_iter='abc': expected an integer (default: 400)" in problems
    assert any(p.startswith("data.n=2.5") for p in problems)
    assert any(p.startswith("resume='maybe': expected true or false") for p in problems)


def test_output_dir_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
    check_output_dir(tmp_path / "new" / "folder")  # creatable: fine, nothing made
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(DataError, match="cannot be made: .*f is not a directory"):
        check_output_dir(tmp_path / "f" / "sub")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod: simulate read-only
    with pytest.raises(DataError, match="is not writable"):
        check_output_dir(tmp_path / "out")


def test_failure_convention():
    fields = failure_fields([("clip_a", "x.mp4: cannot\n decode"), ("clip_b", "gone")])
    assert fields == {"num_failed": 2, "failed": [{"id": "clip_a", "reason": "x.mp4: cannot decode"},
                                                  {"id": "clip_b", "reason": "gone"}]}
    assert exit_status(fields) == EXIT_FAILED_ITEMS == 3
    assert exit_status(fields, allow_failures=True) == EXIT_OK
    assert exit_status(failure_fields([])) == EXIT_OK
    assert failure_lines(fields, "clips")[0] == "FAILED: 2 clips"
    with pytest.raises(SystemExit) as e:
        finish(fields)
    assert e.value.code == 3
    finish(fields, allow_failures=True)  # returns


def test_full_disk_line():
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/model.pth")) == \
        "no space left on /data/model.pth"
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/ro/x")) == "/ro/x: Permission denied"


def _tool(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_bad_value_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "run"
    proc = _tool("tools/train_vq2d.py", f"output_dir={out}", "max_iter=abc")
    assert proc.returncode == 1
    default = OmegaConf.load(REPO / "configs" / "vq2d" / "preset" / "tiny.yaml").max_iter  # the default preset's
    assert proc.stderr.strip().splitlines() == ["error: bad config value: max_iter='abc': expected an integer "
                                                f"(default: {default})"], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()  # no config.yaml with max_iter: abc


def test_non_directory_output_dir_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"version": "1", "videos": []}))
    proc = _tool("tools/eval_nlq.py", f"annotations={gt}", f"predictions={gt}", f"output_dir={tmp_path / 'taken'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: output_dir={tmp_path / 'taken'}: is not a directory"]
