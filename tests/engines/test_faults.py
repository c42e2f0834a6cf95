"""Faults lose nothing: a step process killed mid-training, mid-MD and mid-labelling, a full disk,
a damaged output, a second run on the same directory. Each time the run resumes with every
finished step kept, no half-written artifact is read, and the numbers are those of a run that
never failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_same_distillation, run_in_use, tiny_config, write_cu_frames
from lamflow.flows.core.faults import ENV as FAULTS_ENV
from lamflow.flows.core.run_lock import run_lock
from lamflow.flows.core.execute import execute
from lamflow.steps.label import LabelParams

CLI = [sys.executable, "-m", "lamflow.flows.cli"]


def _records(run: Path) -> dict[str, float]:
    """Every step record under ``run``: output → when it finished."""
    return {str(p.relative_to(run)): json.loads(p.read_text())["finished"] for p in run.rglob("*.result.json")}


def _kill_when(cmd: list[str], partial: str, run: Path, env=None, timeout: float = 600) -> None:
    """Start ``cmd`` and SIGKILL its whole process group once ``RUN/<partial>.partial`` appears:
    the step writing there is mid-way (a node lost, an OOM kill)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    deadline = time.monotonic() + timeout
    target = run / f"{partial}.partial"
    while not target.exists():
        assert proc.poll() is None, f"the run ended before {target} appeared"
        assert time.monotonic() < deadline, f"{target} never appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow(seconds=260)
def test_killed_mid_training_md_and_labelling_then_a_full_disk_resumes_to_the_same_numbers(tmp_path, prefect_cli_run):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    run = tmp_path / "run"
    cmd = [*CLI, "distill", str(tmp_path / "config.yaml"), "--workdir", str(run)]

    _kill_when(cmd, "init/teacher", run)  # mid-training (the teacher's dp train)
    assert not (run / "init/teacher").exists()  # never half there under its real name
    _kill_when(cmd, "iter-000/explore/task-000", run)  # mid-MD
    kept = _records(run)
    assert "init/teacher.result.json" in kept
    _kill_when(cmd, "iter-000/label/chunk-000", run)  # mid-labelling
    assert all(_records(run)[k] == v for k, v in kept.items())  # nothing finished was redone

    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump([{"step": "select", "where": "iter-001", "kind": "disk_full"}]))
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, FAULTS_ENV: str(faults)})
    assert full.returncode == 1 and full.stderr.count("\n") == 1, full.stderr[-2000:]
    assert "lamflow: failed: No space left on device writing" in full.stderr and "iter-001/select" in full.stderr
    kept = _records(run)

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]  # finished: max_iterations, as the reference run
    assert all(_records(run)[k] == v for k, v in kept.items())
    assert not list(run.rglob("*.partial")) and not list(run.rglob("*.tmp"))
    ours = json.loads((run / "report.json").read_text())
    with run_in_use(prefect_cli_run) as shared:
        reference = json.loads((shared / "report.json").read_text())
    assert_same_distillation(ours, reference)


def test_a_damaged_output_is_never_read_back(tmp_path):
    structures = write_cu_frames(tmp_path / "cu.extxyz", 3, seed=8)
    params = LabelParams(structures=[structures], type_map=["Cu"], output=tmp_path / "emt")
    first = execute("label", params)
    force = next((tmp_path / "emt").rglob("force.npy"))
    good = np.load(force)
    assert execute("label", params).cached
    force.write_bytes(force.read_bytes()[:64])  # truncated, as by a full disk or a bad copy
    again = execute("label", params)
    assert not again.cached and again.result == first.result  # the step ran again
    np.testing.assert_array_equal(np.load(force), good)


def test_a_second_run_on_the_same_directory_is_refused_and_a_stale_lock_is_not(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    run = tmp_path / "run"
    cmd = [*CLI, "distill", str(tmp_path / "config.yaml"), "--workdir", str(run), "--engine", "local"]
    with run_lock(run):  # another run holds the directory
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"{run}: is in use by another lamflow run (pid {os.getpid()} on " in out.stderr
    assert not list(run.rglob("*.result.json"))  # it did nothing

    # the holder died (SIGKILL leaves the lock file behind): the kernel released the lock
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lamflow.flows.core.run_lock import run_lock\n"
                               f"with run_lock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert (run / ".lamflow.lock").is_file()
    with run_lock(run):
        pass


def test_two_runs_in_one_base_directory_keep_to_their_own(tmp_path):
    base = tmp_path / "runs"
    with run_lock(base / "a"), run_lock(base / "b"):  # different run directories: no conflict
        assert (base / "a/.lamflow.lock").is_file() and (base / "b/.lamflow.lock").is_file()
