"""speed — LAMMPS timesteps per second of one model on one cell.

The point of distillation is a faster potential, so lamflow measures it on the same LAMMPS
build and cell for teacher and student and reports the ratio every iteration. The number comes
from LAMMPS' own ``Performance:`` line, i.e. excluding start-up and model loading.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from .base import Params
from .errors import StepFailed
from .explore import ExploreParams
from .explore import run as explore_run


class SpeedParams(Params):
    model: Path
    structure: Path
    type_map: list[str] = Field(min_length=1)
    output: Path
    nsteps: int = Field(200, ge=10)
    temp: float = 300.0


class SpeedResult(BaseModel):
    timesteps_per_second: float
    natoms: int


def run(params: SpeedParams) -> SpeedResult:
    md = explore_run(ExploreParams(
        output=params.output, models=[params.model], type_map=params.type_map,
        structure=params.structure, temps=[params.temp], nsteps=params.nsteps,
        trj_freq=params.nsteps,
    ))
    task = md.tasks[0]
    if task.status != "ok":
        raise StepFailed(f"speed MD failed: {task.reason}")
    log = (task.path / "log.lammps").read_text()
    perf = re.findall(r"Performance:.*?([\d.]+) timesteps/s", log)
    natoms = re.findall(r"Loop time of .* steps with (\d+) atoms", log)
    if not perf:
        raise StepFailed(f"no Performance line in {task.path / 'log.lammps'}")
    return SpeedResult(timesteps_per_second=float(perf[-1]), natoms=int(natoms[-1]) if natoms else 0)
