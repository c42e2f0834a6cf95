"""The stability step (LAMBench's NVE drift) from one frame of a labelled trajectory, and the
temperature it says it ran at: bench/real_teacher.py starts its drift from the teacher's last
held-out frame, because a cell far from equilibrium heats the NVE far from its ``temp``."""

from __future__ import annotations

import pytest

from lamflow.steps import stability


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
