"""A real single-node Slurm for the tests: Debian's slurm-wlm and munge, started in a folder.

Installed with apt-get when missing (CI's fresh machine; root there as here). Everything the
daemons write — the munge key and socket, slurm.conf, state, spool, pid and log files — lives
in the given folder, on free ports, so nothing of the machine's own configuration is touched
and ``stop()`` leaves nothing running. Clients find the cluster through ``SLURM_CONF``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

MUNGED = "/usr/sbin/munged"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apt_install(packages: list[str], needed: list[str]) -> None:
    """Debian ``packages`` when one of the ``needed`` programs is missing (CI's fresh machine), or
    a skip that says why they cannot be had. Shared by the test Slurm and the test SSH server."""
    if all(shutil.which(n) or Path(n).exists() for n in needed):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{' and '.join(packages)} not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *packages]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def start(self) -> "SlurmCluster":
        apt_install(["slurm-wlm", "munge"], ["slurmctld", MUNGED])
        r = self.root
        for sub in ("state", "spool"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = r / "munge.sock"
        subprocess.run([MUNGED, "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={r / 'munged.pid'}",
                        f"--log-file={r / 'munged.log'}", f"--seed-file={r / 'munge.seed'}"], check=True)
        host = socket.gethostname().split(".")[0]
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        self.conf.write_text(f"""ClusterName=lamflowtest
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
MinJobAge=3600
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
{node} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        env = {**os.environ, **self.env}
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=env, check=True)
        subprocess.run(["slurmd", "-f", str(self.conf)], env=env, check=True)
        for _ in range(60):
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            if out.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test Slurm did not come up: {(r / 'slurmctld.log').read_text()[-2000:]}")

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True,
                              check=True).stdout

    def stop(self) -> None:
        subprocess.run(["scancel", "--quiet", "--full", "-u", "root"], env={**os.environ, **self.env},
                       capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
