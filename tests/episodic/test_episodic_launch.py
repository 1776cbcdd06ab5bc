"""submit/submit_array with the local and debug executors, SLURM parameters, requeue."""
import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from submitit.helpers import DelayedSubmission
from submitit.slurm.slurm import SlurmExecutor

from episodic import launch
from episodic.checkpoint import Checkpointer

# the jobs below run functions of this test module in fresh processes: ship them by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x):
    return x * x


def _ranks_and_gather(tag):
    from episodic import distributed

    info = distributed.init_distributed(device="cpu")
    gathered = distributed.all_gather_object(f"{tag}{info.rank}")
    distributed.cleanup()
    return info.rank, info.world_size, gathered


def _train_until_preempted(out_dir):
    """Saves step 1 then waits; after a requeue it resumes from the last checkpoint."""
    ck = Checkpointer(out_dir)
    state = ck.load()
    if state is not None:
        return f"resumed at step {state['step']}"
    ck.save("model_0000001.pth", {"step": 1})
    (Path(out_dir) / "task.pid").write_text(str(os.getpid()))
    time.sleep(120)  # the test preempts the job here
    return "never preempted"


def _wait(job, timeout_s=90):
    deadline = time.time() + timeout_s
    while not job.done() and time.time() < deadline:
        time.sleep(0.1)
    assert job.done(), f"job {job.job_id} still running after {timeout_s}s"


def test_local_executor_runs_function_and_returns_result(tmp_path):
    job = launch.submit(_square, 7, executor="local", folder=tmp_path / "%j", name="square", timeout_min=5)
    _wait(job)
    assert job.result() == 49
    assert isinstance(job.submission().function, launch.Trainable)


def test_local_executor_runs_two_tasks_as_one_process_group(tmp_path):
    job = launch.submit(
        _ranks_and_gather, "r", executor="local", folder=tmp_path / "%j", tasks_per_node=2, timeout_min=5
    )
    _wait(job)
    assert job.results() == [(0, 2, ["r0", "r1"]), (1, 2, ["r0", "r1"])]
    with pytest.raises(AssertionError):  # what the tools called before: no single result of 2 tasks
        job.result()
    assert launch.job_result(job) == (0, 2, ["r0", "r1"])  # rank 0's, as the train tools print
    single = launch.submit(_square, 3, executor="local", folder=tmp_path / "%j", name="square", timeout_min=5)
    _wait(single)
    assert launch.job_result(single) == 9


def test_preempted_local_job_is_requeued_and_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    job = launch.submit(_train_until_preempted, str(out), executor="local", folder=tmp_path / "%j", timeout_min=5)
    deadline = time.time() + 60
    while not (out / "task.pid").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (out / "task.pid").exists(), "job did not start"
    # what SLURM does before preempting a job: the USR2 signal to its task
    os.kill(int((out / "task.pid").read_text()), signal.SIGUSR2)
    _wait(job)
    assert job.result() == "resumed at step 1"


def test_debug_executor_and_array_keep_argument_order(tmp_path):
    job = launch.submit(_square, 3, executor="debug", folder=tmp_path)
    assert job.result() == 9
    jobs = launch.submit_array(_square, [1, 2, 3, 4], executor="debug", folder=tmp_path)
    assert [j.result() for j in jobs] == [1, 4, 9, 16]
    assert launch.submit_array(_square, [], executor="debug", folder=tmp_path) == []


def test_checkpoint_returns_delayed_submission_of_same_callable():
    trainable = launch.Trainable(_square)
    delayed = trainable.checkpoint(5)
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function is trainable and delayed.args == (5,) and trainable.requeues == 1
    assert delayed.result() == 25
    # submitit's own hook, the one its signal handler calls
    again = DelayedSubmission(trainable, 6)._checkpoint_function()
    assert again.function is trainable and again.args == (6,) and trainable.requeues == 2


def test_trainable_subclass_overrides_run():
    class Double(launch.Trainable):
        def run(self, x):
            return 2 * x

    assert Double()(4) == 8
    with pytest.raises(NotImplementedError):
        launch.Trainable()(1)


def test_slurm_parameters_hold_cluster_settings():
    params = launch.executor_parameters(
        "slurm",
        name="vq2d",
        nodes=2,
        gpus_per_node=8,
        cpus_per_task=10,
        mem_gb=480,
        timeout_min=4320,
        partition="learnfair",
        array_parallelism=16,
        slurm_extra={
            "constraint": "volta32gb",
            "account": "ego4d",
            "qos": "high",
            "reservation": "eccv",  # not a submitit parameter
            "comment": None,
        },
    )
    assert params["tasks_per_node"] == 8 and params["nodes"] == 2 and params["gpus_per_node"] == 8
    assert params["slurm_partition"] == "learnfair" and params["slurm_array_parallelism"] == 16
    assert params["slurm_constraint"] == "volta32gb" and params["slurm_account"] == "ego4d"
    assert params["slurm_qos"] == "high"
    assert params["slurm_additional_parameters"] == {"reservation": "eccv"}  # unknown to submitit: raw #SBATCH
    assert "slurm_comment" not in params
    valid = SlurmExecutor._valid_parameters()
    assert all(key[len("slurm_"):] in valid for key in params if key.startswith("slurm_"))


def test_dependency_chains_a_slurm_job_and_is_refused_locally():
    params = launch.executor_parameters("slurm", name="finetune", partition="p", dependency="afterok:1234",
                                        slurm_extra={"reservation": "eccv"})
    assert params["slurm_dependency"] == "afterok:1234"  # sbatch --dependency=afterok:1234
    # cancelled rather than pending forever when the joint job fails
    assert params["slurm_additional_parameters"] == {"kill-on-invalid-dep": "yes", "reservation": "eccv"}
    assert "slurm_dependency" not in launch.executor_parameters("slurm", name="joint", partition="p")
    with pytest.raises(ValueError, match="slurm executor"):
        launch.executor_parameters("local", name="x", dependency="afterok:1")


def test_local_parameters_drop_cluster_settings_and_check_nodes():
    params = launch.executor_parameters("local", name="x", partition="learnfair", slurm_extra={"qos": "high"})
    assert not any(key.startswith("slurm_") for key in params) and params["tasks_per_node"] == 1
    with pytest.raises(ValueError, match="one node"):
        launch.executor_parameters("local", name="x", nodes=2)
    with pytest.raises(ValueError, match="executor"):
        launch.executor_parameters("kubernetes", name="x")


def test_local_array_spreads_shards_over_gpus(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert launch._local_gpu_groups(5, 1) == [(0,), (1,), (2,), (3,), (0,)]
    assert launch._local_gpu_groups(2, 2) == [(0, 1), (2, 3)]
    assert launch._local_gpu_groups(2, 8) == [(), ()]  # more than available: submitit's default
