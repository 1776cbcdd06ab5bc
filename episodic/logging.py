"""Run logs: python logging to stdout + ``log.txt``, TensorBoard scalars, tqdm progress bars.

Everything here is rank-aware: only the main process writes files, draws progress bars
and TensorBoard events; other ranks print warnings and errors only.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from episodic.distributed import is_main_process

LOG_FILE = "log.txt"
TENSORBOARD_DIR = "tensorboard"
_FORMAT = "[%(asctime)s %(levelname)s %(name)s{rank}] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"
_OURS = "_episodic_handler"  # attribute marking the handlers this module installed


def _is_replaceable(handler: logging.Handler) -> bool:
    """Handlers installed by a previous call, or hydra's plain console/file handlers."""
    if getattr(handler, _OURS, False):
        return True
    if type(handler) is logging.FileHandler:
        return True
    return type(handler) is logging.StreamHandler and handler.stream in (
        sys.stdout,
        sys.stderr,
        sys.__stdout__,
        sys.__stderr__,
    )


def setup_logging(output_dir: str | Path | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger for a run; returns it.

    Rank 0 logs ``level`` and above to stdout and to ``output_dir/log.txt`` (appended, so a
    requeued job continues the same file). Other ranks print only warnings and errors,
    tagged with their rank. Plain console/file handlers already on the root logger (those
    hydra installs) are replaced, so lines are not printed twice; calling it again is safe.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if _is_replaceable(handler):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter(_FORMAT.format(rank="" if rank == 0 else f" rank{rank}"), datefmt=_DATEFMT)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(level if rank == 0 else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if rank == 0 and output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / LOG_FILE, mode="a", encoding="utf-8"))
        handlers[-1].setLevel(level)
    for handler in handlers:
        handler.setFormatter(fmt)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(level)
    return root


class TensorboardLogger:
    """TensorBoard events in ``output_dir/tensorboard``, written by the main process only.

    Args:
        output_dir: the run's output folder.
        enabled: write events; ``None`` means "on the main process". When False every
            method is a no-op, so callers never test the rank themselves.
    """

    def __init__(self, output_dir: str | Path, enabled: bool | None = None):
        self.enabled = is_main_process() if enabled is None else bool(enabled)
        self.log_dir = Path(output_dir) / TENSORBOARD_DIR
        self._writer = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """One scalar (python number, numpy scalar or 0-d tensor)."""
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), global_step=int(step))

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Several scalars, each under its own tag (e.g. ``{"loss/total": 0.3, "lr": 0.02}``)."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """A matplotlib figure (closed after writing)."""
        if self._writer is not None:
            self._writer.add_figure(tag, fig, global_step=int(step), close=True)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorboardLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str | None = None,
    enabled: bool | None = None,
    **tqdm_kwargs: Any,
) -> tqdm:
    """A tqdm bar shown on the main process only, and only when stderr is a terminal.

    ``enabled=None`` means "on the main process"; ``enabled=False`` always hides it. The
    returned object iterates like ``iterable`` and supports ``update``/``set_postfix``.
    """
    show = is_main_process() if enabled is None else bool(enabled)
    return tqdm(iterable, total=total, desc=desc, disable=None if show else True, dynamic_ncols=True, **tqdm_kwargs)
