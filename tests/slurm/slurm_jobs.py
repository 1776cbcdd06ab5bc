"""Running the scripts against the test cluster and waiting on its jobs (tests/slurm)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR",
              "SLURM_JOB_ID", "SLURM_JOBID")


def script_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if k not in LAUNCH_ENV}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    return env


def run_script(cluster: SlurmCluster, script: str, *args: str, timeout: float = 400, **env: str):
    """Run ``scripts/<script>`` from the repository root; asserts exit status 0."""
    proc = subprocess.run([str(REPO / "scripts" / script), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=script_env(cluster, **env), timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def submitted_job_id(stdout: str) -> str:
    found = re.search(r"submitted job (\d+)", stdout)
    assert found, stdout[-2000:]
    return found.group(1)


def wait_until(predicate, what: str, timeout: float, cluster: SlurmCluster | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    detail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
    queue = cluster.squeue() if cluster is not None else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s; queue {queue}\n{detail}")


def job_gone(cluster: SlurmCluster, job_id: str) -> bool:
    return not any(j["id"].split("_")[0] == job_id for j in cluster.squeue())


def release_requeued(cluster: SlurmCluster, job_id: str) -> None:
    """SLURM holds a requeued job back for ~2 minutes (BeginTime); start it at once."""
    cluster.scontrol("update", f"JobId={job_id}", "StartTime=now")
