"""What every tool of ``tools/`` shares: the hydra entry point, the exit status, the output
of evaluation tools.

Exit status of every tool (docs/architecture.md#exit-status):

* 0 (:data:`EXIT_OK`): success.
* 1 (:data:`EXIT_ERROR`): a usage, config or input error, or an output that cannot be
  written (a bad value such as ``max_iter=abc``, a missing or malformed file, a read-only
  or non-directory ``output_dir``, a full disk): ONE line ``error: ...`` on stderr, no
  traceback. Config values are checked before anything is written.
* 3 (:data:`EXIT_FAILED_ITEMS`): the run finished, but some items (clips, queries) failed;
  the outputs count them (``num_failed``) and name them (``failed``: id and one-line
  reason). ``allow_failures=true`` turns this 3 into 0.

Every eval tool prints human-readable lines, then the metrics as ONE JSON object on the
last line of stdout (what scripts and the acceptance checks parse).
"""
from __future__ import annotations

import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from episodic.errors import DataError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILED_ITEMS = 3
MAX_SHOWN_FAILURES = 20  # failed items printed on the summary (all of them go to the JSON)
BOOL_OR_WORD_KEYS = ("amp",)  # true/false or a word (amp=bf16): not checked as booleans


# Failures of items ------------------------------------------------------------------------------
def failure_fields(failures: Iterable[tuple[str, str]]) -> dict:
    """``{"num_failed": n, "failed": [{"id": ..., "reason": ...}]}`` for (item id, reason)
    pairs: the keys every tool puts in its metrics / summary JSON."""
    failed = [{"id": str(item), "reason": " ".join(str(reason).split())} for item, reason in failures]
    return {"num_failed": len(failed), "failed": failed}


def failure_lines(result: Mapping, what: str = "items") -> list[str]:
    """Summary lines naming the failed items of ``result`` (empty when none failed)."""
    failed = result.get("failed") or []
    if not result.get("num_failed"):
        return []
    lines = [f"FAILED: {result['num_failed']} {what}"]
    lines += [f"  {f['id']}: {f['reason']}" for f in failed[:MAX_SHOWN_FAILURES]]
    if len(failed) > MAX_SHOWN_FAILURES:
        lines.append(f"  ... and {len(failed) - MAX_SHOWN_FAILURES} more (see the JSON)")
    return lines


def exit_status(result: Mapping, allow_failures: bool = False) -> int:
    """:data:`EXIT_FAILED_ITEMS` when ``result["num_failed"]`` > 0 (unless ``allow_failures``)."""
    return EXIT_FAILED_ITEMS if result.get("num_failed") and not allow_failures else EXIT_OK


def finish(result: Mapping, allow_failures: bool = False) -> None:
    """End a tool whose run is done: exit 3 when items failed (with a line on stderr saying
    so), else return."""
    status = exit_status(result, allow_failures)
    if status != EXIT_OK:
        print(f"{result['num_failed']} failed; exit status {status} (allow_failures=true exits 0)",
              file=sys.stderr, flush=True)
        raise SystemExit(status)


