"""Preemption (episodic.preemption): a SIGTERM sent mid-training to the whole process group (as
SLURM does: the trainer, its DataLoader workers and the forkserver) stops the VQ2D and NLQ
trainers after the step in flight with a checkpoint, without a traceback, and the resumed run
continues from that step."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from episodic.preemption import StopOnSignal, preemption_signals, shield_loader, submitit_signal

REPO = Path(__file__).resolve().parents[2]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_signals_are_sigterm_and_submitits(monkeypatch):
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert preemption_signals() == (signal.SIGTERM, signal.SIGUSR2)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert submitit_signal() == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOPE")
    with pytest.raises(ValueError, match="NOPE"):
        submitit_signal()


def test_signal_only_records_a_request_and_exit_uses_128_plus_signal():
    before = signal.getsignal(signal.SIGUSR1)
    with StopOnSignal([signal.SIGUSR1]) as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert stop.requested and stop.should_stop()
        with pytest.raises(SystemExit) as exited:
            stop.exit("step 3")
    assert exited.value.code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before  # handlers restored


def test_exit_on_submitits_signal_calls_submitits_handler_first():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopOnSignal([signal.SIGTERM, signal.SIGUSR2]) as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            with pytest.raises(SystemExit):
                stop.exit("step 1")
        assert calls == [signal.SIGUSR2]  # submitit's handler requeues (rank 0) and exits
    finally:
        signal.signal(signal.SIGUSR2, previous)


class _Pids(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([os.getpid(), os.getppid(), int(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)])


def _ignored_signals(pid: int) -> set[int]:
    mask = int(re.search(r"SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text()).group(1), 16)
    return {sig for sig in range(1, 64) if mask >> (sig - 1) & 1}


_SHIELD_CHECK = """
import json, os, sys, torch
from torch.utils.data import DataLoader
sys.path.insert(0, sys.argv[1])
from test_episodic_preemption import _Pids, _ignored_signals
from episodic.preemption import shield_loader
loader = DataLoader(_Pids(), batch_size=2, num_workers=1, multiprocessing_context="forkserver")
shield_loader(loader)
rows = torch.cat(list(loader)).tolist()
print(json.dumps({"main": os.getpid(), "rows": rows, "main_ignores": sorted(_ignored_signals(os.getpid())),
                  "forkserver_ignores": sorted(_ignored_signals(rows[0][1]))}))
"""


def test_shielded_workers_and_their_forkserver_ignore_the_signals():
    # a fresh process: this one may already run a forkserver started by other tests
    proc = subprocess.run([sys.executable, "-c", _SHIELD_CHECK, str(Path(__file__).parent)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(pid != found["main"] for pid, _, _ in found["rows"])  # loaded in a worker
    assert all(ignores_sigterm == 1 for _, _, ignores_sigterm in found["rows"])  # which ignores SIGTERM
    # the workers' parent, the forkserver (if it died, its workers would go with it), ignores both
    assert found["rows"][0][1] != found["main"]
    assert {signal.SIGTERM, signal.SIGUSR2} <= set(found["forkserver_ignores"])
    assert signal.SIGTERM not in found["main_ignores"]  # the main process still gets them


# ----------------------------------------------------------------------- the trainers
def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "w")
    try:  # own session: the test signals the whole group, as SLURM signals every process of a job
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        out.close()


def _signal_when(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 120.0) -> re.Match:
    """SIGTERM the process group of ``proc`` once ``pattern`` shows up in ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            os.killpg(proc.pid, signal.SIGTERM)
            return found
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{pattern!r} not in the log within {timeout} s:\n{log.read_text()[-3000:]}")


def _assert_clean_stop(proc: subprocess.Popen, log: Path) -> str:
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = log.read_text(errors="replace")
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text and "exited unexpectedly" not in text, text[-3000:]
    assert "stopping at" in text
    return text


@pytest.fixture(scope="module")
def vq2d_root(tmp_path_factory) -> Path:
    from vq2d.data.synthetic import generate_vq2d

    root = tmp_path_factory.mktemp("vq2d_preempt")
    generate_vq2d(root, seed=1, num_train_clips=2, num_val_clips=1, num_test_clips=1, frame_size=(160, 120),
                  frames_per_clip=(42, 48))
    return root


