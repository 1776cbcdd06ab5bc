"""VQ2D through a real SLURM (the commands of docs/slurm.md#slurm, on CPU): the evaluation as a
job array merged into one metrics.json; training with 2 tasks (DDP over gloo across SLURM
tasks); a training job requeued with ``scontrol requeue`` that resumes where it stopped."""
from __future__ import annotations

import json
import re

import pytest
from slurm_jobs import job_gone, release_requeued, run_script, submitted_job_id, wait_until

pytestmark = pytest.mark.slurm

CPU_TRAIN = ["launcher.gpus_per_node=0", "launcher.cpus_per_task=1", "launcher.mem_gb=2", "threads=1",
             "log_period=1", "eval.period=0", "eval.at_end=false", "model.min_size=[64]", "model.max_size=96"]


def test_eval_job_array_merges_the_shards(slurm_cluster, vq2d_data, tmp_path):
    out = tmp_path / "eval"
    proc = run_script(slurm_cluster, "slurm_eval_vq2d.sh", vq2d_data / "model_final.pth", out,
                      f"data.root={vq2d_data / 'data'}", "split=val", "device=cpu", "gpus_per_worker=0",
                      "detection.frame_height=null", PARTITION="debug", WORKERS="2", CPUS_PER_TASK="1", MEM_GB="2")
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == metrics
    assert metrics["num_queries"] == len(json.loads((out / "per_query.json").read_text())) > 0
    # one array of two tasks: <array id>_0 and <array id>_1 each left a result
    results = sorted(p.name for p in (out / "submitit").rglob("*_result.pkl"))
    assert len(results) == 2 and len({r.split("_")[0] for r in results}) == 1, results
    assert {r.split("_")[1] for r in results} == {"0", "1"}


def test_training_with_two_tasks_runs_ddp_across_slurm_tasks(slurm_cluster, vq2d_data, tmp_path):
    """2 ranks (gloo) in one job; requeued, both ranks stop after the same iteration and resume there."""
    out = tmp_path / "train2"
    max_iter = 12
    proc = run_script(slurm_cluster, "slurm_train_vq2d.sh", "debug", out, f"data.root={vq2d_data / 'data'}",
                      f"max_iter={max_iter}", "batch_size=2", "launcher.tasks_per_node=2", "data.num_workers=0",
                      *CPU_TRAIN, PRESET="tiny")
    job = submitted_job_id(proc.stdout)
    log = out / "log.txt"
    wait_until(lambda: log.is_file() and re.search(rf"iter [2-9]/{max_iter}", log.read_text()), "iteration 2",
               300, slurm_cluster, log)
    slurm_cluster.scontrol("requeue", job)
    wait_until(lambda: "stopping at iteration" in log.read_text(), "checkpoint on SIGTERM", 60, slurm_cluster, log)
    stopped = int(re.search(r"stopping at iteration (\d+)", log.read_text()).group(1))
    wait_until(lambda: any(j["id"] == job and j["state"] == "PENDING" for j in slurm_cluster.squeue()),
               f"job {job} back in the queue", 90, slurm_cluster, log)
    release_requeued(slurm_cluster, job)
    wait_until(lambda: job_gone(slurm_cluster, job), f"job {job} done", 300, slurm_cluster, log)
    text = log.read_text()
    assert text.count("batch 2 (1 per process x 2)") == 2, text[-3000:]  # the global batch split over 2 ranks
    assert f"at iteration {stopped}\n" in text and f"iter {max_iter}/{max_iter}" in text
    assert (out / "model_final.pth").is_file()
    errors = "".join(p.read_text() for p in (out / "submitit").rglob("*_log.err"))
    assert "Traceback" not in errors, errors[-3000:]


def test_requeued_training_resumes_where_it_stopped(slurm_cluster, vq2d_data, tmp_path):
    """submitit's timeout signal (USR2: submitit requeues), then ``scontrol requeue`` (SIGTERM):
    each time the job saves the iteration it is at, is requeued and resumes there."""
    out = tmp_path / "requeue"
    max_iter = 40  # periodic checkpoints at 20 and 40: the resume points come from the signals
    proc = run_script(slurm_cluster, "slurm_train_vq2d.sh", "debug", out, f"data.root={vq2d_data / 'data'}",
                      f"max_iter={max_iter}", "checkpoint.period=20", "launcher.tasks_per_node=1",
                      "launcher.mem_gb=4", "data.num_workers=1", *CPU_TRAIN, PRESET="tiny")
    job = submitted_job_id(proc.stdout)
    log = out / "log.txt"

    def iteration() -> int:
        done = re.findall(rf"iter (\d+)/{max_iter}", log.read_text()) if log.is_file() else []
        return int(done[-1]) if done else 0

    def interrupt(at: int, signal_job, expected: str) -> int:
        """Signal the job at iteration >= ``at``; returns the iteration it stopped at, once it is queued again."""
        wait_until(lambda: iteration() >= at, f"iteration {at}", 300, slurm_cluster, log)
        before = log.read_text().count("stopping at iteration")
        signal_job()
        wait_until(lambda: log.read_text().count("stopping at iteration") > before, "checkpoint on the signal",
                   60, slurm_cluster, log)
        stopped = int(re.findall(rf"stopping at iteration (\d+) on {expected}", log.read_text())[-1])
        assert at <= stopped < max_iter
        wait_until(lambda: any(j["id"] == job and j["state"] == "PENDING" for j in slurm_cluster.squeue()),
                   f"job {job} back in the queue", 90, slurm_cluster, log)
        release_requeued(slurm_cluster, job)
        wait_until(lambda: f"at iteration {stopped}\n" in log.read_text(), f"resumed at {stopped}", 300,
                   slurm_cluster, log)
        return stopped

    # submitit's signal before the time limit (sent to the job's steps, as --signal=USR2@120 does)
    first = interrupt(4, lambda: slurm_cluster.scancel("--signal=USR2", job), "SIGUSR2")
    # preemption / requeue by the scheduler: SIGTERM to every process of the job
    second = interrupt(first + 3, lambda: slurm_cluster.scontrol("requeue", job), "SIGTERM")
    wait_until(lambda: job_gone(slurm_cluster, job), f"job {job} finished after the requeues", 400, slurm_cluster, log)
    text = log.read_text()
    for stopped in (first, second):
        assert re.search(rf"resumed from \S+model_{stopped:07d}\.pth at iteration {stopped}\b", text), text[-3000:]
        after = text[text.index(f"at iteration {stopped}\n"):]
        assert f"iter {stopped}/" not in after and f"iter {stopped + 1}/" in after  # nothing redone
    assert f"iter {max_iter}/{max_iter}" in text and (out / "model_final.pth").is_file()
    assert "Requeued job" in "".join(p.read_text() for p in (out / "submitit").rglob("*_log.out"))  # by submitit
    errors = "".join(p.read_text() for p in (out / "submitit").rglob("*_log.err"))
    assert "Traceback" not in errors and "exited unexpectedly" not in errors, errors[-3000:]
