"""An OpenSSH server on 127.0.0.1 for the tests: Debian's openssh-server (installed with apt-get
when missing), host and client keys made here, every file in the given folder, on a free port.
``SetEnv`` hands the SSH shells the test Slurm's ``SLURM_CONF``, as a cluster's login shell would."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from slurm_cluster import apt_install

SSHD = "/usr/sbin/sshd"


class SSHServer:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = Path(root), env
        self.port = 0

    def start(self) -> "SSHServer":
        apt_install(["openssh-server"], [SSHD])
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(r / key)], check=True)
        (r / "authorized_keys").write_text((r / "client_key.pub").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        (r / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {r / 'host_key'}
PidFile {r / 'sshd.pid'}
AuthorizedKeysFile {r / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
{f'SetEnv {env}' if env else ''}
""")
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation folder
        subprocess.run([SSHD, "-f", str(r / "sshd_config"), "-E", str(r / "sshd.log")], check=True)
        for _ in range(40):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.25)
        raise RuntimeError(f"sshd did not start: {(r / 'sshd.log').read_text()[-2000:]}")

    @property
    def profile(self) -> dict:
        """dpdispatcher's ``remote_profile`` for this server."""
        return {"hostname": "127.0.0.1", "port": self.port, "username": getpass.getuser(),
                "key_filename": str(self.root / "client_key"), "look_for_keys": False}

    def stop(self) -> None:
        pid = self.root / "sshd.pid"
        if pid.is_file():
            try:
                os.kill(int(pid.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
