"""Write the example's starting cells (deterministic; the .extxyz files are committed).

    python make_cells.py

- si-diamond-64.extxyz: the crystal, 2×2×2 conventional diamond cells at 5.43 Å;
- si-liquid-64.extxyz: 64 atoms placed at random (no pair closer than 2.2 Å) at liquid Si's
  density, 2.57 g/cm³; the hot explorations melt it;
- si-amorphous-64.extxyz: the same at amorphous Si's density, 2.28 g/cm³; at 300–900 K it stays
  a disordered solid.
"""

from __future__ import annotations

from ase.build import bulk

from lamflow.steps.cells import random_cell

N_ATOMS = 64
MIN_DISTANCE = 2.2  # Å; the Si–Si bond is 2.35 Å


if __name__ == "__main__":
    bulk("Si", "diamond", a=5.43, cubic=True).repeat(2).write("si-diamond-64.extxyz")
    random_cell(["Si"] * N_ATOMS, 2.57, MIN_DISTANCE, seed=1).write("si-liquid-64.extxyz")
    random_cell(["Si"] * N_ATOMS, 2.28, MIN_DISTANCE, seed=2).write("si-amorphous-64.extxyz")
