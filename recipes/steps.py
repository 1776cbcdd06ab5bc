"""A small step runner for the end-to-end recipes: each step runs one tool of ``tools/`` as a
subprocess (``sys.executable tools/<tool>.py key=value ...`` from the repository root, as a
user would), streams its output to ``<output_dir>/logs/<step>.log``, times it and prints a
one-line status. A failed step raises :class:`StepFailed` naming the step and its log.

Skip-if-done: a finished step leaves ``<output_dir>/steps/<step>.json`` (its command line,
time, a stamp of the run and the stamps of the steps it depends on). With ``resume=True`` a
step is not run again when its record holds the same command line and the same stamps of
its dependencies and of the files it reads (``watch``: the tool's config files and groups; for
the data step also the generators' code)
and its declared outputs all exist, unchanged since the step made them (their files' names,
sizes and modification times are recorded, so replacing a data file re-runs the step that
made it and, through the stamps, every step that read it); a step that runs again says
why. The tools themselves resume inside a step (training
from ``last_checkpoint``, VQ2D evaluation per clip). A step whose dependencies were re-run
or whose config files changed since its record was written starts from scratch: its
``clean`` folder (inside the recipe's output folder) is removed first, so no tool resumes
from results made with other inputs. With ``resume=False`` every step runs from scratch.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from episodic.io import atomic_write_json, read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
LOGS_DIR = "logs"
RECORDS_DIR = "steps"
_TAIL_LINES = 15


class StepFailed(RuntimeError):
    """A recipe step exited with an error; the message names the step, the command and the log."""


@dataclass
class StepResult:
    name: str      # step name (also the log file's name)
    seconds: float  # wall time of the run (of the original run when skipped)
    skipped: bool  # True when an earlier run's result was reused
    log: str       # path of the step's log file


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (progress-bar carriage returns split into lines)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    rows = [r for r in text.replace("\r", "\n").splitlines() if r.strip()]
    return "\n".join("    " + r for r in rows[-lines:])


class StepRunner:
    """Runs a recipe's steps in order (see module docstring). Steps may also run from two
    threads at once (a recipe running two independent chains side by side, one per core):
    the statuses stay whole lines and the step numbers unique.

    Args:
        output_dir: the recipe's output folder (logs/ and steps/ go there).
        resume: skip steps already done with the same command line.
        python: interpreter of the tools (default: this one).
        cwd: folder the tools run in (default: the repository root).
        stream: where the one-line statuses go.
        env: extra environment variables of the tools.
    """

    def __init__(self, output_dir: str | os.PathLike, *, resume: bool = True, python: str = sys.executable,
                 cwd: str | os.PathLike = REPO_ROOT, stream: TextIO | None = None, env: dict | None = None):
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.python = python
        self.cwd = Path(cwd)
        self.stream = stream if stream is not None else sys.stdout
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.results: list[StepResult] = []
        self._stamps: dict[str, str] = {}  # step -> stamp of its run (this session or reused)
        self._lock = threading.RLock()
        self._count = 0  # steps started or reused so far (their numbers)
        self._open: str | None = None  # the step whose status line waits for its "ok"

    # paths ---------------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.output_dir / LOGS_DIR / f"{name}.log"

    def record_path(self, name: str) -> Path:
        return self.output_dir / RECORDS_DIR / f"{name}.json"

    # running -------------------------------------------------------------------------------
    def _say(self, text: str, end: str = "\n", step: str | None = None) -> None:
        """Write a status. ``step``: the text completes that step's open line (``end=" "``
        leaves a line open for ``step``); when another line is open, it is ended first and
        a completing text names its step."""
        with self._lock:
            if step is not None and self._open == step and end == "\n":
                self._open = None
            else:
                if self._open is not None:
                    self.stream.write("\n")
                    self._open = None
                if step is not None and end == "\n":
                    text = f"     {step}: {text}"
                elif end != "\n":
                    self._open = step
            self.stream.write(text + end)
            self.stream.flush()

    def _number(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _record(self, name: str) -> dict | None:
        try:
            return read_json(self.record_path(name)) if self.record_path(name).is_file() else None
        except Exception:  # noqa: BLE001 - a damaged record means: run again
            return None

    def _inputs(self, depends: Sequence[str], watch: Sequence[os.PathLike] = ()) -> dict:
        """The stamps of the steps ``depends`` (run or reused earlier) and, under "<config>",
        a digest of the files in ``watch`` (files or folders, relative to the tools' folder)."""
        stamps = {"<config>": config_digest([self.cwd / p for p in watch])} if watch else {}
        for dep in depends:
            if dep not in self._stamps:
                record = self._record(dep)
                if record is None:
                    raise ValueError(f"step depends on {dep!r}, which has not run")
                self._stamps[dep] = record.get("stamp")
            stamps[dep] = self._stamps[dep]
        return stamps

    def _reuse(self, name: str, command: list[str], inputs: dict, outputs: Sequence[os.PathLike],
               ) -> StepResult | None:
        record = self._record(name) if self.resume else None
        if record is None:
            return None
        reasons = _rerun_reasons(record, command, inputs, outputs)
        if reasons:
            self._say(f"     {name}: {'; '.join(reasons)}; running it again")
            return None
        self._stamps[name] = record.get("stamp")
        result = StepResult(name, float(record.get("seconds", 0.0)), True, str(self.log_path(name)))
        self.results.append(result)
        self._say(f"[{self._number():2d}] {name:<28} ... done before ({result.seconds:.1f} s), skipped")
        return result

    def _start(self, name: str, inputs: dict, clean: os.PathLike | None, prepare: Callable[[], None] | None
               ) -> float:
        record = self._record(name)
        stale = record is not None and record.get("inputs", {}) != inputs
        if clean is not None and (not self.resume or stale):
            clean = Path(clean).resolve()
            if self.output_dir.resolve() not in clean.parents:
                raise ValueError(f"step {name}: refusing to remove {clean} (outside {self.output_dir})")
            shutil.rmtree(clean, ignore_errors=True)
        self.record_path(name).unlink(missing_ok=True)
        if prepare is not None:
            prepare()
        self._say(f"[{self._number():2d}] {name:<28} ...", end=" ", step=name)
        return time.perf_counter()

    def _finish(self, name: str, command: list[str], inputs: dict, start: float,
                outputs: Sequence[os.PathLike] = ()) -> StepResult:
        seconds = time.perf_counter() - start
        stamp = uuid.uuid4().hex
        atomic_write_json(self.record_path(name), {"command": command, "inputs": inputs, "seconds": round(seconds, 2),
                                                   "stamp": stamp, "outputs": outputs_stamp(outputs)}, indent=1)
        self._stamps[name] = stamp
        result = StepResult(name, seconds, False, str(self.log_path(name)))
        self.results.append(result)
        self._say(f"ok   {seconds:7.1f} s", step=name)
        return result

    def tool(self, name: str, script: str, args: Sequence[str], *, outputs: Sequence[os.PathLike] = (),
             depends: Sequence[str] = (), clean: os.PathLike | None = None,
             prepare: Callable[[], None] | None = None, env: dict | None = None,
             watch: Sequence[os.PathLike] = ()) -> StepResult:
        """Run ``python tools/<script> <args...>`` as step ``name``.

        outputs: files/folders the step makes (all present + same command and inputs: reused).
        depends: earlier steps whose results this one reads (re-run when they were re-run).
        clean: folder removed before running from scratch (must lie in the output folder).
        prepare: called right before the step runs (not when it is reused).
        env: extra environment variables of this step (not part of its identity).
        watch: config files/folders the tool reads (relative to ``cwd``): a change re-runs it.
        """
        command = [f"tools/{script}", *map(str, args)]
        inputs = self._inputs(depends, watch)
        reused = self._reuse(name, command, inputs, outputs)
        if reused is not None:
            return reused
        start = self._start(name, inputs, clean, prepare)
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as f:
            f.write("$ " + " ".join([Path(self.python).name, *command]) + "\n")
            f.flush()
            rc = subprocess.run([self.python, *command], cwd=self.cwd, env={**self.env, **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            self._say("FAILED", step=name)
            raise StepFailed(f"step {name!r} failed (exit code {rc}): {' '.join(command)}\n"
                             f"  log: {log}\n  last lines:\n{_tail(log)}")
        return self._finish(name, command, inputs, start, outputs)

    def call(self, name: str, fn: Callable[[], object], *, key: Sequence[str] = (),
             outputs: Sequence[os.PathLike] = (), depends: Sequence[str] = ()) -> StepResult:
        """Run an in-process step ``fn()`` (e.g. writing a derived data file), timed and
        reusable like a tool step; ``key`` plays the role of the command line."""
        command = [f"<{name}>", *map(str, key)]
        inputs = self._inputs(depends)
        reused = self._reuse(name, command, inputs, outputs)
        if reused is not None:
            return reused
        start = self._start(name, inputs, None, None)
        try:
            fn()
        except Exception as e:
            self._say("FAILED", step=name)
            raise StepFailed(f"step {name!r} failed: {type(e).__name__}: {e}") from e
        return self._finish(name, command, inputs, start, outputs)

    def timings(self) -> list[dict]:
        """Every step run or skipped so far, in order (for results files and reports)."""
        return [asdict(r) for r in self.results]


def outputs_stamp(paths: Sequence[os.PathLike]) -> dict[str, list]:
    """{path: [[file relative to it, size, modification time ns], ...]} of files or folders
    (a missing path maps to []): what a step's outputs were when it finished."""
    stamp = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        stamp[str(path)] = [[str(f.relative_to(path)) if f != path else ".", f.stat().st_size, f.stat().st_mtime_ns]
                            for f in files]
    return stamp


def _rerun_reasons(record: dict, command: list[str], inputs: dict, outputs: Sequence[os.PathLike]) -> list[str]:
    """Why a step recorded as ``record`` must run again (empty: it can be reused)."""
    reasons = []
    if record.get("command") != command:
        reasons.append("its command line changed")
    old = record.get("inputs", {})
    if old.get("<config>") != inputs.get("<config>"):
        reasons.append("its config files changed")
    rerun = [dep for dep in inputs if dep != "<config>" and old.get(dep) != inputs[dep]]
    if rerun:
        reasons.append(f"{', '.join(rerun)} ran again since")
    missing = [str(p) for p in outputs if not Path(p).exists()]
    if missing:
        reasons.append(f"{missing[0]} is missing")
    elif "outputs" in record:
        now = outputs_stamp(outputs)
        changed = [p for p in now if record["outputs"].get(p) != now[p]]
        if changed:
            reasons.append(f"{changed[0]} changed since the step made it")
    return reasons


def config_digest(paths: Sequence[os.PathLike]) -> str:
    """A short hash of the names and contents of the files in ``paths`` (files or folders;
    Python's ``__pycache__`` folders left out: they differ between machines, not in content)."""
    digest = hashlib.sha1()
    for path in map(Path, paths):
        files = (sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.relative_to(path).parts)
                 if path.is_dir() else [path])
        for file in files:
            digest.update(str(file.relative_to(path.parent)).encode() + b"\0")
            digest.update(file.read_bytes() if file.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def run_or_exit(recipe: Callable[[Any], dict], cfg: Any) -> dict:
    """Run ``recipe(cfg)``; a failed step or bad input ends the program with its message
    (exit code 1) instead of a traceback."""
    from episodic.errors import DataError

    try:
        return recipe(cfg)
    except (StepFailed, DataError) as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
