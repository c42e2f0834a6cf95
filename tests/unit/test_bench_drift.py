"""bench/real_teacher.py's NVE drift (the slope of LAMMPS' total energy, from its thermo block only) and its
held-out frames after a burn-in."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from real_teacher import after_burn_in, last_frame, nve_drift, thermo  # noqa: E402

LOG = """LAMMPS (29 Aug 2024)
   Step          Temp          PotEng         KinEng         TotEng         Press          Volume
         0   300            -345.0          2.4            -342.6         100.0          1280.8
      5000   180            -344.1          1.5            -342.6         200.0          1280.8
     10000   170            -343.9          1.4            -342.5         300.0          1280.8
Loop time of 58.6 on 2 procs for 10000 steps with 64 atoms

Nlocal:     64 ave 64 max 64 min
Histogram: 1 0 0 0 0 0 0 0 0 0
Nghost:    ghost atoms of this table line
"""


def test_drift_is_the_slope_of_total_energy_per_atom_over_the_thermo_rows_only(tmp_path):
    log = tmp_path / "log.lammps"
    log.write_text(LOG)  # the 7-word 'Nlocal' line after the block once ended the parse with no header
    # TotEng -342.6, -342.6, -342.5 at 0, 5, 10 ps: least-squares slope 0.01 eV/ps over 64 atoms
    assert nve_drift(log, 64, 0.001) == pytest.approx(0.1 / 10 / 64, rel=1e-6)
    assert thermo(log)["Temp"].mean() == pytest.approx(650 / 3)  # the temperature the drift was measured at
    log.write_text("LAMMPS (29 Aug 2024)\nERROR: Lost atoms\n")
    with pytest.raises(ValueError, match="no thermo rows"):
        nve_drift(log, 64, 0.001)


def test_after_burn_in_keeps_the_later_frames_in_time_order(tmp_path):
    import dpdata
    import numpy as np

    n = 5
    data = {"atom_names": ["Al", "Ni"], "atom_numbs": [1, 1], "atom_types": np.array([0, 1]),
            "orig": np.zeros(3), "cells": np.tile(4 * np.eye(3), (n, 1, 1)),
            "coords": np.tile([[0.0, 0, 0], [2, 2, 2]], (n, 1, 1)), "energies": np.arange(n, dtype=float),
            "forces": np.zeros((n, 2, 3))}
    dpdata.LabeledSystem(data=data).to("deepmd/npy", str(tmp_path / "md" / "AlNi"))
    kept = after_burn_in([tmp_path / "md" / "AlNi"], 2, tmp_path / "late")
    assert kept == [tmp_path / "late" / "AlNi"]
    late = dpdata.LabeledSystem(str(kept[0]), fmt="deepmd/npy")
    assert list(late["energies"]) == [2.0, 3.0, 4.0]  # frames 2.. of the trajectory, the first two left out
    assert after_burn_in([tmp_path / "md" / "AlNi"], n, tmp_path / "none") == []  # none left: no system


def test_the_drift_starts_from_the_last_frame_of_the_teachers_trajectory(tmp_path):
    """Not from the config's starting cell, which may be far from the trajectory's temperature
    (NiAl's packed melt cell heated an 1800 K NVE to ~6200 K)."""
    import dpdata
    import numpy as np
    from ase.io import read

    n = 4
    coords = np.stack([[[0.0, 0, 0], [2 + 0.1 * i, 2, 2]] for i in range(n)])
    data = {"atom_names": ["Al", "Ni"], "atom_numbs": [1, 1], "atom_types": np.array([1, 0]),
            "orig": np.zeros(3), "cells": np.tile(4 * np.eye(3), (n, 1, 1)), "coords": coords,
            "energies": np.zeros(n), "forces": np.zeros((n, 2, 3))}
    dpdata.LabeledSystem(data=data).to("deepmd/npy", str(tmp_path / "md" / "AlNi"))
    start = read(last_frame([tmp_path / "md" / "AlNi"], tmp_path / "nve" / "start.extxyz"))
    assert list(start.get_chemical_symbols()) == ["Ni", "Al"] and start.pbc.all()
    assert np.allclose(start.positions, coords[-1]) and np.allclose(start.cell, 4 * np.eye(3))


def test_a_burn_in_past_the_held_out_trajectory_is_one_line_exit_2_before_any_work():
    import subprocess

    out = subprocess.run([sys.executable, str(REPO / "bench/real_teacher.py"), "--burn-in", "600"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "real_teacher: --burn-in: expected 0 <= steps < --held-out-steps (600), got 600"]