VQ2D_FAST = ["preset=tiny", "threads=1", "model.min_size=[64]", "model.max_size=96", "batch_size=2",
             "samples.extra_references=2", "eval.max_queries=1", "eval.period=0", "eval.at_end=false",
             "log_period=1", "solver.warmup_iters=2", "extract_workers=1"]


def test_vq2d_sigterm_mid_training_saves_the_current_iteration_and_resumes_there(vq2d_root, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from vq2d.engine.trainer import train

    out, log = tmp_path / "run", tmp_path / "stdout.txt"
    common = [*VQ2D_FAST, f"data.root={vq2d_root}", f"output_dir={out}", "checkpoint.period=1000"]
    # a loader worker started by the forkserver, as on a cluster: SIGTERM reaches all of them
    proc = _start([sys.executable, str(REPO / "tools" / "train_vq2d.py"), *common, "data.num_workers=1",
                   "max_iter=500"], log)
    seen = int(_signal_when(proc, log, r"iter (\d+)/500").group(1))
    text = _assert_clean_stop(proc, log)
    stopped = int(re.search(r"stopping at iteration (\d+)", text).group(1))
    assert seen <= stopped < 500
    assert (out / "last_checkpoint").read_text().strip() == f"model_{stopped:07d}.pth"  # not a periodic one

    for key in LAUNCH_ENV:  # the resumed run, in this process
        monkeypatch.delenv(key, raising=False)
    with initialize_config_dir(config_dir=str(REPO / "configs" / "vq2d"), version_base="1.3"):
        cfg = compose("train", overrides=[*common, "data.num_workers=0", f"max_iter={stopped + 2}"])
    summary = train(cfg)
    assert summary["iteration"] == stopped + 2
    resumed = (out / "log.txt").read_text().split("stopping at iteration")[1]
    assert f"resumed from {out / f'model_{stopped:07d}.pth'} at iteration {stopped}" in resumed
    assert f"iter {stopped + 1}/{stopped + 2}" in resumed and f"iter {stopped}/" not in resumed  # nothing redone
    assert (out / "model_final.pth").is_file()


# NLQ in this process: the signal is sent from inside the 3rd training step
def _nlq_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        return compose(config_name="train", overrides=["preset=tiny", "num_workers=0", "model=vslnet",
                                                       "stage=nlq_only", "max_epochs=1", "seed=4", *overrides])


def test_nlq_sigterm_mid_epoch_saves_that_step_and_resumes_mid_epoch(tmp_path, monkeypatch):
    from nlq.data.synthetic import generate_nlq
    from nlq.engine import trainer

    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    root = tmp_path / "data"
    generate_nlq(root, seed=3, n_train_clips=3, n_val_clips=1, n_test_clips=1, n_moments_clips=2,
                 clip_duration=(30.0, 40.0), feature_dim=24, clip_feature_dim=12, queries_per_clip=(8, 8))
    common = [f"data.root={root}", "batch_size=4"]
    whole = trainer.train(_nlq_config(*common, f"output_dir={tmp_path / 'whole'}"))

    calls = {"n": 0}
    move = trainer.move_to_device

    def move_and_signal_at_step_3(batch, device):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM would, in the middle of step 3
        return move(batch, device)

    monkeypatch.setattr(trainer, "move_to_device", move_and_signal_at_step_3)
    out = tmp_path / "preempted"
    with pytest.raises(SystemExit) as exited:
        trainer.train(_nlq_config(*common, f"output_dir={out}"))
    assert exited.value.code == 128 + signal.SIGTERM
    assert (out / "last_checkpoint").read_text().strip() == "model_0000_000003.pth"  # step 3 finished, saved
    saved = torch.load(out / "model_0000_000003.pth", weights_only=False)["train_state"]
    assert (saved["epoch"], saved["epoch_batches"], saved["global_step"]) == (0, 3, 3)

    monkeypatch.setattr(trainer, "move_to_device", move)
    calls["n"] = 0
    summary = trainer.train(_nlq_config(*common, f"output_dir={out}"))
    assert summary["epochs"] == 1
    a = torch.load(tmp_path / "whole" / "model_0001.pth", weights_only=False)["train_state"]
    b = torch.load(out / "model_0001.pth", weights_only=False)["train_state"]
    # the resumed run trained the 3 remaining steps of the epoch: none redone, none skipped
    assert b["global_step"] == a["global_step"] == 6 and b["epoch_batches"] == 0
    assert whole["epochs"] == 1
