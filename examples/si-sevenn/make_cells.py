"""Write the example's starting cells (deterministic; the .extxyz files are committed).

    python make_cells.py

- si-diamond-64.extxyz: the crystal, 2×2×2 conventional diamond cells at 5.43 Å;
- si-liquid-64.extxyz: 64 atoms placed at random (no pair closer than 2.2 Å) at liquid Si's
  density, 2.57 g/cm³; the hot explorations melt it;
- si-amorphous-64.extxyz: the same at amorphous Si's density, 2.28 g/cm³; at 300–900 K it stays
  a disordered solid.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_masses, atomic_numbers

N_ATOMS = 64
MIN_DISTANCE = 2.2  # Å; the Si–Si bond is 2.35 Å


def random_cell(density_g_cm3: float, seed: int) -> Atoms:
    mass = N_ATOMS * atomic_masses[atomic_numbers["Si"]] / 6.02214076e23  # g
    length = (mass / density_g_cm3 * 1e24) ** (1 / 3)  # Å
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < N_ATOMS:
        p = rng.uniform(0, length, 3)
        if positions:
            d = np.asarray(positions) - p
            d -= length * np.round(d / length)  # minimum image
            if np.min(np.linalg.norm(d, axis=1)) < MIN_DISTANCE:
                continue
        positions.append(p)
    return Atoms("Si%d" % N_ATOMS, positions=positions, cell=[length] * 3, pbc=True)


if __name__ == "__main__":
    bulk("Si", "diamond", a=5.43, cubic=True).repeat(2).write("si-diamond-64.extxyz")
    random_cell(2.57, seed=1).write("si-liquid-64.extxyz")
    random_cell(2.28, seed=2).write("si-amorphous-64.extxyz")
