"""A real Prefect server on this machine: server, work pools, a worker and lamflow's deployments.

``lamflow prefect up`` (``make prefect-up``) is what a user runs once to get the Prefect UI and
``prefect deployment run 'distill/local'``; the tests start the very same thing on a free
loopback port. The server keeps its state in SQLite under ``PREFECT_HOME`` (default
``.prefect/`` in the project); set ``PREFECT_API_DATABASE_CONNECTION_URL`` to a
``postgresql+asyncpg://`` URL for a shared, long-lived server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lamflow.steps.errors import InputError, StepFailed
from lamflow.steps.runtime import die_with_parent

from .k8s import TEMPLATE

#: the pools prefect.yaml's deployments use: name → (type, base job template or None)
POOLS = {"local": ("process", None), "k8s-gpu": ("kubernetes", TEMPLATE)}


def _prefect_cli() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [shutil.which("prefect") or "prefect"]


@dataclass
class LocalPrefect:
    """Server + worker processes for one Prefect home; ``up()`` starts, ``down()`` stops them."""

    project: Path
    home: Path
    port: int = 4200
    host: str = "127.0.0.1"
    worker_poll_seconds: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for anything talking to this server (CLI, worker, flows, tests)."""
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_PROMPT": "false",
               **self.extra_env}
        if self.worker_poll_seconds is not None:
            env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.worker_poll_seconds)
            env["PREFECT_WORKER_PREFETCH_SECONDS"] = str(self.worker_poll_seconds)
        return env

    def _log(self, name: str):
        self.home.mkdir(parents=True, exist_ok=True)
        return open(self.home / f"{name}.log", "ab")

    def prefect(self, *args: str, timeout: float = 120) -> str:
        """Run a ``prefect`` CLI command against this server; its output, or StepFailed."""
        out = subprocess.run([*_prefect_cli(), *args], cwd=self.project, env=self.env(),
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
            raise StepFailed(f"prefect {' '.join(args)} failed:\n" + "\n".join(tail))
        return out.stdout

    def start_server(self, timeout: float = 90) -> None:
        proc = subprocess.Popen([*_prefect_cli(), "server", "start", "--host", self.host, "--port", str(self.port)],
                                cwd=self.project, env=self.env(), stdout=self._log("server"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        if _healthy(proc, self.api_url, timeout):
            return
        if proc.poll() is not None:
            raise StepFailed(f"prefect server exited with {proc.returncode}; see {self.home / 'server.log'}")
        raise StepFailed(f"prefect server not healthy after {timeout:.0f} s; see {self.home / 'server.log'}")

    def create_pools(self) -> None:
        for name, (kind, template) in POOLS.items():
            args = ["work-pool", "create", name, "--type", kind, "--overwrite"]
            if template is not None:
                args += ["--base-job-template", str(template)]
            self.prefect(*args)

    def deploy(self) -> str:
        if not (self.project / "prefect.yaml").is_file():
            raise InputError(str(self.project), "no prefect.yaml here: run from the lamflow project root")
        return self.prefect("--no-prompt", "deploy", "--all")

    def start_worker(self, pool: str = "local") -> None:
        proc = subprocess.Popen([*_prefect_cli(), "worker", "start", "--pool", pool, "--type", "process"],
                                cwd=self.project, env=self.env(), stdout=self._log(f"worker-{pool}"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A synchronous Prefect client for this server, from within this process."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            yield client

    def up(self) -> "LocalPrefect":
        try:
            self.start_server()
            self.create_pools()
            self.deploy()
            self.start_worker("local")
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop the worker (and the flow runs it started: its process group), then the server."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.processes.clear()


def retry_flow_run(client: Any, run_id: str) -> None:
    """What the UI's Retry button does: a finished flow run goes back to Scheduled (AwaitingRetry)
    and a worker runs it again — which, in lamflow, resumes it from its run directory."""
    import uuid

    from prefect.client.schemas.actions import StateCreate
    from prefect.results import ResultRecordMetadata  # noqa: F401  (StateCreate refers to it)
    from prefect.states import Scheduled

    StateCreate.model_rebuild()  # Prefect 3.4 leaves it incomplete until an engine import does this

    run = client.read_flow_run(uuid.UUID(str(run_id)))
    if run.state is None or not run.state.is_final():
        state = run.state.type.value if run.state else "UNKNOWN"
        raise InputError(f"flow run {run_id}", f"is {state}; only a finished (failed, crashed, cancelled) run can be retried")
    client.set_flow_run_state(run.id, Scheduled(name="AwaitingRetry", message="Retry from lamflow"), force=True)


def _healthy(proc: subprocess.Popen, api_url: str, timeout: float) -> bool:
    """Whether the Prefect server ``proc`` answers ``api_url``/health within ``timeout`` s (False
    as soon as it exits: the caller says why)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drain() -> None:
    """Send the logs and events Prefect still holds while their server is up (Prefect would
    send them at exit, to a server that is gone by then: "Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


@contextlib.contextmanager
def temporary_api(startup_timeout: float = 90) -> Iterator[None]:
    """Prefect's temporary server for a run without ``PREFECT_API_URL``, started so that it dies
    with lamflow.

    Prefect starts that server itself in a child process and stops it from ``atexit``; a lamflow
    killed by SIGKILL (the OOM killer, a scheduler's hard limit) runs no ``atexit``, and the
    server lived on, holding its port and the SQLite database. lamflow starts the same server
    (uvicorn on Prefect's ``create_app``, with the settings Prefect gives its own temporary
    server) with a parent-death signal, points this process at it for the run, and stops it
    after. With ``PREFECT_API_URL`` set, the run reports to that server and nothing starts.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # the signal comes when the starting thread ends: only the main thread lives as long as lamflow
    preexec = die_with_parent if threading.current_thread() is threading.main_thread() else None
    with tempfile.TemporaryFile("w+") as log:
        proc = None
        try:
            for _ in range(3):  # a port taken between choosing and binding it: choose again
                port = _free_port()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                     "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec)
                url = f"http://127.0.0.1:{port}/api"
                healthy = _healthy(proc, url, startup_timeout)
                if proc.poll() is None:
                    break
            if not healthy:
                log.seek(0)
                tail = " | ".join(log.read().strip().splitlines()[-3:])
                raise StepFailed(f"Prefect's temporary server did not start on 127.0.0.1 ({tail or 'no output'}); "
                                 "set PREFECT_API_URL to a running server or use --engine local")
            with temporary_settings({PREFECT_API_URL: url}):
                yield
        finally:
            if proc is not None and proc.poll() is None:
                _drain()
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

