"""Starting cells that are made, not read: a random liquid cell, random alloys on a lattice."""

from __future__ import annotations

import numpy as np
import pytest

from lamflow.steps.cells import alloy_cells, random_cell, unit_cell
from lamflow.steps.errors import InputError
from lamflow.steps.structures import overlaps


def test_a_random_cell_keeps_its_distance_and_density_and_a_jammed_one_says_so():
    """The starting cells of the liquid and amorphous examples (examples/si-sevenn, the NiAl bench
    system) come from random_cell: no pair closer than asked, the density asked, and a request
    beyond random packing's jamming stops with one message instead of looping forever."""
    from ase.data import atomic_masses, atomic_numbers

    atoms = random_cell(["Ni", "Al"] * 8, 5.2, 2.0, seed=3)
    d = atoms.get_all_distances(mic=True)
    assert d[np.triu_indices(len(atoms), 1)].min() >= 2.0 and not overlaps([atoms])
    grams = sum(atomic_masses[atomic_numbers[s]] for s in atoms.get_chemical_symbols()) / 6.02214076e23
    assert abs(grams / (atoms.get_volume() * 1e-24) - 5.2) < 1e-9
    with pytest.raises(ValueError, match="placed .* of 16 atoms .* lower min_distance or the density"):
        random_cell(["Ni", "Al"] * 8, 5.2, 3.5, seed=3, max_tries=20_000)


@pytest.mark.parametrize("lattice, a, sites, nearest", [
    ("fcc", 4.05, 4, 4.05 / np.sqrt(2)), ("bcc", 3.3, 2, 3.3 * np.sqrt(3) / 2), ("sc", 2.7, 1, 2.7),
    ("hcp", 3.2, 2, 3.2), ("diamond", 5.43, 2, 5.43 * np.sqrt(3) / 4)])
def test_each_lattice_has_its_sites_and_nearest_neighbour_distance(lattice, a, sites, nearest):
    cell = unit_cell(lattice, a, "x").repeat(3)
    assert len(cell) == 27 * sites
    d = cell.get_all_distances(mic=True)
    assert d[np.triu_indices(len(cell), 1)].min() == pytest.approx(nearest, rel=1e-9)


def test_alloys_follow_the_concentrations_are_perturbed_and_seeded():
    """dpgen2's alloy configurations: species drawn per site by one of the concentrations, the
    cell strained and the atoms moved by dpdata's perturb; the same seed makes the same cells."""
    base = unit_cell("fcc", 3.7, "x")
    cells = alloy_cells(["Cu", "Au"], base, 40, [2, 2, 2], [[1.0, 0.0], [0.0, 1.0]], 0.03, 0.1, seed=4)
    formulas = {c.get_chemical_formula() for c in cells}
    assert formulas == {"Cu32", "Au32"}  # each cell one of the two concentrations, both drawn
    assert all(c.pbc.all() and len(c) == 32 for c in cells)
    strained = [abs(np.linalg.norm(c.cell[0]) - 7.4) for c in cells]
    assert 0 < max(strained) <= 7.4 * 0.03 * np.sqrt(3) and not overlaps(cells)
    moved = cells[0].get_scaled_positions() - base.repeat(2).get_scaled_positions()
    moved -= np.round(moved)  # an atom on a face wraps to the opposite one
    assert 0 < np.abs(moved).max() * 7.4 < 0.6  # Å: normal-style moves of 0.1 Å, rarely beyond 5 sigma
    again = alloy_cells(["Cu", "Au"], base, 40, [2, 2, 2], [[1.0, 0.0], [0.0, 1.0]], 0.03, 0.1, seed=4)
    assert all(np.array_equal(a.positions, b.positions) and a.get_chemical_symbols() == b.get_chemical_symbols()
               for a, b in zip(cells, again))
    # equal concentrations by default: half of many sites each, within sampling noise
    even = alloy_cells(["Cu", "Au"], base, 10, 3, seed=1)
    share = np.mean([s == "Cu" for c in even for s in c.get_chemical_symbols()])
    assert abs(share - 0.5) < 0.05 and np.allclose(even[0].cell, np.eye(3) * 11.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"concentration": [0.5, 0.3, 0.2]}, r"concentration \[0.5, 0.3, 0.2\]: expected 2 non-negative numbers"),
    ({"concentration": [[1, 0], [0, 0]]}, "not all zero"),
    ({"replicate": [2, 2]}, r"replicate \[2, 2\]: expected three positive integers"),
    ({"count": 0}, "numb_confs 0: expected at least 1 cell"),
])
def test_a_bad_alloy_is_one_line(kwargs, message):
    args = {"count": 2, **kwargs}
    with pytest.raises(InputError, match=message):
        alloy_cells(["Cu", "Au"], unit_cell("fcc", 3.7, "x"), args.pop("count"), where="alloy", **args)
    with pytest.raises(InputError, match="lattice 'bbc' is not one of fcc, bcc, hcp, sc, diamond"):
        unit_cell("bbc", 3.0, "alloy.lattice")
