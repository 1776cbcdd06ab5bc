"""A throw-away single-node SLURM cluster for the ``slurm`` test group.

:class:`SlurmCluster` writes a ``slurm.conf`` into a temporary folder (one node with this
machine's cores and memory, one partition ``debug``, no cgroups: ``proctrack/linuxproc``,
``task/none``, ``select/cons_tres``; every state, spool, log and pid file in that folder,
the ports picked free), creates a munge key, starts ``munged``, ``slurmctld`` and ``slurmd``
as the current (root) user and waits until ``sinfo`` shows the node idle. Clients (``sbatch``,
``squeue``, ``scontrol``, submitit) reach it through ``SLURM_CONF`` (:attr:`env`).
:meth:`stop` cancels the jobs that are left and stops the three daemons it started, by
their pids.

Needs Debian's ``slurm-wlm`` and ``munge`` packages (``apt-get install -y slurm-wlm munge``)
and root (slurmd starts jobs as their owner). :func:`unavailable_reason` says why a cluster
cannot be started here, or ``None``.

    with SlurmCluster(tmp_dir) as cluster:
        subprocess.run(["sbatch", "-p", "debug", "--wrap", "hostname"], env=cluster.env)

Run by hand: ``python tests/slurm/cluster.py`` starts one and prints the ``SLURM_CONF`` to
export, until Ctrl-C.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def unavailable_reason() -> str | None:
    """Why no cluster can be started on this machine (missing program, not root), or None."""
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return (f"SLURM/munge not installed (missing {', '.join(missing)}); "
                f"install them with: apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "the test SLURM cluster must run as root (slurmd starts jobs as their owner)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> dict[str, str]:
    """This machine as slurmd sees it (``slurmd -C``): CPUs, sockets, cores, threads, memory."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    hw = {k: fields[k] for k in keep if k in fields}
    hw["RealMemory"] = str(int(int(hw.get("RealMemory", "2048")) * 0.95))  # slurmd drains a node that has less
    return hw


class SlurmCluster:
    """Single-node SLURM in ``root`` (a fresh folder); see the module docstring.

    Args:
        root: folder for the config, key, state, logs and pids (created).
        kill_wait_s: SLURM's ``KillWait`` (seconds between SIGTERM and SIGKILL of a job
            being cancelled, preempted or requeued); 30 is SLURM's default.
        start_timeout_s: how long to wait for the node to become idle.
    """

    def __init__(self, root: str | Path, kill_wait_s: int = 30, start_timeout_s: float = 60.0):
        self.root = Path(root)
        self.kill_wait_s = int(kill_wait_s)
        self.start_timeout_s = float(start_timeout_s)
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` pointing at the cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ config
    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        hw = " ".join(f"{k}={v}" for k, v in _node_hardware().items())
        r = self.root
        lines = [
            "ClusterName=episodic-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait_s}",
            "MinJobAge=600",
            "MailProg=/bin/true",
            "PlugStackConfig=/dev/null",
            f"NodeName={self.node} NodeAddr=127.0.0.1 {hw} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ daemons
    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen([_which(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True)
        log.close()

    def start(self) -> SlurmCluster:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.write_config()
        m = self.root / "munge"
        self._start("munged", ["-F", "--force", f"--socket={self.munge_socket}", f"--key-file={m / 'munge.key'}",
                               f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                               f"--seed-file={m / 'munged.seed'}"])
        self._wait_for(lambda: self.munge_socket.exists(), "munged socket", self.root / "munge" / "munged.log")
        self._start("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", ["-D", "-f", str(self.conf), "-N", self.node])
        self._wait_for(self.node_idle, f"node {self.node} idle in partition {PARTITION}",
                       self.root / "log" / "slurmctld.log")
        return self

    def node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True, text=True,
                             env=self.env, timeout=20)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str, log: Path) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                break
            if ready():
                return
            time.sleep(0.5)
        tail = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
        self.stop()
        raise RuntimeError(f"test SLURM cluster: {what} not reached within {self.start_timeout_s:.0f} s "
                           f"(exited: {[n for n, p in self.processes.items() if p.poll() is not None]}); "
                           f"{log}:\n{tail}")

    def stop(self) -> None:
        """Cancel the jobs left, then stop slurmd, slurmctld and munged (by their pids)."""
        if self.processes.get("slurmctld") is not None and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "-u", str(os.geteuid())], env=self.env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.squeue():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def squeue(self) -> list[dict[str, str]]:
        """Jobs in the queue: [{"id", "state", "name"}] (array tasks one by one)."""
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%j"], capture_output=True, text=True,
                             env=self.env, timeout=20)
        rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
        return [{"id": r[0], "state": r[1], "name": r[2]} for r in rows if len(r) == 3]

    def scancel(self, *args: str) -> str:
        return subprocess.run(["scancel", *args], capture_output=True, text=True, env=self.env, check=True,
                              timeout=30).stdout

    def scontrol(self, *args: str) -> str:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, env=self.env, check=True,
                              timeout=30).stdout

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover - manual use
    import tempfile

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with SlurmCluster(tempfile.mkdtemp(prefix="slurm-")) as cluster:
        print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C (or SIGTERM) stops the cluster", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
