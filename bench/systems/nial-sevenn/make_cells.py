"""Write the NiAl bench system's starting cells (deterministic; the .extxyz files are committed).

    python make_cells.py

- nial-b2-54.extxyz: B2 NiAl (CsCl), 3×3×3 cubic cells at 2.887 Å;
- ni3al-l12-32.extxyz: L1₂ Ni₃Al, 2×2×2 cubic cells at 3.567 Å (the Ni-rich side of the alloy);
- nial-liquid-54.extxyz: 27 Ni and 27 Al placed at random (no pair closer than 2.0 Å) at liquid
  NiAl's density, ~5.2 g/cm³; the hot explorations keep it molten (NiAl melts at 1911 K).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

MIN_DISTANCE = 2.0  # Å; the Ni–Al bond in B2 NiAl is 2.50 Å (2.2 cannot be packed at random at this density)


def b2(a: float = 2.887) -> Atoms:
    return Atoms("NiAl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[a] * 3, pbc=True).repeat(3)


def l12(a: float = 3.567) -> Atoms:
    cell = Atoms("AlNi3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                 cell=[a] * 3, pbc=True)
    return cell.repeat(2)


def liquid(density_g_cm3: float, seed: int, n_each: int = 27) -> Atoms:
    symbols = ["Ni", "Al"] * n_each
    mass = sum(atomic_masses[atomic_numbers[s]] for s in symbols) / 6.02214076e23  # g
    length = (mass / density_g_cm3 * 1e24) ** (1 / 3)  # Å
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < len(symbols):
        p = rng.uniform(0, length, 3)
        if positions:
            d = np.asarray(positions) - p
            d -= length * np.round(d / length)  # minimum image
            if np.min(np.linalg.norm(d, axis=1)) < MIN_DISTANCE:
                continue
        positions.append(p)
    return Atoms(symbols, positions=positions, cell=[length] * 3, pbc=True)


if __name__ == "__main__":
    b2().write("nial-b2-54.extxyz")
    l12().write("ni3al-l12-32.extxyz")
    liquid(5.2, seed=3).write("nial-liquid-54.extxyz")
