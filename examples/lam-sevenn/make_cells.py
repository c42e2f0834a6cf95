"""Write the example's starting cells (deterministic; the .extxyz files are committed).

    python make_cells.py

Ni and Al (fcc), the B2 NiAl intermetallic and, downstream, the L1_2 Ni3Al alloy (the γ'
phase of Ni superalloys), each at its experimental lattice constant.
"""

from __future__ import annotations

from ase import Atoms
from ase.build import bulk


def l12(a: float) -> Atoms:
    """Ni3Al: Al on the cube corners, Ni on the face centres."""
    return Atoms("AlNi3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                 cell=[a, a, a], pbc=True)


if __name__ == "__main__":
    bulk("Ni", "fcc", a=3.52, cubic=True).repeat(2).write("ni-fcc-32.extxyz")
    bulk("Al", "fcc", a=4.05, cubic=True).repeat(2).write("al-fcc-32.extxyz")
    bulk("NiAl", "cesiumchloride", a=2.88).repeat(3).write("nial-b2-54.extxyz")
    l12(3.57).repeat(2).write("ni3al-l12-32.extxyz")