# The evaluation tools ---------------------------------------------------------------------------
def run_one_mode(cfg: DictConfig, modes: Mapping[str, Callable[[DictConfig], dict]],
                 format_metrics: Callable[[dict], list[str]], what_failed: str = "queries") -> dict:
    """Run the mode whose config key is set (exactly one of ``modes``' keys must be), then
    :func:`report_metrics`.

    A DataError (bad input: a missing file, a malformed annotation) ends the tool with its
    message and a non-zero exit, without a traceback."""
    given = [key for key in modes if cfg[key] is not None]
    if len(given) != 1:
        options = " or ".join(f"{key}=..." for key in modes)
        raise SystemExit(f"give exactly one of {options}")
    try:
        metrics: dict[str, Any] = modes[given[0]](cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    return report_metrics(metrics, format_metrics, what_failed, bool(cfg.get("allow_failures", False)))


def report_metrics(metrics: dict, format_metrics: Callable[[dict], list[str]], what_failed: str = "queries",
                   allow_failures: bool = False) -> dict:
    """Print the metrics of an evaluation (``format_metrics`` gets them without the failure
    keys), the failed items, then the JSON line; exit 3 when items failed (see the module
    docstring). Returns ``metrics``."""
    shown = {k: v for k, v in metrics.items() if k not in ("num_failed", "failed")}
    print("\n".join(format_metrics(shown) + failure_lines(metrics, what_failed)))
    print(json.dumps(metrics), flush=True)
    finish(metrics, allow_failures)
    return metrics


# Checks before anything is written -------------------------------------------------------------
def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _lookup(node: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _interpolation(value: Any) -> bool:
    return isinstance(value, str) and ("${" in value or value == "???")


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (None when it can)."""
    if default is None or value is None or _interpolation(default) or _interpolation(value):
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok or (isinstance(value, float) and value.is_integer()) else "expected an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "expected a number"
    if isinstance(default, list):
        return None if isinstance(value, list) else "expected a list [...]"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "expected a mapping {...}"
    return None


def config_type_problems(cfg: Any, defaults: Any) -> list[str]:
    """One line per value of ``cfg`` whose type does not fit the value it replaced in
    ``defaults`` (both configs or plain dicts; keys missing from ``defaults`` are not checked)."""
    def plain(c):
        return OmegaConf.to_container(c, resolve=False) if isinstance(c, (DictConfig, ListConfig)) else c

    given, reference = plain(cfg), plain(defaults)
    problems = []
    for key, value in _leaves(given):
        found, default = _lookup(reference, key)
        problem = _type_problem(value, default) if found else None
        if problem and isinstance(default, bool) and key.rsplit(".", 1)[-1] in BOOL_OR_WORD_KEYS:
            problem = None
        if problem:
            problems.append(f"{key}={value!r}: {problem} (default: {default!r})")
    return problems


def check_config_types(cfg: DictConfig) -> None:
    """Inside a hydra app: compare every value of ``cfg`` with the default it replaced (the
    config composed with the same config-group choices but no value overrides); a value of
    the wrong type (``max_iter=abc``) is a DataError naming the key."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # called outside a hydra app: nothing to compare with
        return
    hydra_cfg = HydraConfig.get()
    groups = set(hydra_cfg.runtime.choices)
    keep = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in groups]
    try:
        defaults = compose(config_name=hydra_cfg.job.config_name, overrides=keep)
    except Exception:  # noqa: BLE001 - no reference: nothing to compare with
        return
    problems = config_type_problems(cfg, defaults)
    if problems:
        raise DataError("bad config value: " + "; ".join(problems))


def check_output_dir(path: str | os.PathLike | None, key: str = "output_dir") -> None:
    """A DataError when ``path`` cannot be a writable folder: it (or a parent) is a file, or
    the nearest existing folder is not writable. Nothing is created."""
    if path is None or str(path) == "":
        return
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a directory" if existing == path else f"cannot be made: {existing} is not a directory"
        raise DataError(f"{key}={path}: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{key}={path}: {existing} is not writable")


def os_error_line(e: OSError) -> str:
    """One line for an OSError met while writing (a full disk says so)."""
    where = e.filename or ""
    if e.errno == errno.ENOSPC:
        return f"no space left on {where}" if where else (e.strerror or str(e))
    if e.strerror and where:
        return f"{where}: {e.strerror}"
    return str(e)


def tool_main(config_path: str, config_name: str, version_base: str | None = "1.3"
              ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` for the tools, with the shared checks and exit status: the config's
    value types and ``output_dir`` are checked before the tool runs (writes) anything; a
    DataError or OSError ends the tool with one ``error:`` line and exit status 1."""
    import hydra

    def decorate(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)  # hydra unwraps __wrapped__ to find the tool's config folder
        def run(cfg: DictConfig) -> Any:
            try:
                check_config_types(cfg)
                check_output_dir(cfg.get("output_dir"))
                return fn(cfg)
            except DataError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_ERROR) from None
            except OSError as e:
                print(f"error: {os_error_line(e)}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_ERROR) from None

        return hydra.main(version_base=version_base, config_path=config_path, config_name=config_name)(run)

    return decorate
