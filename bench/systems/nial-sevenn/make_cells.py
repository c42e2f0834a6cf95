"""Write the NiAl bench system's starting cells (deterministic; the .extxyz files are committed).

    python make_cells.py

- nial-b2-54.extxyz: B2 NiAl (CsCl), 3×3×3 cubic cells at 2.887 Å;
- ni3al-l12-32.extxyz: L1₂ Ni₃Al, 2×2×2 cubic cells at 3.567 Å (the Ni-rich side of the alloy);
- nial-liquid-54.extxyz: 27 Ni and 27 Al placed at random (no pair closer than 2.0 Å) at liquid
  NiAl's density, ~5.2 g/cm³; the hot explorations keep it molten (NiAl melts at 1911 K).
"""

from __future__ import annotations

from ase import Atoms

from lamflow.steps.cells import random_cell

MIN_DISTANCE = 2.0  # Å; the Ni–Al bond in B2 NiAl is 2.50 Å (2.2 cannot be packed at random at this density)


def b2(a: float = 2.887) -> Atoms:
    return Atoms("NiAl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[a] * 3, pbc=True).repeat(3)


def l12(a: float = 3.567) -> Atoms:
    cell = Atoms("AlNi3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                 cell=[a] * 3, pbc=True)
    return cell.repeat(2)


if __name__ == "__main__":
    b2().write("nial-b2-54.extxyz")
    l12().write("ni3al-l12-32.extxyz")
    random_cell(["Ni", "Al"] * 27, 5.2, MIN_DISTANCE, seed=3).write("nial-liquid-54.extxyz")
