"""Debug mode's step processes, forked from one warm interpreter instead of started cold.

dflow's debug mode runs every step (and every planning level) as a new Python process that runs
the step's generated script. Each of them imported dflow (its Kubernetes and Argo clients) and
lamflow's engine before doing anything: ~1.5 s of a 2-core machine per process, two processes a
level, measured as most of debug mode's overhead over the sum of its steps.

This server imports those modules once; a step's command is :mod:`.forkclient`, a stdlib-only
script that hands the server its arguments, working folder, environment and standard streams;
the server forks, the child runs the script as ``__main__`` with them, and the client exits with
the child's status. What a step imports itself (torch, deepmd-kit, LAMMPS) is imported in the
child, after its environment (``OMP_NUM_THREADS``) is set, as in a process of its own.

The server is single-threaded (a fork copies only the forking thread: no lock held by another
thread can be inherited), never imports torch or LAMMPS, and ends with the run that started it.
A client whose server is gone runs the script itself: the step never depends on it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

#: the environment variable naming the server's socket, read by :mod:`.forkclient`
ENV = "LAMFLOW_DFLOW_FORKSERVER"
#: what every step and planner script imports before its own work
PRELOAD = ("dflow", "dflow.python", "dflow.python.utils", "jsonpickle", "lamflow.flows.engines.dflow.engine")
CLIENT = Path(__file__).with_name("forkclient.py")
HEADER = struct.Struct("!I")


def _request(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request: a length-prefixed JSON (argv, cwd, env) and its three standard streams."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    try:
        while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
            chunk = conn.recv(1 << 16)
            if not chunk:
                raise ConnectionError("client left before its request was read")
            data += chunk
        size = HEADER.unpack_from(data)[0]
        request = json.loads(data[HEADER.size:HEADER.size + size])
        if len(fds) != 3 or not {"argv", "cwd", "env"} <= set(request):
            raise ValueError("a request is argv, cwd and env with three streams")
    except BaseException:
        for fd in fds:  # the server lives as long as the run: a bad request must not leak its streams
            os.close(fd)
        raise
    return request, list(fds)


def _child(request: dict, fds: list[int], keep_closed: list[socket.socket]) -> None:
    """The step's process: the client's streams, folder, environment and arguments; never returns."""
    code = 1
    try:
        for s in keep_closed:
            s.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` has it
        import runpy

        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: str) -> None:
    """Accept requests on the Unix socket ``path`` until the parent process (the run) is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the run reaches its steps, not this
    parent = os.getppid()
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    by_pid: dict[int, socket.socket] = {}
    by_conn: dict[socket.socket, int] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, *by_conn], [], [], 0.1)
        for s in ready:
            if s is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _request(conn)
                except (ConnectionError, OSError, ValueError):
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, fds, [listener, conn, *by_conn])
                for fd in fds:
                    os.close(fd)
                by_pid[pid], by_conn[conn] = conn, pid
            elif not s.recv(1):  # the client is gone (killed): so is its step
                with contextlib.suppress(ProcessLookupError):
                    os.kill(by_conn.pop(s), signal.SIGKILL)
                s.close()
        while by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = by_pid.pop(pid)
            if by_conn.pop(conn, None) is not None:
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
                conn.close()


@contextlib.contextmanager
def forking(enabled: bool = True) -> Iterator[None]:
    """A fork server for the debug-mode steps started while this context is open (their
    :mod:`.forkclient` finds it through :data:`ENV`). If it cannot start, steps start cold."""
    if not enabled or not hasattr(socket, "send_fds") or os.environ.get(ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="lamflow-fork-")
    path = os.path.join(folder, "socket")
    proc = subprocess.Popen([sys.executable, "-m", __name__, path], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ready = proc.stdout.readline().strip() == b"ready"
        if ready:
            os.environ[ENV] = path
        yield
    finally:
        os.environ.pop(ENV, None)
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


if __name__ == "__main__":
    serve(sys.argv[1])
