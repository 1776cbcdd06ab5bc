"""The one launcher of the project: run a function locally, in-process or on SLURM via submitit.

Training and evaluation tools of both tasks call::

    job = submit(train_fn, cfg, executor="slurm", folder=out / "submitit" / "%j", name="vq2d",
                 nodes=1, gpus_per_node=8, timeout_min=4320, partition="learnfair")
    jobs = submit_array(eval_shard_fn, [shard_cfg_0, shard_cfg_1, ...], executor="slurm", ...)

``fn`` runs once per task (one task per GPU, ``tasks_per_node = gpus_per_node``; ``nodes x
tasks_per_node`` ranks in all, over which the trainers split their global batch) and gets
its ranks from :func:`episodic.distributed.init_distributed`. It is wrapped in
:class:`Trainable`, whose ``checkpoint()`` makes submitit requeue a preempted or timed-out
job with the same arguments; the function then resumes from ``output_dir/last_checkpoint``
(see :class:`episodic.checkpoint.Checkpointer`), so it must be written to resume. SLURM's
SIGTERM (preemption, ``scontrol requeue``) and submitit's timeout signal are caught by the
trainers (:mod:`episodic.preemption`): they save after the current step and exit; the
requeued job then loses nothing. See docs/slurm.md#slurm.

Executors: "slurm" (a cluster), "local" (subprocesses on this machine, same code path as
SLURM: pickling, one process per task, timeout signal), "debug" (in this process, on
``job.result()``; for pdb).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import DelayedSubmission

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "debug")
SLURM_SIGNAL_DELAY_S = 120  # time between the preemption signal and the kill: enough to exit cleanly


class Trainable:
    """Callable that submitit requeues on preemption or timeout.

    Either wrap a function (``Trainable(train)(cfg)`` calls ``train(cfg)``) or subclass and
    override :meth:`run`. The instance is pickled again at requeue, so keep it light: the
    training state comes back from the output folder's last checkpoint, not from ``self``.
    """

    def __init__(self, fn: Callable[..., Any] | None = None):
        self.fn = fn
        self.requeues = 0  # how many times this job was requeued so far

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise NotImplementedError("pass a function to Trainable(fn) or override Trainable.run")
        return self.fn(*args, **kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on the preemption/timeout signal: resubmit this callable as is."""
        self.requeues += 1
        logger.warning("%s: preempted or timed out, requeueing (requeue #%d)", self, self.requeues)
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        target = getattr(self.fn, "__qualname__", repr(self.fn)) if self.fn is not None else type(self).__name__
        return f"Trainable({target})"


def slurm_parameters(
    partition: str | None = None,
    array_parallelism: int | None = None,
    extra: Mapping[str, Any] | None = None,
    dependency: str | None = None,
) -> dict[str, Any]:
    """Everything cluster-specific, as ``slurm_*`` keyword arguments for ``AutoExecutor``.

    ``extra`` holds the site's settings, e.g. ``{"constraint": "volta32gb", "account": "ego4d",
    "qos": "high", "comment": "deadline", "exclude": "node[01-02]"}``. Keys submitit knows
    (any ``SlurmExecutor`` parameter) are passed by name; any other key becomes a raw
    ``#SBATCH --key=value`` line. ``None`` values are dropped.

    ``dependency``: SLURM's ``--dependency``, e.g. ``"afterok:1234"`` (start after job 1234
    succeeded; the NaQ recipe chains its stage 2 this way); the job is cancelled when the
    dependency can no longer be met (``--kill-on-invalid-dep=yes``).
    """
    from submitit.slurm.slurm import SlurmExecutor

    known = SlurmExecutor._valid_parameters()
    params: dict[str, Any] = {"slurm_signal_delay_s": SLURM_SIGNAL_DELAY_S}
    if partition:
        params["slurm_partition"] = partition
    if array_parallelism:
        params["slurm_array_parallelism"] = int(array_parallelism)
    raw: dict[str, Any] = {}
    if dependency:
        params["slurm_dependency"] = str(dependency)
        raw["kill-on-invalid-dep"] = "yes"
    for key, value in dict(extra or {}).items():
        if value is None:
            continue
        if key in known:
            params[f"slurm_{key}"] = value
        else:
            raw[key] = value
    if raw:
        params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}), **raw}
    return params


def executor_parameters(
    executor: str,
    *,
    name: str,
    nodes: int = 1,
    gpus_per_node: int = 0,
    tasks_per_node: int | None = None,
    cpus_per_task: int | None = None,
    mem_gb: float | None = None,
    timeout_min: int = 60,
    partition: str | None = None,
    array_parallelism: int | None = None,
    slurm_extra: Mapping[str, Any] | None = None,
    dependency: str | None = None,
) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords for one launch (see :func:`submit`)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if executor == "local" and nodes != 1:
        raise ValueError(f"the local executor runs on one node, got nodes={nodes}")
    if dependency and executor != "slurm":
        raise ValueError(f"dependency={dependency!r} needs the slurm executor (got {executor!r})")
    params: dict[str, Any] = {
        "name": name,
        "nodes": int(nodes),
        "gpus_per_node": int(gpus_per_node),
        "tasks_per_node": int(tasks_per_node or max(gpus_per_node, 1)),
        "timeout_min": int(timeout_min),
        "cpus_per_task": None if cpus_per_task is None else int(cpus_per_task),
        "mem_gb": mem_gb,
    }
    if executor == "slurm":
        params.update(slurm_parameters(partition, array_parallelism, slurm_extra, dependency))
    return {k: v for k, v in params.items() if v is not None}


