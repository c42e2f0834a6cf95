"""How far does a teacher's force reach? One run, figures printed last.

    python bench/locality.py --cell CELL --type-map T... [--calculator sevenn] [--kwargs JSON] [--temp K]
        [--cutoffs 4,5,6,7] [--seeds N] [--repeat R] [--equilibrate N] [--steps N] [--parallel P]
        [--threads T] [--deadline S] [--json FILE]

A DeePMD-kit student is local: its energy is a sum of atomic energies, each a function of the
atoms within its cut-off ``rcut``. A message-passing teacher is not: SevenNet-0 passes messages
five times over 5 Å, so the force on an atom can depend on atoms far beyond any student's
``rcut``. Where that dependence is large, no training recipe removes the error it leaves, and the
student's cut-off (which sets its speed) has to grow instead. This bench measures it the direct
way: equilibrate the cell at ``--temp`` (a ``--repeat`` supercell, Langevin MD driven by the
teacher), pick an atom, freeze every atom within ``R`` (+``BUFFER``) of it, run Langevin MD of
the others only, and record the teacher's force on that atom every ``EVERY`` steps. Its spread
(standard deviation per Cartesian component, the unit of DeePMD-kit's force RMSE) is the part of
the force that atoms beyond ``R`` decide. Each cut-off is measured from ``--seeds`` independent
equilibrations, in ``--parallel`` processes (on a GPU they share the card).

How to read it. A model whose force on an atom used only the atoms within ``R`` could not beat
the spread at ``R``: for a DeePMD-kit student that model has ``R = 2 rcut``, since its force on an
atom is the derivative of its neighbours' energies too, which see ``rcut`` further. So the spread
at ``2 rcut`` is a floor of the student's force error on this phase; the spread at ``rcut`` is how
much of the teacher's force the student can only learn through its neighbours' energies, the
part that grows hard to learn. The spread is sampled over a finite MD of the free atoms (a
liquid rearranges over picoseconds): longer ``--steps`` raise it, so every figure is a lower bound.
``intrusions`` counts the samples where a free atom had come within ``R`` of the centre (the
frozen neighbourhood was no longer the whole of it); ``BUFFER`` keeps it near zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from lamflow.steps.label_md import TeacherMDSettings
from usage import bad_input

BUFFER = 0.3  # Å beyond R also frozen: free atoms start that far outside the neighbourhood
BURN_IN = 100  # steps of the constrained MD before the first sample (the free atoms re-thermalise)
EVERY = 4  # steps between samples of the centre atom's force
# the loop's own teacher MD (initial_data.teacher_md) defaults: its timestep and Langevin friction time
TIMESTEP_FS = TeacherMDSettings.model_fields["dt"].default * 1000
FRICTION_FS = TeacherMDSettings.model_fields["tau_t"].default * 1000


@dataclass(frozen=True)
class Task:
    cell: str
    type_map: list[str]
    calculator: str
    kwargs: dict
    temp: float
    cutoff: float
    seed: int
    repeat: int
    equilibrate: int
    steps: int
    threads: int
    deadline: float  # seconds after the task started: the constrained MD stops, its samples kept


@dataclass(frozen=True)
class Spread:
    cutoff: float
    seed: int
    n_atoms: int
    n_frozen: int
    n_samples: int
    intrusions: int
    spread: float  # eV/Å, std of the centre atom's force per component over the samples
    force_rms: float  # eV/Å, all atoms' force RMS per component at equilibrium (the scale)
    seconds: float


def constrained_spread(task: Task) -> Spread:
    """One equilibration, one centre atom, one frozen neighbourhood: the spread of its force."""
    import torch
    from ase import units
    from ase.constraints import FixAtoms
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from lamflow.steps.calculators import make_calculator
    from lamflow.steps.structures import read_atoms

    torch.set_num_threads(task.threads)
    t0 = time.time()
    atoms = read_atoms(Path(task.cell), task.type_map)[0].repeat(task.repeat)
    atoms.calc = make_calculator(task.calculator, task.kwargs)
    rng = np.random.default_rng(task.seed)
    thermalize_momenta(atoms, task.temp, rng=rng)

    def langevin():
        return Langevin(atoms, timestep=TIMESTEP_FS * units.fs, temperature_K=task.temp,
                        friction=1 / (FRICTION_FS * units.fs), rng=rng)

    equilibrium: list[np.ndarray] = []
    md = langevin()
    md.attach(lambda: equilibrium.append(atoms.get_forces().copy()), interval=20)
    md.run(task.equilibrate)
    scale = np.asarray(equilibrium[len(equilibrium) // 2:] or [atoms.get_forces()])  # the equilibrated half

    centre = int(rng.integers(len(atoms)))
    frozen = np.flatnonzero(atoms.get_distances(centre, range(len(atoms)), mic=True) < task.cutoff + BUFFER)
    free = np.setdiff1d(np.arange(len(atoms)), frozen)
    atoms.set_constraint(FixAtoms(indices=frozen))
    samples: list[np.ndarray] = []
    intrusions = 0

    def sample() -> None:
        nonlocal intrusions
        samples.append(atoms.get_forces(apply_constraint=False)[centre].copy())
        intrusions += bool((atoms.get_distances(centre, free, mic=True) < task.cutoff).any())

    md = langevin()
    md.run(BURN_IN)
    md.attach(sample, interval=EVERY)
    for _ in range(max(1, task.steps // 20)):  # in chunks: the deadline keeps the samples so far
        md.run(20)
        if time.time() - t0 > task.deadline:
            break
    forces = np.asarray(samples)
    return Spread(cutoff=task.cutoff, seed=task.seed, n_atoms=len(atoms), n_frozen=len(frozen),
                  n_samples=len(forces), intrusions=intrusions,
                  spread=float(np.sqrt(np.mean(np.var(forces, axis=0)))),
                  force_rms=float(np.sqrt(np.mean(scale ** 2))), seconds=time.time() - t0)


def summary(spreads: list[Spread]) -> list[dict]:
    """Per cut-off: the spread's RMS over the seeds (each seed a different centre and liquid)."""
    rows = []
    for cutoff in sorted({s.cutoff for s in spreads}):
        mine = [s for s in spreads if s.cutoff == cutoff]
        rows.append({"cutoff": cutoff, "seeds": len(mine),
                     "spread": math.sqrt(sum(s.spread ** 2 for s in mine) / len(mine)),
                     "spread_min": min(s.spread for s in mine), "spread_max": max(s.spread for s in mine),
                     "frozen": sum(s.n_frozen for s in mine) / len(mine),
                     "samples": min(s.n_samples for s in mine), "intrusions": sum(s.intrusions for s in mine),
                     "force_rms": math.sqrt(sum(s.force_rms ** 2 for s in mine) / len(mine))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", type=Path, required=True, help="a periodic starting cell (extxyz, POSCAR, ...)")
    parser.add_argument("--type-map", nargs="+", required=True)
    parser.add_argument("--calculator", default="sevenn", help="the teacher: a lamflow calculator name")
    parser.add_argument("--kwargs", default="{}", help='its calculator_kwargs as JSON, e.g. \'{"device": "cuda"}\'')
    parser.add_argument("--temp", type=float, default=1500.0, help="K")
    parser.add_argument("--cutoffs", default="4,5,6,7", help="radii R (Å) of the frozen neighbourhood")
    parser.add_argument("--seeds", type=int, default=3, help="equilibrations (and centre atoms) per cut-off")
    parser.add_argument("--repeat", type=int, default=2,
                        help=f"supercell of the cell on each axis: R + {BUFFER} Å must stay below half its shortest width")
    parser.add_argument("--equilibrate", type=int, default=600, help=f"MD steps ({TIMESTEP_FS:g} fs) before freezing")
    parser.add_argument("--steps", type=int, default=800, help=f"MD steps of the free atoms, after {BURN_IN} of burn-in")
    parser.add_argument("--parallel", type=int, default=None, help="processes at once (default: all tasks)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--deadline", type=float, default=1e9, help="seconds: each constrained MD stops here")
    parser.add_argument("--json", type=Path, default=None, help="also write every spread here")
    args = parser.parse_args()

    try:
        cutoffs = [float(c) for c in args.cutoffs.split(",")]
        kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        bad_input(f"--cutoffs/--kwargs: {exc}; expected e.g. --cutoffs 4,5,6 --kwargs '{{\"device\": \"cuda\"}}'")
    if not args.cell.is_file():
        bad_input(f"--cell: {args.cell}: no such file")
    from lamflow.steps.errors import InputError
    from lamflow.steps.structures import read_atoms

    try:
        cell = read_atoms(args.cell, args.type_map)[0].repeat(args.repeat)
    except InputError as exc:
        bad_input(str(exc))
    half = 0.5 / np.linalg.norm(cell.cell.reciprocal(), axis=1).max()  # half the narrowest width: beyond it
    # a sphere would meet its own images
    if max(cutoffs) + BUFFER >= half:
        bad_input(f"--cutoffs: {max(cutoffs)} Å + {BUFFER} reaches half the {args.repeat}x supercell's width "
                  f"({half:.2f} Å); raise --repeat")

    tasks = [Task(str(args.cell.resolve()), args.type_map, args.calculator, kwargs, args.temp, c, seed,
                  args.repeat, args.equilibrate, args.steps, args.threads, args.deadline)
             for c in cutoffs for seed in range(1, args.seeds + 1)]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with ProcessPoolExecutor(args.parallel or len(tasks), mp_context=get_context("spawn")) as pool:
        spreads = []
        for spread in pool.map(constrained_spread, tasks):
            spreads.append(spread)
            print(f"R {spread.cutoff} seed {spread.seed}: spread {spread.spread:.4f} eV/Å over {spread.n_samples} "
                  f"samples, {spread.n_frozen} frozen, {spread.seconds:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in spreads], indent=1))

    import torch

    where = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() and "cuda" in args.kwargs else "CPU"
    print(f"\nlocality of {args.calculator} ({kwargs}) on {args.cell.name} x{args.repeat} ({len(cell)} atoms) at "
          f"{args.temp:.0f} K; {args.equilibrate} steps to equilibrate, {args.steps} of the free atoms; {where}")
    print(f"{'R (Å)':>6} {'seeds':>5} {'frozen':>7} {'samples':>7} {'intrusions':>10} "
          f"{'spread eV/Å':>12} {'min-max':>13} {'force RMS':>10}")
    for r in summary(spreads):
        print(f"{r['cutoff']:>6.1f} {r['seeds']:>5} {r['frozen']:>7.0f} {r['samples']:>7} {r['intrusions']:>10} "
              f"{r['spread']:>12.4f} {r['spread_min']:>6.3f}-{r['spread_max']:.3f} {r['force_rms']:>10.3f}")
    print("the spread at R: the force on an atom that atoms beyond R decide (a lower bound); a student of "
          "cut-off rcut cannot beat the spread at R = 2 rcut")


if __name__ == "__main__":
    main()
