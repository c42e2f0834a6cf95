"""speed — MD timesteps per second of one potential on one cell.

The point of distillation is a faster potential, so lamflow measures teacher and student on the
same cell with the same threads and reports the ratio every iteration. A DeePMD-kit model runs in
LAMMPS (the number is LAMMPS' own ``Performance:`` line: no start-up, no model loading). An ASE
calculator teacher cannot run in LAMMPS, so it runs ASE's velocity Verlet; the first steps are
warm-up and not timed. Each result says which engine ran, because the ratio then also contains
the engines' own costs (small next to a universal potential's evaluation).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from .artifacts import atomic_dir, write_json
from .base import CalculatorKwargs, OutputPath, Params, TypeMap
from .calculators import known_calculator, make_calculator
from .errors import LammpsUnavailable, StepFailed, first_sentence
from .explore import ExploreParams
from .explore import run as explore_run
from .runtime import interrupt_if_stopping
from .structures import periodic, read_atoms

#: untimed ASE steps before the clock starts (graph compilation, caches, neighbour lists)
WARMUP_STEPS = 3


class SpeedSettings(Params):
    """How long the timed MD runs; a config's speed sections inherit these."""

    nsteps: int = Field(200, ge=10, description="LAMMPS steps; an ASE calculator runs nsteps // 10 (>= 10)")
    temp: float = Field(300.0, gt=0, description="initial temperature (K)")


class SupercellSpeed(SpeedSettings):
    """A config's speed section: the MD settings and the size of the timed supercell. The sections
    of distill and version differ only in that size's default, so both map onto the step here."""

    atoms: int = Field(0, ge=0, description="time a supercell of the cell with at least this many atoms "
                                            "(0: the cell as it is)")

    def params(self, **where) -> "SpeedParams":
        """The step's parameters: these settings with ``atoms`` as its ``min_atoms``, on ``where``
        (structure, type_map, output, and model or calculator)."""
        return SpeedParams(min_atoms=self.atoms, **self.model_dump(exclude={"atoms"}), **where)


class SpeedParams(SpeedSettings):
    model: Path | None = Field(None, description="a DeePMD-kit model, run in LAMMPS")
    calculator: str | None = Field(None, description="or an ASE calculator, run with ASE's MD")
    calculator_kwargs: CalculatorKwargs
    structure: Path = Field(description="the periodic cell to time MD on")
    type_map: TypeMap
    output: OutputPath
    min_atoms: int = Field(0, ge=0, description="time a supercell of at least this many atoms, as near "
                                                "cubic as the cell allows (LAMBench times 800-1000 atoms)")

    _known = field_validator("calculator")(classmethod(lambda cls, v: known_calculator(v)))

    @model_validator(mode="after")
    def _one(self) -> "SpeedParams":
        if (self.model is None) == (self.calculator is None):
            raise ValueError("give exactly one of 'model' or 'calculator'")
        return self


class SpeedResult(BaseModel):
    """A timing, or why there is none.

    A run's product is its model, and the timing beside it a measurement: a timing MD that fails
    (a LAMMPS abort in a model's library, a supercell too large for the memory left) must not end
    a distillation or a version hours in. A raised error would, and on a static workflow (Argo)
    it stops the whole workflow, so the step returns the reason instead and the report shows it."""

    timesteps_per_second: float | None = None
    natoms: int = 0
    engine: Literal["lammps", "ase"] = "lammps"
    error: str = Field("", description="why no speed was measured (empty when one was)")

    @property
    def us_per_atom_step(self) -> float | None:
        """LAMBench's efficiency unit: microseconds per atom per MD step (None: not measured)."""
        if self.timesteps_per_second is None:
            return None
        return 1e6 / (self.timesteps_per_second * max(self.natoms, 1))


def run(params: SpeedParams) -> SpeedResult:
    if params.calculator is not None:
        return _ase(params)
    try:
        md = explore_run(ExploreParams(
            output=params.output, models=[params.model], type_map=params.type_map,
            structure=params.structure, temps=[params.temp], nsteps=params.nsteps,
            trj_freq=params.nsteps, replicate=supercell(params.structure, params.type_map, params.min_atoms),
        ))
    except LammpsUnavailable:  # the installation, not this timing: every LAMMPS of the run would fail
        raise
    except StepFailed as exc:  # no task reached its first step (explore ran it twice where it crashed)
        return SpeedResult(error=first_sentence(exc))
    task = md.tasks[0]
    if task.status != "ok":
        return SpeedResult(error=f"the timing MD failed: {task.reason}")
    result = lammps_speed((task.path / "log.lammps").read_text())
    return result or SpeedResult(error=f"no Performance line in {task.path / 'log.lammps'}")


def lammps_speed(log: str) -> SpeedResult | None:
    """The speed of the last run in a LAMMPS log (its ``Performance:`` and ``Loop time`` lines),
    or None when the run wrote none."""
    perf = re.findall(r"Performance:.*?([\d.]+) timesteps/s", log)
    natoms = re.findall(r"Loop time of .* steps with (\d+) atoms", log)
    if not perf:
        return None
    return SpeedResult(timesteps_per_second=float(perf[-1]), natoms=int(natoms[-1]) if natoms else 0)


def supercell(structure: Path, type_map: list[str], min_atoms: int) -> tuple[int, int, int]:
    """Repeats along the three cell vectors giving at least ``min_atoms`` atoms: each added
    repeat goes to the currently shortest side, so the supercell is as near cubic as the cell
    allows (speed per atom then measures the model, not the neighbour list's edge effects)."""
    from .structures import read_system

    first = read_system(Path(structure), type_map).sub_system([0])
    lengths = np.linalg.norm(first["cells"][0], axis=1)
    reps = [1, 1, 1]
    while first.get_natoms() * reps[0] * reps[1] * reps[2] < min_atoms:
        shortest = int(np.argmin(lengths * reps))
        reps[shortest] += 1
    return (reps[0], reps[1], reps[2])


def _ase(params: SpeedParams) -> SpeedResult:
    """Velocity Verlet with the calculator on the first frame of ``structure``."""
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    calc = make_calculator(params.calculator, params.calculator_kwargs, field="calculator")
    atoms = periodic(read_atoms(params.structure, params.type_map)[0], str(params.structure))
    atoms = atoms.repeat(supercell(params.structure, params.type_map, params.min_atoms))  # LAMMPS' cell
    atoms.calc = calc
    thermalize_momenta(atoms, params.temp, rng=np.random.default_rng(1))
    md = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    md.attach(interrupt_if_stopping, interval=1, what="speed")
    nsteps = max(10, params.nsteps // 10)
    md.run(WARMUP_STEPS)
    t0 = time.perf_counter()
    md.run(nsteps)
    seconds = time.perf_counter() - t0
    result = SpeedResult(timesteps_per_second=nsteps / seconds, natoms=len(atoms), engine="ase")
    with atomic_dir(params.output) as work:
        write_json(work / "speed.json", {**result.model_dump(), "nsteps": nsteps, "seconds": seconds})
    return result
