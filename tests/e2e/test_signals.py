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


@pytest.mark.slow(seconds=30)
def test_sigterm_stops_a_calculator_teachers_md_that_runs_in_lamflows_own_process(tmp_path):
    """A calculator teacher's MD (``label_md``) runs in a thread of the lamflow process, not in a
    child the handler can end: it stops between MD steps, not at the end of its trajectories."""
    from conftest import TINY_SE_E2_A, write_cu_frames

    write_cu_frames(tmp_path / "start.extxyz", 1, seed=3)
    raw = {"name": "md", "type_map": ["Cu"], "teacher": {"calculator": "emt"},
           "student": {"template": "se_e2_a", "numb_steps": 10, "compress": False, "overrides": TINY_SE_E2_A},
           "configurations": {"files": ["start.extxyz"]},
           "initial_data": {"perturbed_frames": 2,  # EMT's MD of hours, unless it stops
                            "teacher_md": {"temps": [300], "nsteps": 10**8, "trj_freq": 10**6}},
           "iterations": [{"temps": [300], "nsteps": 20, "trj_freq": 10}], "max_iterations": 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    proc = subprocess.Popen([*CLI, "distill", str(tmp_path / "config.yaml"), "--workdir", str(run),
                             "--engine", "local"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob("init/label/*.result.json")) and time.monotonic() < deadline:  # the MD is next
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.5)
        time.sleep(3)
        assert proc.poll() is None and psutil.Process(proc.pid).cpu_percent(interval=1.0) > 50  # computing
        os.kill(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("the teacher's MD ran on after the signal") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert list(run.glob("init/label/*.result.json")) and not (run / "init/teacher-md").exists()
