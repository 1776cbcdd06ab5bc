"""init_distributed from torchrun / submitit / nothing, collectives, and a 2-process DDP run."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from episodic import distributed

WORKER = Path(__file__).with_name("episodic_ddp_worker.py")
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")


@pytest.fixture
def clean_env(monkeypatch):
    for key in LAUNCH_ENV + ("SUBMITIT_DEBUG_JOB_ID",):
        monkeypatch.setenv(key, "")  # records the original value, restored after the test
        monkeypatch.delenv(key)
    return monkeypatch


def test_single_process_without_launcher(clean_env):
    info = distributed.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (0, 1, 0, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    assert distributed.is_main_process() and distributed.get_world_size() == 1
    x = torch.tensor([1, 2])
    mean = distributed.all_reduce_mean(x)
    assert mean.dtype == torch.float64 and mean.tolist() == [1.0, 2.0]
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    distributed.cleanup()


def test_reads_torchrun_environment(clean_env):
    torchrun_env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    for key, value in torchrun_env.items():
        clean_env.setenv(key, value)
    info = distributed.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert info.is_main and not info.distributed
    assert not torch.distributed.is_initialized()  # no group needed for one process


def test_torchrun_ranks_are_taken_from_environment(clean_env):
    for key, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}.items():
        clean_env.setenv(key, value)
    assert distributed._torchrun_ranks() == (5, 8, 1)


def test_submitit_environment_sets_master_address_and_port(clean_env):
    # what submitit's local executor exports for task 1 of a 2-task job
    env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    }
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert distributed._submitit_ranks() == (1, 2, 1)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    port = int(os.environ["MASTER_PORT"])
    assert port == distributed._master_port_for_job("4242") and 20000 <= port < 60000
    assert distributed._master_port_for_job("4243") != port


def test_seed_everything_offsets_by_rank():
    assert distributed.seed_everything(7, rank=0) == 7
    a = torch.rand(3)
    distributed.seed_everything(7, rank=0)
    assert torch.equal(torch.rand(3), a)
    assert distributed.seed_everything(7, rank=1) == 8
    assert not torch.equal(torch.rand(3), a)


def _load_worker():
    spec = importlib.util.spec_from_file_location("episodic_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_process_ddp_on_cpu_with_gloo(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in (r0, r1)] == [(0, 2, 0), (1, 2, 1)]
    assert r0["is_main"] and not r1["is_main"] and r0["get_world_size"] == r1["get_world_size"] == 2
    assert r0["params"] == r1["params"]  # DDP kept the replicas identical
    assert r0["mean"] == r1["mean"] == [0.5, 5.0]
    assert r0["mean_int"] == r1["mean_int"] == 1.5
    expected_gather = [{"rank": 0, "name": "r0"}, {"rank": 1, "name": "r1"}]
    assert r0["gathered"] == r1["gathered"] == expected_gather

    # DDP averages gradients: equal to one process training on both ranks' batches at once
    worker = _load_worker()
    reference = worker.build_model()
    data = [torch.cat(pair) for pair in zip(worker.batches(0), worker.batches(1))]
    worker.train(reference, data)
    for got, want in zip(r0["params"], reference.parameters()):
        assert torch.allclose(torch.tensor(got), want.detach().flatten(), atol=1e-6)
    # and differs from training on rank 0's data alone (the collective mattered)
    alone = worker.build_model()
    worker.train(alone, worker.batches(0))
    assert not torch.allclose(torch.tensor(r0["params"][0]), alone.weight.detach().flatten(), atol=1e-4)
