"""bench/real_teacher.py's held-out frames after a burn-in, and its bad options. Its NVE drift is
lamflow's stability step (tests/unit/test_stability.py)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from real_teacher import after_burn_in  # noqa: E402


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


def test_a_burn_in_past_the_held_out_trajectory_is_one_line_exit_2_before_any_work():
    import subprocess

    out = subprocess.run([sys.executable, str(REPO / "bench/real_teacher.py"), "--burn-in", "600"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "real_teacher: --burn-in: expected 0 <= steps < --held-out-steps (600), got 600"]
