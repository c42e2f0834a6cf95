"""stability — does a model keep energy in NVE MD, and how fast does it run? LAMMPS, one cell.

LAMBench (OpenLAM's benchmark) scores a model's *instability* by the drift of the total energy
in NVE MD: velocity Verlet at 1 fs from 300 K, the first 20 % of the run discarded, a straight
line fitted to E_total(t), its slope per atom. A model whose energy is not conserved (rough or
non-smooth potential energy surface, an unphysical region entered) drifts, and a run that loses
atoms or returns NaN fails (LAMMPS says so in an error of its own). A LAMMPS killed by a signal
without one crashed, which is no finding about the model: that is raised, to be retried. The same
run's LAMMPS ``Performance:`` line gives the efficiency in µs per atom per step.

Two numbers for the drift: the true eV/atom/ps, and LAMBench's own number, which fits against
ASE time units (1 unit = 10.18 fs) and is therefore 10.18× the true value; its score
``max(0, log10(drift / 5e-4))`` (5 for a run that failed) is computed on that number, so that
it compares with the leaderboard.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .base import OutputPath, Params, TypeMap

from .artifacts import write_json
from .errors import StepFailed
from .explore import ExploreParams
from .explore import run as explore_run
from .speed import lammps_speed

#: LAMBench: the first 20 % of the run is equilibration; Φ_tol = 5e-4 (its units); a failed run scores 5
WARMUP_FRACTION, TOLERANCE, FAILED_SCORE = 0.2, 5e-4, 5.0
#: ASE's unit of time in fs (ase.units.fs = 1 / this), the factor in LAMBench's drift
ASE_TIME_UNIT_FS = 10.1805


class StabilitySettings(Params):
    """The NVE run; a config's ``stability`` section is this model."""

    nsteps: int = Field(10000, ge=1, description="NVE steps (LAMBench: 10000)")
    dt: float = Field(0.001, gt=0, description="ps (LAMBench: 1 fs)")
    temp: float = Field(300.0, gt=0, description="initial temperature, K (LAMBench: 300)")


class StabilityParams(StabilitySettings):
    model: Path = Field(description="a frozen DeePMD-kit model (.pth/.pt2), run in LAMMPS")
    structure: Path = Field(description="the periodic cell (any ASE or dpdata format, deepmd/npy included)")
    frame: int = Field(0, ge=0, description="which frame of the structure file")
    type_map: TypeMap
    output: OutputPath
    seed: int = Field(1, ge=1, description="velocity seed")


class StabilityResult(BaseModel):
    ok: bool = Field(description="the MD finished with finite energies")
    reason: str = ""
    natoms: int = 0
    drift_ev_atom_ps: float | None = Field(None, description="|dE_total/dt| per atom after the warm-up")
    lambench_drift: float | None = Field(None, description="the same in LAMBench's convention (10.18x)")
    instability: float = Field(description="LAMBench's score: 0 stable, 5 failed")
    us_per_atom_step: float | None = Field(None, description="LAMMPS' speed in this run")
    mean_temp: float | None = Field(None, description="K, the run's mean temperature after the warm-up: where the "
                                                      "drift was measured (a cell far from equilibrium at ``temp`` "
                                                      "heats or cools the NVE away from it)")


def thermo(log: str) -> np.ndarray:
    """The rows of LAMMPS' thermo output (step temp pe ke etotal press vol) of the last run."""
    blocks = re.findall(r"\n\s*Step\s+Temp[^\n]*\n(.*?)\nLoop time", log, re.S)
    if not blocks:
        return np.empty((0, 7))
    rows = [line.split() for line in blocks[-1].strip().splitlines()]
    return np.array([[float(x) for x in r] for r in rows if len(r) == 7 and r[0].isdigit()])


def score(lambench_drift: float | None) -> float:
    if lambench_drift is None or not math.isfinite(lambench_drift):
        return FAILED_SCORE
    if lambench_drift <= 0:
        return 0.0
    return float(min(FAILED_SCORE, max(0.0, math.log10(lambench_drift / TOLERANCE))))


def run(params: StabilityParams) -> StabilityResult:
    md = explore_run(ExploreParams(
        output=params.output, models=[params.model], type_map=params.type_map, structure=params.structure,
        frame=params.frame, ensemble="nve", temps=[params.temp], nsteps=params.nsteps,
        trj_freq=max(1, params.nsteps // 100), dt=params.dt, seed=params.seed))
    task = md.tasks[0]
    if task.crash:
        # a finding would be wrong here: the program died, the model was not shown unstable.
        # Raised, so that the step's retries (resources.stability.retries) run it again
        raise StepFailed(f"{params.model}: LAMMPS crashed in the NVE run ({task.reason}); that says nothing "
                         f"about the model's stability, so no score is recorded")
    log_file = Path(params.output) / task.path.name / "log.lammps"
    log = log_file.read_text() if log_file.is_file() else ""
    rows = thermo(log)
    result = StabilityResult(ok=False, reason=task.reason, instability=FAILED_SCORE)
    natoms = re.findall(r"Loop time of .* steps with (\d+) atoms", log)
    if task.status == "ok" and len(rows) >= 3 and np.isfinite(rows).all() and natoms:
        n = int(natoms[-1])
        kept = rows[rows[:, 0] >= WARMUP_FRACTION * params.nsteps]
        slope = np.polyfit(kept[:, 0] * params.dt, kept[:, 4], 1)[0]  # eV/ps
        drift = abs(float(slope)) / n
        speed = lammps_speed(log)
        result = StabilityResult(ok=True, natoms=n, drift_ev_atom_ps=drift, lambench_drift=drift * ASE_TIME_UNIT_FS,
                                 instability=score(drift * ASE_TIME_UNIT_FS),
                                 us_per_atom_step=speed.us_per_atom_step if speed else None,
                                 mean_temp=float(kept[:, 1].mean()))
    elif task.status == "ok":
        result.reason = "no finite energies in the LAMMPS log"
    write_json(Path(params.output) / "stability.json", result.model_dump(mode="json"))
    return result
