"""Debug mode's fork server (flows/engines/dflow/forkserver.py): a step forked from the warm
interpreter sees what a process of its own would (arguments, folder, environment, streams, exit
status), dies with its client, and a client without a server runs the step itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lamflow.flows.engines.dflow.forkserver import CLIENT, ENV, forking

SCRIPT = """import os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "X", os.environ.get("X"), "main", __name__, "pid", os.getpid())
print("to stderr", file=sys.stderr)
sys.stdout.flush()
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else 0)
"""


def _client(script: Path, arg: str, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), str(script), arg], cwd=cwd, text=True,
                            env={**os.environ, "X": "seven"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_a_forked_step_sees_its_own_process_and_its_client_exits_with_its_status(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    with forking():
        assert os.environ.get(ENV)
        server = os.environ[ENV]
        proc = _client(script, "3", tmp_path)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 3, out
        assert f"argv ['3'] cwd {tmp_path} X seven main __main__" in out and "to stderr" in out
        assert int(out.split("pid ")[1].split()[0]) != proc.pid  # forked by the server, not the client itself

        # a killed client takes its step with it (no orphan computing on)
        proc = _client(script, "sleep", tmp_path)
        step = int(proc.stdout.readline().split("pid ")[1].split()[0])
        proc.kill()
        proc.wait()
        for _ in range(50):
            try:
                os.kill(step, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(step, signal.SIGKILL)
            raise AssertionError("the step outlived its client")
    assert ENV not in os.environ and not Path(server).exists()

    # no server: the client is the step
    proc = _client(script, "0", tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and f"pid {proc.pid}" in out, out


def _server_fds(path: str) -> int:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and path.encode() in (proc / "cmdline").read_bytes():
                return len(os.listdir(proc / "fd"))
        except OSError:
            continue
    raise AssertionError("fork server not found")


def test_a_malformed_request_is_refused_without_leaking_its_streams(tmp_path):
    """The server lives as long as the run: streams handed over with a request it cannot read
    are closed, and it goes on serving."""
    import socket
    import struct

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    with forking():
        server = os.environ[ENV]
        before = _server_fds(server)
        for payload in (b"\x00\x00\x00\x05{nope", struct.pack("!I", 2) + b"{}"):
            with open(os.devnull) as a, open(os.devnull) as b, open(os.devnull) as c, \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(server)
                socket.send_fds(s, [payload], [a.fileno(), b.fileno(), c.fileno()])
                s.settimeout(10)
                assert s.recv(1) == b""  # refused: the server closed the connection
        time.sleep(0.2)
        assert _server_fds(server) == before
        proc = _client(script, "0", tmp_path)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and f"pid {proc.pid}" not in out, out
