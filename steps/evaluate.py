"""evaluate — energy, force and virial errors of a model against a labelled set.

Used for the student against the teacher's labels (the distillation's convergence measure) and
for any model against reference data (per-branch and downstream errors in the LAM pipeline).
Energies and virials are per atom, as ``dp test`` reports them, so systems of different sizes
compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .base import Params, TypeMap

from .artifacts import write_json
from .errors import InputError
from .inference import load_model, predict
from .structures import read_system


class EvaluateParams(Params):
    model: Path = Field(description="the DeePMD-kit model to score")
    systems: list[Path] = Field(min_length=1, description="labelled deepmd/npy systems to score it on")
    type_map: TypeMap
    output: Path | None = Field(None, description="JSON file for the metrics")
    batch_size: int = Field(32, ge=1, description="frames per evaluation at most (fewer when memory is short)")


class EvaluateResult(BaseModel):
    n_frames: int
    rmse_e_per_atom: float
    rmse_f: float
    mae_f: float
    max_f_error: float
    rmse_v_per_atom: float | None = None
    per_system: dict[str, dict[str, float]] = Field(default_factory=dict)


def run(params: EvaluateParams) -> EvaluateResult:
    model = load_model(params.model)
    de, df, dv, per_system = [], [], [], {}
    for path in params.systems:
        system = read_system(Path(path), params.type_map)
        if "energies" not in system.data:
            raise InputError(str(path), "has no labels to evaluate against")
        e, f, v = predict(model, system, str(path), params.batch_size)
        natoms = system.get_natoms()
        err_e = (e - system["energies"]) / natoms
        err_f = (f - system["forces"]).reshape(-1)
        de.append(err_e)
        df.append(err_f)
        if "virials" in system.data and not system.nopbc:
            dv.append(((v - system["virials"]) / natoms).reshape(-1))
        per_system[str(path)] = {
            "n_frames": len(system),
            "rmse_e_per_atom": float(np.sqrt(np.mean(err_e**2))),
            "rmse_f": float(np.sqrt(np.mean(err_f**2))),
        }
    de, df = np.concatenate(de), np.concatenate(df)
    result = EvaluateResult(
        n_frames=len(de),
        rmse_e_per_atom=float(np.sqrt(np.mean(de**2))),
        rmse_f=float(np.sqrt(np.mean(df**2))),
        mae_f=float(np.mean(np.abs(df))),
        max_f_error=float(np.max(np.abs(df))),
        rmse_v_per_atom=float(np.sqrt(np.mean(np.concatenate(dv) ** 2))) if dv else None,
        per_system=per_system,
    )
    if params.output is not None:
        write_json(params.output, result.model_dump(mode="json"))
    return result
