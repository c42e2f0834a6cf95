"""A scheduler's SIGTERM (or Ctrl-C) stops a run cleanly: it says so at once, ends the running
step's children within seconds, leaves no process behind, keeps every finished step's record
and none of the interrupted one; a SIGKILL takes the children down with it. Signals go to the
``lamflow`` process alone, as a scheduler sends them, not to its process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import tiny_config

CLI = [sys.executable, "-m", "lamflow.flows.cli"]


def _start(tmp_path: Path, engine: str) -> tuple[subprocess.Popen, Path]:
    raw = tiny_config(tmp_path)
    raw["teacher"]["train"]["numb_steps"] = 100_000  # still training when the signal comes (it never ends)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    proc = subprocess.Popen([*CLI, "distill", str(tmp_path / "config.yaml"), "--workdir", str(run),
                             "--engine", engine], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: the signal reaches lamflow alone
    return proc, run


def _training(proc: subprocess.Popen, timeout: float = 600) -> psutil.Process:
    """The first training child of the run, once it runs: the process that runs `dp train`
    (with freeze and compress after it, lamflow.steps.dp_session) in the step's folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
                if "lamflow.steps.dp_session" in cmd and (Path(child.cwd()) / "train.log").exists():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    raise AssertionError("no dp train started")


def _gone(processes: list[psutil.Process], within: float) -> list[str]:
    deadline = time.monotonic() + within
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return [" ".join(p.cmdline()[:4]) for p in alive if p.is_running()]


@pytest.mark.slow(seconds=60)
def test_sigterm_stops_the_run_its_steps_and_its_prefect_server(tmp_path):
    proc, run = _start(tmp_path, "prefect")
    train = _training(proc)
    train_dir = Path(train.cwd())  # <step>.partial while it runs
    family = psutil.Process(proc.pid).children(recursive=True)  # dp, and Prefect's temporary server
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, "the run took too long to stop"
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "lamflow: SIGTERM: stopping" in err and "run the same command again" in err
    assert "Traceback" not in err, err[-3000:]
    assert not _gone(family, within=10), "processes left behind"
    assert not train.is_running()
    # finished steps kept their records, the interrupted training wrote none
    assert list(run.rglob("*.result.json")), "the finished steps' records are gone"
    name = train_dir.name.removesuffix(".partial")
    assert not (train_dir.parent / f"{name}.result.json").exists()


@pytest.mark.slow(seconds=40)
def test_a_sigkilled_run_takes_its_training_and_its_prefect_server_down_with_it(tmp_path):
    """SIGKILL runs no handler and no ``atexit``: the children must die through their
    parent-death signal, the training and Prefect's temporary server alike."""
    proc, run = _start(tmp_path, "prefect")
    train = _training(proc)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("prefect.server.api.server:create_app" in " ".join(p.cmdline()) for p in family), \
        [" ".join(p.cmdline()[:5]) for p in family]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert train in family and not _gone(family, within=10), "processes outlived their run"
