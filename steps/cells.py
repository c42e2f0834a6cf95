"""Starting cells made rather than read: a random liquid or amorphous cell, random alloys on a lattice.

A user without a starting structure of every phase makes one: the hot explorations melt a random
cell, and dpgen2's ``alloy`` configurations (random species on a replicated lattice, strained and
rattled) are how its users cover an alloy's compositions. These functions build them with ASE and
dpdata, seeded, so a config that lists what they wrote explores the same cells on every machine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .errors import InputError

#: the lattices dpgen2's ``alloy`` configurations are built on; ``a`` is the cubic (conventional)
#: lattice constant as ASE's ``bulk`` takes it; hcp's c is the ideal sqrt(8/3) a
LATTICES = ("fcc", "bcc", "hcp", "sc", "diamond")


def random_cell(symbols: list[str], density_g_cm3: float, min_distance: float, seed: int,
                max_tries: int = 1_000_000):
    """A cubic periodic cell of ``symbols`` at random positions at a mass density, no two atoms
    (periodic images included) closer than ``min_distance`` Å: the starting cell of a liquid or an
    amorphous solid, which MD at temperature then relaxes. Random sequential placement jams near a
    packing fraction of 0.38 (spheres of diameter ``min_distance``): a request beyond it would loop
    forever, so it stops after ``max_tries`` draws and says what to lower."""
    from ase import Atoms
    from ase.data import atomic_masses, atomic_numbers

    mass = sum(n * atomic_masses[atomic_numbers[s]] for s, n in Counter(symbols).items()) / 6.02214076e23  # g
    length = (mass / density_g_cm3 * 1e24) ** (1 / 3)  # Å
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    for _ in range(max_tries):
        if len(positions) == len(symbols):
            return Atoms(symbols, positions=positions, cell=[length] * 3, pbc=True)
        p = rng.uniform(0, length, 3)
        if positions:
            d = np.asarray(positions) - p
            d -= length * np.round(d / length)  # minimum image
            if np.min(np.linalg.norm(d, axis=1)) < min_distance:
                continue
        positions.append(p)
    raise ValueError(f"placed {len(positions)} of {len(symbols)} atoms at {density_g_cm3} g/cm³ with no pair "
                     f"closer than {min_distance} Å: lower min_distance or the density")


def unit_cell(lattice: str, a: float, where: str):
    """The unit cell of ``lattice`` with cubic lattice constant ``a`` Å (one placeholder species):
    fcc, bcc and sc as their cubic cells (4, 2, 1 atoms), diamond as its 2-atom primitive cell and
    hcp as its 2-atom cell with the ideal c/a, the cells dpgen2's alloy configurations replicate."""
    from ase.build import bulk

    if lattice not in LATTICES:
        raise InputError(where, f"lattice '{lattice}' is not one of {', '.join(LATTICES)}")
    if not a > 0:
        raise InputError(where, f"lattice constant {a} Å: expected a positive length")
    if lattice == "hcp":
        return bulk("X", "hcp", a=a, c=a * np.sqrt(8 / 3))
    return bulk("X", lattice, a=a, cubic=lattice in ("fcc", "bcc"))


def _concentrations(concentration: list | None, n_types: int, where: str) -> list[np.ndarray]:
    """``concentration`` as one or more normalised weight vectors over the type map."""
    if concentration is None:
        return [np.full(n_types, 1.0 / n_types)]
    choices = concentration if concentration and isinstance(concentration[0], (list, tuple)) else [concentration]
    out = []
    for c in choices:
        w = np.asarray(c, dtype=float)
        if w.shape != (n_types,) or np.any(w < 0) or not w.sum() > 0 or not np.all(np.isfinite(w)):
            raise InputError(where, f"concentration {list(c)}: expected {n_types} non-negative numbers, one per "
                                    "type_map element, not all zero")
        out.append(w / w.sum())
    return out


def alloy_cells(type_map: list[str], base, count: int, replicate: list[int] | None = None,
                concentration: list | None = None, cell_pert_frac: float = 0.0, atom_pert_dist: float = 0.0,
                seed: int = 0, where: str = "alloy") -> list:
    """``count`` random alloys of ``type_map`` on ``base`` (ASE Atoms: its sites, its cell)
    replicated by ``replicate``: each site's species drawn by ``concentration`` (one weight per
    element; a list of such lists: one picked at random per cell; none: equal), then the cell
    strained by up to ``cell_pert_frac`` and each atom moved by ``atom_pert_dist`` Å (dpdata's
    ``perturb``, normal style, as dpgen2's alloy configurations do). Seeded: the same cells each
    call."""
    import dpdata

    if count < 1:
        raise InputError(where, f"numb_confs {count}: expected at least 1 cell")
    reps = [replicate] * 3 if isinstance(replicate, int) else list(replicate or [1, 1, 1])
    if len(reps) != 3 or any(int(r) < 1 for r in reps):
        raise InputError(where, f"replicate {replicate}: expected three positive integers")
    lattice = base.repeat([int(r) for r in reps])
    weights = _concentrations(concentration, len(type_map), where)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # dpdata's perturb draws from numpy's global generator
    cells = []
    for _ in range(count):
        w = weights[rng.integers(len(weights))]
        atoms = lattice.copy()
        atoms.set_chemical_symbols([type_map[t] for t in rng.choice(len(type_map), size=len(atoms), p=w)])
        atoms.pbc = True
        system = dpdata.System(atoms, fmt="ase/structure")
        if cell_pert_frac or atom_pert_dist:
            system = system.perturb(pert_num=1, cell_pert_fraction=cell_pert_frac, atom_pert_distance=atom_pert_dist,
                                    atom_pert_style="normal")
        cells.append(system.to("ase/structure")[0])
    return cells


def read_lattice(path: Path, fmt: str | None, where: str):
    """The first frame of a structure file as an alloy's lattice (its species are replaced)."""
    import dpdata

    if not path.exists():
        raise InputError(where, f"lattice file {path} not found")
    try:
        system = dpdata.System(str(path), fmt=fmt or "auto")
    except Exception as exc:  # dpdata raises whatever its parser hits
        raise InputError(where, f"lattice file {path} could not be read as {fmt or 'a structure'} "
                                f"({type(exc).__name__}: {exc})") from None
    return system.to("ase/structure")[0]
