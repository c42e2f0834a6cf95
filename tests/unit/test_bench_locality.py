"""bench/locality.py: the spread of an atom's force with its neighbourhood frozen is what atoms
beyond it decide. A pair potential with cut-off rc is the case with a known answer: frozen to rc
or beyond, nothing that moves can reach the atom (spread 0); frozen to less, its force moves."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ase.build import bulk
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from locality import Task, constrained_spread, summary  # noqa: E402

LJ = "ase.calculators.lj:LennardJones"
LJ_KWARGS = {"sigma": 2.27, "epsilon": 0.2, "rc": 4.0}  # fcc at a = 3.61 Å is near its minimum


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    path = tmp_path_factory.mktemp("locality") / "cu.extxyz"
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3).write(path)  # 108 atoms, 10.8 Å wide
    return path


def task(cell, cutoff: float, seed: int = 1) -> Task:
    return Task(str(cell), ["Cu"], LJ, LJ_KWARGS, temp=300.0, cutoff=cutoff, seed=seed, repeat=1,
                equilibrate=40, steps=60, threads=1, deadline=1e9)


def test_beyond_a_pair_potentials_cut_off_nothing_moves_the_force_and_within_it_something_does(cell):
    far = constrained_spread(task(cell, 4.0))
    near = constrained_spread(task(cell, 2.0))
    assert far.n_frozen > near.n_frozen >= 1
    assert far.n_samples == near.n_samples == 60 // 4
    assert far.intrusions == 0
    assert far.spread < 1e-9  # only the frozen atoms are within rc of the centre
    assert near.spread > 1e-3 and near.force_rms > near.spread  # the first shell (2.55 Å) moves
    rows = summary([far, near, constrained_spread(task(cell, 2.0, seed=2))])
    assert [r["cutoff"] for r in rows] == [2.0, 4.0] and rows[0]["seeds"] == 2


def test_a_cut_off_that_reaches_the_cells_own_images_is_bad_input(cell):
    out = subprocess.run([sys.executable, str(REPO / "bench/locality.py"), "--cell", str(cell), "--type-map", "Cu",
                          "--calculator", LJ, "--cutoffs", "3,5.2", "--repeat", "1"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "locality: --cutoffs: 5.2 Å + 0.3 reaches half the 1x supercell's width (5.42 Å); raise --repeat"]
