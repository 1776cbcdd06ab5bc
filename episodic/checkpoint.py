"""Training checkpoints: atomic saves, a ``last_checkpoint`` pointer, pruning, RNG state.

Layout of an output folder written by :class:`Checkpointer`::

    output_dir/model_0005000.pth   periodic checkpoints (the newest ``keep_last`` are kept)
    output_dir/model_best.pth      never pruned (nor any name starting "model_best"/"model_final")
    output_dir/model_final.pth
    output_dir/last_checkpoint     text file holding the NAME of the newest checkpoint

A trainer resumes by calling ``Checkpointer(output_dir).load()`` at start-up: it returns
the state dict of the newest checkpoint, or ``None`` for a fresh run. This is what makes a
preempted SLURM job that is requeued (see :mod:`episodic.launch`) continue where it stopped.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodic.errors import DataError
from episodic.io import atomic_torch_save, atomic_write_text, disk_full, no_space_error

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
PROTECTED_PREFIXES = ("model_best", "model_final")


def _natural_key(name: str) -> list:
    """Sort key ordering "model_9.pth" before "model_10.pth"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class Checkpointer:
    """Saves and finds checkpoints in one output folder.

    Args:
        output_dir: folder holding the checkpoints and the ``last_checkpoint`` pointer.
        keep_last: how many periodic checkpoints to keep (the newest ones); ``None`` keeps
            all. Names starting with "model_best" or "model_final" are never pruned.
        periodic_glob: which files of ``output_dir`` count as periodic checkpoints when
            pruning; other files of the folder are never touched.
    """

    def __init__(self, output_dir: str | Path, keep_last: int | None = 3, periodic_glob: str = "model_*.pth"):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (got {keep_last})")
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.periodic_glob = periodic_glob
        self.loaded: Path | None = None  # the file the last load() read

    @property
    def pointer_path(self) -> Path:
        return self.output_dir / LAST_CHECKPOINT_FILE

    def save(self, name: str, state: dict[str, Any]) -> Path:
        """Write ``state`` to ``output_dir/name`` atomically, point ``last_checkpoint`` at it, prune.

        If writing fails, the exception propagates and the previous checkpoint and
        ``last_checkpoint`` are left untouched; a full disk is an OSError(ENOSPC) reading
        "no space left on <folder> (writing <name>; the previous checkpoint <name> is kept)".
        """
        if Path(name).name != name or name == LAST_CHECKPOINT_FILE:
            raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
        path = self.output_dir / name
        try:
            atomic_torch_save(path, state)
        except OSError as e:
            if not disk_full(e):
                raise
            previous = self.pointer_path.read_text(encoding="utf-8").strip() if self.pointer_path.is_file() else None
            raise no_space_error(path, f"the previous checkpoint {previous} is kept" if previous
                                 else "no checkpoint written") from e
        atomic_write_text(self.pointer_path, name + "\n")
        logger.info("saved checkpoint %s", path)
        self._prune(keep=path)
        return path

    def latest(self) -> Path | None:
        """Path of the newest checkpoint, or ``None`` when ``last_checkpoint`` does not exist."""
        if not self.pointer_path.is_file():
            return None
        name = self.pointer_path.read_text(encoding="utf-8").strip()
        if not name:
            raise DataError(f"{self.pointer_path}: empty file, expected a checkpoint file name")
        path = self.output_dir / name
        if not path.is_file():
            raise DataError(f"{self.pointer_path}: names {name!r} but {path} does not exist")
        return path

    def has_checkpoint(self) -> bool:
        return self.pointer_path.is_file()

    def load(
        self, path: str | Path | None = None, map_location: Any = "cpu", weights_only: bool = False
    ) -> dict[str, Any] | None:
        """Load a checkpoint (``path``, or the newest one when ``path`` is None).

        Returns ``None`` when ``path`` is None and no checkpoint exists yet. ``weights_only``
        defaults to False because a training state holds more than tensors (optimizer and
        RNG state, metric values); only load files this toolkit wrote.
        """
        if path is None:
            return self._load_newest_readable(map_location, weights_only)
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: checkpoint file not found")
        logger.info("loading checkpoint %s", path)
        self.loaded = path
        return torch.load(path, map_location=map_location, weights_only=weights_only)

    def _load_newest_readable(self, map_location: Any, weights_only: bool) -> dict[str, Any] | None:
        """The newest checkpoint that loads: ``last_checkpoint``'s, else (truncated, e.g. by a
        full disk or a kill outside the atomic writer) the newest readable periodic one, with
        a warning naming both. None for a fresh run; DataError when none is readable."""
        latest = self.latest()
        if latest is None:
            return None
        older = [p for p in reversed(self.periodic_checkpoints()) if p != latest]
        problems = []
        for path in [latest, *older]:
            try:
                state = torch.load(path, map_location=map_location, weights_only=weights_only)
            except Exception as e:  # noqa: BLE001 - a truncated / corrupt file: try the next one
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                problems.append(f"{path.name}: {reason}")
                continue
            if path != latest:
                logger.warning("%s is unreadable (%s); resuming from %s, the newest readable checkpoint",
                               latest, problems[0], path.name)
            else:
                logger.info("loading checkpoint %s", path)
            self.loaded = path
            return state
        raise DataError(f"{self.output_dir}: no readable checkpoint to resume from ({'; '.join(problems)}); "
                        f"remove {LAST_CHECKPOINT_FILE} to start over")

    def periodic_checkpoints(self) -> list[Path]:
        """Periodic checkpoints in the folder, oldest first (protected names excluded)."""
        files = [p for p in self.output_dir.glob(self.periodic_glob) if p.is_file() and self._is_periodic(p)]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, _natural_key(p.name)))

    def _is_periodic(self, path: Path) -> bool:
        return path.match(self.periodic_glob) and not path.name.startswith(PROTECTED_PREFIXES)

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        candidates = [p for p in self.periodic_checkpoints() if p != keep]
        # the checkpoint just saved is always kept; it uses one of the keep_last slots if periodic
        n_keep = self.keep_last - 1 if self._is_periodic(keep) else self.keep_last
        for old in candidates[: max(len(candidates) - n_keep, 0)]:
            old.unlink(missing_ok=True)
            logger.info("pruned old checkpoint %s", old)


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of the python ``random``, numpy global, torch CPU and CUDA generators.

    The result holds only python ints/lists/strings and tensors, so it can be saved in a
    checkpoint (loadable with ``weights_only=True``). In DDP each rank has its own state:
    gather them with :func:`episodic.distributed.all_gather_object` to save all of them.
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by :func:`capture_rng_state`.

    CUDA states are restored for as many devices as both the snapshot and this machine have.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for device, cuda_state in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
