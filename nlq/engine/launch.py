"""Run a training stage here, or submit it through episodic.launch (``launcher=local|slurm``)."""
from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from episodic.launch import job_result, submit
from nlq.engine.build import resolve_train_config
from nlq.engine.trainer import train

log = logging.getLogger(__name__)

_SUBMIT_KEYS = ("executor", "folder", "name", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task",
                "mem_gb", "timeout_min", "partition", "array_parallelism", "slurm_extra", "dependency",
                "max_requeues")


def launch_training(cfg: Any) -> dict | None:
    """``train(cfg)`` in this process (torchrun starts one per GPU), or, when the config has
    a ``launcher`` node (configs/nlq/launcher), one submitit job with a task per GPU that
    requeues on preemption and resumes from ``last_checkpoint``. With ``wait`` the job's
    summary is returned (None on DDP ranks other than 0), else ``{"job_id": ...}``."""
    launcher = cfg.get("launcher")
    if launcher is None:
        return train(cfg)
    resolved = resolve_train_config(cfg)  # resolves ${hydra:...} here: the job has no hydra context
    params = {key: OmegaConf.to_object(launcher[key]) if OmegaConf.is_config(launcher[key]) else launcher[key]
              for key in _SUBMIT_KEYS if key in launcher}
    job = submit(train, resolved, **params)
    log.info("submitted %s job %s; logs in %s", params.get("executor"), job.job_id, job.paths.folder)
    if not cfg.wait:
        return {"job_id": str(job.job_id)}
    return job_result(job)
