"""Process-group setup and collective helpers that also work in a single process.

:func:`init_distributed` finds the ranks from, in this order:

1. torchrun / ``torch.distributed.run`` environment (``RANK``, ``WORLD_SIZE``,
   ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
2. a submitit job (SLURM or the local executor): ranks from ``submitit.JobEnvironment()``,
   ``MASTER_ADDR`` = the job's first node, ``MASTER_PORT`` derived from the job id, so that
   every task of the job agrees without talking;
3. otherwise a single process: no process group is created.

A process group is created only when the world size is above 1. Every helper below
(``barrier``, ``all_reduce_mean``, ``all_gather_object`` ...) is a no-op or identity
without a process group, so training code calls them unconditionally.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_PORT_RANGE = (20000, 60000)  # MASTER_PORT for submitit jobs is picked in this range


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _torchrun_ranks() -> tuple[int, int, int] | None:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world_size, int(os.environ.get("LOCAL_RANK", rank))


def _master_port_for_job(job_id: str) -> int:
    """A port every task of one job computes identically (differs between jobs)."""
    digest = int(hashlib.sha1(job_id.encode()).hexdigest(), 16)
    return _PORT_RANGE[0] + digest % (_PORT_RANGE[1] - _PORT_RANGE[0])


def _submitit_ranks() -> tuple[int, int, int] | None:
    """Ranks of a submitit job; also sets MASTER_ADDR/PORT for ``init_method=env://``."""
    if not os.environ.get("SUBMITIT_EXECUTOR") and "SUBMITIT_DEBUG_JOB_ID" not in os.environ:
        return None
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # submitit variables present but no known environment
        return None
    if env.num_nodes > 1:
        master = env.hostnames[0]
    else:
        master = "127.0.0.1"
    os.environ.setdefault("MASTER_ADDR", master)
    os.environ.setdefault("MASTER_PORT", str(_master_port_for_job(str(env.job_id))))
    return env.global_rank, env.num_tasks, env.local_rank


def init_distributed(
    backend: str | None = None, device: str | None = None, timeout_min: float = 30.0
) -> DistInfo:
    """Initialise ``torch.distributed`` when launched by torchrun or submitit with >1 process.

    Args:
        backend: "nccl" or "gloo"; default nccl on GPU, gloo on CPU.
        device: "cuda" or "cpu" to force one; default cuda when available. On GPU each
            process uses ``cuda:<local_rank>``.
        timeout_min: collective timeout.
    Returns:
        a :class:`DistInfo`; world size 1 (no process group) outside a launcher.
    """
    ranks = _torchrun_ranks() or _submitit_ranks() or (0, 1, 0)
    rank, world_size, local_rank = ranks
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if world_size > 1 and not dist.is_initialized():
        # env:// reads MASTER_ADDR/PORT; rank and world size are passed explicitly
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_min),
            device_id=dev if backend == "nccl" else None,
        )
        logger.info("process group %s: rank %d/%d, local rank %d, %s", backend, rank, world_size, local_rank, dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if _initialized() and get_world_size() > 1:
        dist.barrier()


def _communication_device(tensor: torch.Tensor) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (any shape); a new tensor, on the input's device.

    Integer tensors are averaged as float64. Single process: a detached copy.
    """
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    if not _initialized() or get_world_size() == 1:
        return out
    work = out.to(_communication_device(out))
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    work /= get_world_size()
    return work.to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Picklable ``obj`` of every process, in rank order (``[obj]`` in a single process)."""
    if not _initialized() or get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if _initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (CPU + CUDA) with ``seed + rank``; returns that seed.

    Different ranks get different streams (data augmentation differs per process) while
    the run stays reproducible for a fixed world size.
    """
    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)  # also seeds every CUDA device
    return effective