def make_executor(
    executor: str, folder: str | Path, max_requeues: int = 3, **parameters: Any
) -> submitit.AutoExecutor:
    """A submitit executor of kind ``executor`` ("local", "slurm", "debug") with ``parameters``.

    ``max_requeues``: how many times a preempted/timed-out job is requeued.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    ctor: dict[str, Any] = {}
    if executor in ("local", "slurm"):
        ctor[f"{executor}_max_num_timeout"] = int(max_requeues)
    ex = submitit.AutoExecutor(folder=str(folder), cluster=executor, **ctor)
    ex.update_parameters(**parameters)
    return ex


def _requeueable(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn if hasattr(fn, "checkpoint") else Trainable(fn)


def submit(
    fn: Callable[[Any], Any],
    cfg_or_args: Any,
    *,
    executor: str = "local",
    folder: str | Path,
    name: str = "episodic",
    nodes: int = 1,
    gpus_per_node: int = 0,
    tasks_per_node: int | None = None,
    cpus_per_task: int | None = None,
    mem_gb: float | None = None,
    timeout_min: int = 60,
    partition: str | None = None,
    array_parallelism: int | None = None,
    slurm_extra: Mapping[str, Any] | None = None,
    dependency: str | None = None,
    max_requeues: int = 3,
) -> submitit.Job:
    """Run ``fn(cfg_or_args)`` as one job; returns the submitit job (``job.result()`` waits).

    Args:
        fn: a picklable function (module-level) or :class:`Trainable`; plain functions are
            wrapped in :class:`Trainable` so that the job is requeued on preemption.
        cfg_or_args: the single argument given to ``fn`` (an OmegaConf config, a namespace).
        executor: "local", "slurm" or "debug".
        folder: submitit's folder for pickles and logs; may contain ``%j`` (the job id).
        name: job name.
        nodes, gpus_per_node: resources; one task per GPU unless ``tasks_per_node`` is given.
        cpus_per_task, mem_gb, timeout_min: resources per task / node / job (SLURM; the
            local executor honours only ``timeout_min``).
        partition, array_parallelism, slurm_extra, dependency: cluster settings, see
            :func:`slurm_parameters`.
        max_requeues: requeues allowed after preemption or timeout.
    """
    params = executor_parameters(
        executor,
        name=name,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tasks_per_node=tasks_per_node,
        cpus_per_task=cpus_per_task,
        mem_gb=mem_gb,
        timeout_min=timeout_min,
        partition=partition,
        array_parallelism=array_parallelism,
        slurm_extra=slurm_extra,
        dependency=dependency,
    )
    ex = make_executor(executor, folder, max_requeues=max_requeues, **params)
    job = ex.submit(_requeueable(fn), cfg_or_args)
    logger.info("submitted %s job %s (%s); logs: %s", executor, job.job_id, name, job.paths.stdout)
    return job


def _local_gpu_groups(num_jobs: int, gpus_per_job: int) -> list[tuple[int, ...]]:
    """Round-robin GPU ids for local array jobs, so shards do not all land on GPU 0."""
    import torch

    available = torch.cuda.device_count()
    if gpus_per_job <= 0 or available < gpus_per_job:
        return [()] * num_jobs  # LocalExecutor default: GPUs 0..gpus_per_job-1
    return [tuple((i * gpus_per_job + k) % available for k in range(gpus_per_job)) for i in range(num_jobs)]


def submit_array(
    fn: Callable[[Any], Any],
    list_of_args: Sequence[Any],
    *,
    executor: str = "local",
    folder: str | Path,
    name: str = "episodic",
    gpus_per_node: int = 0,
    max_requeues: int = 3,
    **resources: Any,
) -> list[submitit.Job]:
    """Run ``fn(args)`` for every element of ``list_of_args`` as independent jobs (sharded eval).

    On SLURM this is one job array (at most ``array_parallelism`` running at once). Locally
    every shard starts at once as its own process; with ``gpus_per_node > 0`` shards are
    spread round-robin over this machine's GPUs. Other keywords as in :func:`submit`.
    Returns the jobs in the order of ``list_of_args``.
    """
    if len(list_of_args) == 0:
        return []
    params = executor_parameters(executor, name=name, gpus_per_node=gpus_per_node, **resources)
    ex = make_executor(executor, folder, max_requeues=max_requeues, **params)
    wrapped = _requeueable(fn)
    if executor != "local" or gpus_per_node == 0:
        jobs = ex.map_array(wrapped, list_of_args)
    else:
        jobs = []
        local_executor = ex._executor  # visible_gpus is a LocalExecutor-only parameter
        for args, gpus in zip(list_of_args, _local_gpu_groups(len(list_of_args), gpus_per_node)):
            local_executor.update_parameters(visible_gpus=gpus)
            jobs.append(ex.submit(wrapped, args))
    logger.info("submitted %d %s jobs (%s) in %s", len(jobs), executor, name, folder)
    return jobs


def job_result(job: submitit.Job) -> Any:
    """Wait for ``job`` and return its first task's result. A job of several tasks (DDP with
    ``tasks_per_node`` > 1) has no single ``result()``: submitit raises there; every task
    returns, and rank 0's value is the run's."""
    return job.results()[0]
