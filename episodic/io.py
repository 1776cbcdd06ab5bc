"""Atomic file output: a reader never sees a half-written file.

Every writer goes to a temporary file in the destination folder, flushes it and
renames it over the destination (``os.replace`` is atomic on POSIX). The file gets the
mode a plain ``open`` would give it (0644 under umask 022), not ``mkstemp``'s 0600, so
colleagues on a shared machine can read outputs and checkpoints.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore (briefly changes it for other threads)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. A full disk
    (ENOSPC, also when torch.save wraps it in a RuntimeError) is raised as an OSError
    reading "no space left on <folder> (writing <name>; the previous file is unchanged)".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if disk_full(e) and not getattr(e, "explained", False):
            raise no_space_error(path) from e
        raise


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` or an exception it was raised from is ENOSPC (torch.save reports a
    full disk as ``RuntimeError: [enforce fail at inline_container.cc...]`` raised while
    handling the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def no_space_error(path: str | os.PathLike, note: str = "the previous file is unchanged") -> OSError:
    """The OSError(ENOSPC) every writer raises on a full disk; its text names the folder."""
    path = Path(path)
    error = OSError(errno.ENOSPC, f"no space left on {path.parent} (writing {path.name}; {note})")
    error.explained = True
    return error


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON (deterministic key order as given, UTF-8)."""
    # json.dumps + one write is several times faster than json.dump's many small writes
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a parse error names the file, line and column."""
    from episodic.errors import DataError

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
