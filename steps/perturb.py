"""perturb — many slightly distorted copies of initial configurations (dpdata's ``perturb``).

The first student needs data before any exploration: the usual recipe (dpgen's init_bulk) is
to label randomly strained and rattled copies of the starting cells. Here the teacher labels
them, so the cost is seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .artifacts import atomic_dir
from .base import OutputPath, Params, Seed, TypeMap
from .structures import deepmd_systems, read_system


class PerturbSettings(Params):
    """How far copies are distorted; shared by every config section that perturbs structures."""

    cell_fraction: float = Field(0.03, ge=0, description="relative cell distortion")
    atom_distance: float = Field(0.1, ge=0, description="Å, largest atomic displacement")


class PerturbParams(PerturbSettings):
    structures: list[Path] = Field(min_length=1, description="cells to perturb (any ASE or dpdata format)")
    type_map: TypeMap
    output: OutputPath
    n_per_structure: int = Field(10, ge=1, description="perturbed copies of each cell")
    seed: Seed = 1


class PerturbResult(BaseModel):
    systems: list[Path]
    n_frames: int


def run(params: PerturbParams) -> PerturbResult:
    import dpdata

    np.random.seed(params.seed)  # dpdata's perturb draws from numpy's global generator
    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    for path in params.structures:
        system = read_system(Path(path), params.type_map)
        for i in range(len(system)):
            frame = dpdata.System(data={k: v for k, v in system.sub_system([i]).data.items()
                                        if k in ("atom_names", "atom_numbs", "atom_types", "orig",
                                                 "cells", "coords", "nopbc")})
            multi.append(frame.perturb(pert_num=params.n_per_structure,
                                       cell_pert_fraction=params.cell_fraction,
                                       atom_pert_distance=params.atom_distance,
                                       atom_pert_style="normal"))
    with atomic_dir(params.output) as out:
        multi.to_deepmd_npy(str(out))
    return PerturbResult(systems=deepmd_systems(params.output), n_frames=multi.get_nframes())
