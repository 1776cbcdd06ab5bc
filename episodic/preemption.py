"""Preemption: SLURM's SIGTERM and submitit's timeout signal stop training at a step boundary.

SLURM ends a job that is preempted, requeued (``scontrol requeue``) or cancelled by sending
SIGTERM to every process of the job, DataLoader workers included, and SIGKILL ``KillWait``
seconds later (30 s by default). submitit asks for its own signal (SIGUSR2, or
``SIG$SUBMITIT_PREEMPT_SIGNAL``) ``slurm_signal_delay_s`` before the time limit, and on some
clusters at preemption; its handler requeues the job and exits at once, mid-step.

Both trainers (vq2d.engine.trainer, nlq.engine.trainer) instead::

    with StopOnSignal() as stop:
        shield_loader(loader)                 # workers ignore these signals
        for step in ...:
            train_one_step()
            if stop.should_stop():            # collective: every rank stops at the same step
                save_checkpoint()
                stop.exit()                   # requeue (submitit's signal) or SystemExit(128 + sig)

so a preempted run loses at most the step in flight (it is finished, then saved) and resumes
from ``last_checkpoint`` at the step where it stopped. The loader workers and the forkserver
that starts them ignore the signals (the main process alone decides), so no "DataLoader worker
exited unexpectedly" traceback. See docs/slurm.md#slurm.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import torch

from episodic import distributed

logger = logging.getLogger(__name__)

SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's setting (default USR2)


def submitit_signal() -> signal.Signals:
    """The signal submitit sends before the time limit (and at preemption on some clusters)."""
    name = "SIG" + os.environ.get(SUBMITIT_SIGNAL_ENV, "USR2").upper().removeprefix("SIG")
    sig = getattr(signal.Signals, name, None)
    if sig is None:
        raise ValueError(f"{SUBMITIT_SIGNAL_ENV}={os.environ[SUBMITIT_SIGNAL_ENV]!r} is not a signal name")
    return sig


def preemption_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM (SLURM's preemption, requeue, cancel) and submitit's timeout signal."""
    return tuple(dict.fromkeys((signal.SIGTERM, submitit_signal())))


class StopOnSignal:
    """While active (``with``), the preemption signals only record a stop request.

    The training loop calls :meth:`should_stop` once per step on every rank, saves a
    checkpoint when it returns True and calls :meth:`exit`. Outside the main thread (where
    Python cannot set handlers) it is inactive and never asks to stop.

    Args:
        signals: the signals to catch (default :func:`preemption_signals`).
    """

    def __init__(self, signals: Iterable[int] | None = None):
        self.signals = tuple(signals) if signals is not None else preemption_signals()
        self.signum: int | None = None  # the first signal received
        self.received_at: float | None = None  # time.monotonic() of that signal
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether this process received a signal (no communication)."""
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:  # keep the first; logging is left to the loop (not signal-safe)
            self.signum, self.received_at = signum, time.monotonic()

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: preemption signals are not caught")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self) -> bool:
        """Whether any rank received a signal. Collective in DDP: call it on every rank at
        the same point of every step."""
        flag = torch.tensor([1.0 if self.requested else 0.0])
        if distributed.get_world_size() > 1:
            flag = distributed.all_reduce_mean(flag)
        return bool(flag.item() > 0)

    def describe(self) -> str:
        if self.signum is None:
            return "a signal on another rank"
        waited = time.monotonic() - (self.received_at or time.monotonic())
        return f"{signal.Signals(self.signum).name} ({waited:.1f} s ago)"

    def exit(self, where: str) -> NoReturn:
        """Leave after the checkpoint of ``where`` (e.g. "iteration 57") was saved.

        On submitit's signal, submitit's own handler runs now (rank 0 requeues the job and
        exits); otherwise (SIGTERM: SLURM requeues or cancels the job itself) the process
        exits with status 128 + the signal number, without a traceback.
        """
        signum = self.signum if self.signum is not None else signal.SIGTERM
        logger.warning("stopping at %s on %s: checkpoint saved; resume with the same command or let the job "
                       "requeue (docs/slurm.md#slurm)", where, self.describe())
        previous = self._previous.get(signum)
        self.__exit__()
        if signum != signal.SIGTERM and callable(previous):
            previous(signum, None)  # submitit: checkpoint() + scontrol requeue + exit on rank 0
        raise SystemExit(128 + int(signum))


# --------------------------------------------------------------------- loader workers
class _IgnoreSignals:
    """Picklable ``worker_init_fn``: ignore ``signals``, then run the loader's own init."""

    def __init__(self, signals: tuple[int, ...], inner: Callable[[int], Any] | None):
        self.signals, self.inner = signals, inner

    def __call__(self, worker_id: int) -> None:
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


def start_forkserver(signals: Iterable[int] | None = None) -> None:
    """Start the forkserver (and the resource tracker) with the preemption ``signals`` ignored,
    so that they and the workers they fork ignore them too (a dead forkserver takes its workers
    along). Call it before anything starts a forkserver process (a trainer calls it first
    thing); no-op when one already runs."""
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        return
    sigs = tuple(signals) if signals is not None else preemption_signals()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        forkserver.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_method(loader: torch.utils.data.DataLoader) -> str:
    context = loader.multiprocessing_context
    if context is None:
        return multiprocessing.get_start_method()
    return context if isinstance(context, str) else context.get_start_method()


def shield_loader(loader: torch.utils.data.DataLoader | None, signals: Iterable[int] | None = None) -> None:
    """Make the worker processes of ``loader`` ignore the preemption ``signals`` (default
    :func:`preemption_signals`): the main process handles them and shuts the workers down.
    Call it before the loader's first iterator is created. No-op without workers."""
    if loader is None or loader.num_workers == 0:
        return
    sigs = tuple(signals) if signals is not None else preemption_signals()
    if not isinstance(loader.worker_init_fn, _IgnoreSignals):
        loader.worker_init_fn = _IgnoreSignals(sigs, loader.worker_init_fn)
    if _start_method(loader) == "forkserver":
        start_forkserver(sigs)
