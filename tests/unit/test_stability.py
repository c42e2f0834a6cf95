"""The stability step (LAMBench's NVE drift) from one frame of a labelled trajectory, and the
temperature it says it ran at: bench/real_teacher.py starts its drift from the teacher's last
held-out frame, because a cell far from equilibrium heats the NVE far from its ``temp``. And the
line between a finding and a failure: a model whose MD loses its atoms scores 5 (LAMBench's
failed run), a LAMMPS that crashed is raised, to be retried, never scored."""

from __future__ import annotations

import json
import sys

import pytest

from lamflow.flows.core.policy import retryable
from lamflow.steps import explore, stability
from lamflow.steps.errors import StepFailed


def test_nve_from_the_last_frame_of_a_trajectory_reports_its_mean_temperature(tmp_path, students, cu_data):
    (system,) = cu_data.systems
    r = stability.run(stability.StabilityParams(
        model=students[0].model, structure=system, frame=cu_data.n_frames - 1, type_map=["Cu"],
        output=tmp_path / "nve", nsteps=200, temp=600, seed=3))
    assert r.ok and r.natoms == 32 and r.drift_ev_atom_ps is not None, r.reason
    log = (tmp_path / "nve" / "task.000" / "log.lammps").read_text()
    rows = stability.thermo(log)
    kept = rows[rows[:, 0] >= stability.WARMUP_FRACTION * 200]
    assert r.mean_temp == pytest.approx(kept[:, 1].mean()) and 100 < r.mean_temp < 1500
    assert "velocity        all create 600.0 3 " in log  # the velocities drawn at temp, with the seed asked


def test_atoms_flying_out_of_the_box_are_a_finding_and_a_crash_is_raised(tmp_path, monkeypatch, students, cu_data):
    (system,) = cu_data.systems
    params = dict(model=students[0].model, structure=system, type_map=["Cu"], nsteps=200, seed=3)
    # ~600 Å/ps at 1e7 K: atoms cross the 7 Å cell in one 20-fs step, and LAMMPS stops with an
    # error of its own, whatever the model: the run failed, which is the score's business
    lost = stability.run(stability.StabilityParams(output=tmp_path / "lost", temp=1e7, dt=0.02, **params))
    assert not lost.ok and lost.instability == stability.FAILED_SCORE and "ERROR" in lost.reason, lost
    assert json.loads((tmp_path / "lost" / "stability.json").read_text())["instability"] == stability.FAILED_SCORE

    # the same step when LAMMPS is killed by a signal (the child aborts, as a model's C++ library can)
    real = explore.run_child
    monkeypatch.setattr(explore, "run_child",
                        lambda cmd, **kw: real([sys.executable, "-c", "import os; os.abort()"], **kw))
    with pytest.raises(StepFailed, match="LAMMPS crashed.*SIGABRT.*no score") as crashed:
        stability.run(stability.StabilityParams(output=tmp_path / "crashed", temp=300, **params))
    assert retryable(crashed.value)  # per resources.stability.retries (one by default)
    assert not (tmp_path / "crashed" / "stability.json").exists()
    task = json.loads((tmp_path / "crashed" / "task.000" / "status.json").read_text())
    assert task["status"] == "failed" and task["crash"] == "SIGABRT", task
