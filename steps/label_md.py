"""label_md — short MD driven by a reference calculator, its frames labelled on the way.

Rattled copies of the starting cells (``perturb``) only teach a first student the neighbourhood
of the crystal. The frames an exploration at 300–1800 K will visit (thermal disorder, a melt,
other densities) look nothing like them, so a first student trained on rattles alone explores
into regions where it is wildly wrong, and most of iteration 0's frames are "failed". A short
MD driven by the *teacher* visits physical configurations at the exploration's temperatures,
and every step already carries the teacher's energy, forces and stress: the frames cost no
extra labelling. Any ASE calculator drives it: a universal potential by name, or a DeePMD-kit
teacher through ``deepmd`` (its ``DP`` calculator).

One MD per (starting frame × temperature), Langevin (``nvt``) or Berendsen (``npt``; a slab's
in its plane), seeded;
frames every ``trj_freq`` steps after the start are written as deepmd/npy.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from .artifacts import atomic_dir
from .base import (CalculatorKwargs, OutputPath, Params, Seed, TypeMap, barostat_unused, frames_after_start,
                   positive_kelvin)
from .calculators import fresh_after_failure, known_calculator, make_calculator
from .errors import StepFailed, StepInterrupted, first_sentence, out_of_memory
from .runtime import interrupt_if_stopping
from .structures import check_overlaps, deepmd_systems, open_axes, periodic, read_atoms, slab_barostat

log = logging.getLogger(__name__)


class TeacherMDSettings(Params):
    """Short MD the teacher drives; the distill config's ``initial_data.teacher_md`` is this model."""

    ensemble: Literal["nvt", "npt"] = Field("nvt", description="nvt: Langevin thermostat; npt: Berendsen thermostat "
                                                               "and barostat")
    temps: list[float] = Field(min_length=1, description="K")
    pressure: float = Field(1.0, description="bar; npt only (refused with nvt)")
    nsteps: int = Field(500, ge=1, description="MD steps per starting cell and temperature (timestep dt): long "
                                               "enough for the hottest phase to relax. A melt takes a few hundred "
                                               "(SevenNet-0's Si liquid at 1500 K: ~300 steps of 1 fs), and a student "
                                               "never explores the relaxed liquid on its own")
    trj_freq: int = Field(20, ge=1, description="keep a labelled frame every N steps")
    dt: float = Field(0.001, gt=0, description="ps")
    tau_t: float = Field(0.1, gt=0, description="ps, Langevin friction time / Berendsen thermostat")
    tau_p: float = Field(0.5, gt=0, description="ps, Berendsen barostat")

    _positive = field_validator("temps")(classmethod(lambda cls, v: positive_kelvin(v)))

    @model_validator(mode="after")
    def _frames(self) -> "TeacherMDSettings":
        frames_after_start(self.trj_freq, self.nsteps, "kept")
        barostat_unused(self, ("pressure", "tau_p"))
        return self


class LabelMDParams(TeacherMDSettings):
    structures: list[Path] = Field(min_length=1, description="starting cells; every temperature runs from each")
    type_map: TypeMap
    output: OutputPath
    calculator: str = Field(description="the ASE calculator that drives the MD and labels its frames (emt, xtb, "
                                        "deepmd, sevenn, chgnet or module:Class)")
    calculator_kwargs: CalculatorKwargs
    max_force: float | None = Field(None, gt=0, description="eV/Å: stop a trajectory whose force exceeds this")
    seed: Seed = 1

    _known = field_validator("calculator")(classmethod(lambda cls, v: known_calculator(v)))


class LabelMDResult(BaseModel):
    systems: list[Path]
    n_frames: int
    n_trajectories: int
    n_stopped: int = Field(description="trajectories stopped early (non-finite or too large forces)")


def _dynamics(params: LabelMDParams, atoms, temp: float, rng: np.random.Generator, pbc=(True, True, True)):
    """The MD of one trajectory; ``pbc``, the file's own periodicity (``atoms`` runs periodic
    everywhere), keeps a slab's barostat in its plane."""
    from ase import units

    dt = params.dt * 1000 * units.fs
    if params.ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, timestep=dt, temperature_K=temp, friction=1 / (params.tau_t * 1000 * units.fs),
                        fixcm=False, rng=rng)  # the centre of mass is held by FixCom (see run)
    from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen, NPTBerendsen

    barostat = NPTBerendsen if all(pbc) else partial(Inhomogeneous_NPTBerendsen, mask=tuple(int(p) for p in pbc))
    return barostat(atoms, timestep=dt, temperature_K=temp, taut=params.tau_t * 1000 * units.fs,
                        pressure_au=params.pressure * units.bar, taup=params.tau_p * 1000 * units.fs,
                        # ~1e-5/bar lies between solids (1e-6) and liquids (5e-5): it only sets how
                        # fast the volume relaxes, not where it goes
                        compressibility_au=1e-5 / units.bar)


def run(params: LabelMDParams) -> LabelMDResult:
    import dpdata
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.velocitydistribution import thermalize_momenta

    files = [(str(path), a) for path in params.structures for a in read_atoms(path, params.type_map)]
    for where, a in files:
        slab_barostat(open_axes(a) if params.ensemble == "npt" else [], where)
    starts = [periodic(a, where) for where, a in files]
    check_overlaps(starts, ", ".join(map(str, params.structures)))
    calc = make_calculator(params.calculator, params.calculator_kwargs)
    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    stopped = n_traj = 0
    for s_index, start in enumerate(starts):
        for t_index, temp in enumerate(params.temps):
            n_traj += 1
            rng = np.random.default_rng(params.seed + 1000 * s_index + t_index)
            atoms = start.copy()
            atoms.set_constraint(FixCom())  # no drift of the whole cell (ASE's recommended way)
            atoms.calc = calc
            thermalize_momenta(atoms, temp, rng=rng)
            md = _dynamics(params, atoms, temp, rng, files[s_index][1].pbc)
            md.attach(interrupt_if_stopping, interval=1, what="label_md")
            for _ in range(params.nsteps // params.trj_freq):
                try:
                    md.run(params.trj_freq)
                    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
                    stress = atoms.get_stress()
                except StepInterrupted:
                    raise
                except Exception as exc:  # a calculator that cannot go on: keep what it gave
                    if out_of_memory(exc):
                        raise StepFailed(f"label_md: trajectory {n_traj}: the calculator ran out of memory "
                                         f"({first_sentence(exc)}); the step is retried") from exc
                    log.warning("label_md: trajectory %d at %g K stopped: %s", n_traj, temp, exc)
                    stopped += 1
                    calc = fresh_after_failure(params.calculator, params.calculator_kwargs)
                    break
                if not (np.isfinite(energy) and np.all(np.isfinite(forces))) or (
                        params.max_force is not None and np.abs(forces).max() > params.max_force):
                    stopped += 1
                    break
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces, stress=stress)
                multi.append(dpdata.LabeledSystem(frame, fmt="ase/structure", type_map=params.type_map))
    if not multi.get_nframes():
        raise StepFailed("the teacher's MD kept no frame (every trajectory stopped at once)")
    with atomic_dir(params.output) as out:
        multi.to_deepmd_npy(str(out))
    return LabelMDResult(systems=deepmd_systems(params.output), n_frames=multi.get_nframes(),
                         n_trajectories=n_traj, n_stopped=stopped)
