"""evaluate — energy, force and virial errors of a model against a labelled set.

Used for the student against the teacher's labels (the distillation's convergence measure) and
for any model against reference data (per-branch and downstream errors in the LAM pipeline).
Energies and virials are per atom, as ``dp test`` reports them, so systems of different sizes
compare.

Beside the raw errors, the scores OpenLAM's LAMBench ranks models by (``run_ase_dptest`` and
``metrics/utils.py`` there), so that model versions trained on different data compare fairly:

* the energy error after a per-element least-squares shift fitted on the set itself (a model
  whose reference energies differ from the data's by a constant per element is not wrong);
* the errors of the *dummy model* on the same set: energies from the composition alone (a
  least-squares fit of the labels), zero forces. ``normalized_*`` is error / dummy error,
  capped at 1 (1: no better than knowing the formula).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .base import Params, TypeMap

from .artifacts import write_json
from .errors import InputError
from .inference import load_model, predict
from .structures import read_labelled


class EvaluateParams(Params):
    model: Path = Field(description="the DeePMD-kit model to score")
    systems: list[Path] = Field(min_length=1, description="labelled deepmd/npy systems to score it on")
    type_map: TypeMap
    head: str | None = Field(None, description="the branch of a multi-task model (checkpoint) to score")
    output: Path | None = Field(None, description="JSON file for the metrics")
    batch_size: int = Field(32, ge=1, description="frames per evaluation at most (fewer when memory is short)")


class EvaluateResult(BaseModel):
    n_frames: int
    rmse_e_per_atom: float
    rmse_f: float
    mae_f: float
    max_f_error: float
    rmse_v_per_atom: float | None = None
    rmse_e_per_atom_shifted: float = Field(description="energy RMSE per atom after the per-element least-squares "
                                                       "shift fitted on this set (LAMBench's energy metric)")
    dummy_rmse_e_per_atom: float = Field(description="the same for energies predicted from the composition alone")
    dummy_rmse_f: float = Field(description="force RMSE of a model predicting zero forces")
    per_system: dict[str, dict[str, float]] = Field(default_factory=dict)


def run(params: EvaluateParams) -> EvaluateResult:
    model = load_model(params.model, params.head)
    de, df, dv, per_system = [], [], [], {}
    counts, e_err, e_label, f_label = [], [], [], []
    # a labelled extxyz or a mixed-type system holds several compositions: one system each
    systems = [(str(path), system) for path in params.systems for system in read_labelled(Path(path), params.type_map)]
    per_path = Counter(path for path, _ in systems)
    for path, system in systems:
        if "energies" not in system.data:
            raise InputError(path, "has no labels to evaluate against")
        key = path if per_path[path] == 1 else f"{path} ({system.formula})"
        e, f, v = predict(model, system, path, params.batch_size)
        natoms = system.get_natoms()
        err_e = (e - system["energies"]) / natoms
        err_f = (f - system["forces"]).reshape(-1)
        de.append(err_e)
        df.append(err_f)
        row = [np.count_nonzero(np.asarray(system["atom_names"])[system["atom_types"]] == el) for el in params.type_map]
        counts.append(np.tile(row, (len(system), 1)))
        e_err.append(e - system["energies"])
        e_label.append(np.asarray(system["energies"], dtype=float))
        f_label.append(np.asarray(system["forces"]).reshape(-1))
        if "virials" in system.data and not system.nopbc:
            dv.append(((v - system["virials"]) / natoms).reshape(-1))
        per_system[key] = {
            "n_frames": len(system),
            "rmse_e_per_atom": float(np.sqrt(np.mean(err_e**2))),
            "rmse_f": float(np.sqrt(np.mean(err_f**2))),
        }
    de, df = np.concatenate(de), np.concatenate(df)
    counts = np.concatenate(counts).astype(float)
    result = EvaluateResult(
        n_frames=len(de),
        rmse_e_per_atom=float(np.sqrt(np.mean(de**2))),
        rmse_f=float(np.sqrt(np.mean(df**2))),
        mae_f=float(np.mean(np.abs(df))),
        max_f_error=float(np.max(np.abs(df))),
        rmse_v_per_atom=float(np.sqrt(np.mean(np.concatenate(dv) ** 2))) if dv else None,
        rmse_e_per_atom_shifted=shifted_rmse_per_atom(counts, np.concatenate(e_err)),
        dummy_rmse_e_per_atom=shifted_rmse_per_atom(counts, -np.concatenate(e_label)),
        dummy_rmse_f=float(np.sqrt(np.mean(np.concatenate(f_label) ** 2))),
        per_system=per_system,
    )
    if params.output is not None:
        write_json(params.output, result.model_dump(mode="json"))
    return result


def shifted_rmse_per_atom(counts: np.ndarray, error: np.ndarray) -> float:
    """RMSE per atom of total-energy errors after the least-squares per-element shift
    (``counts``: atoms of each element per frame), as LAMBench fits it: on the total energy,
    ``rcond=1e-10``, elements absent from the set contributing nothing. Frames whose energy
    could not be predicted (NaN) are left out."""
    ok = np.isfinite(error)
    counts, error = counts[ok], error[ok]
    shift, *_ = np.linalg.lstsq(counts, error, rcond=1e-10)
    residual = (error - counts @ shift) / counts.sum(axis=1)
    return float(np.sqrt(np.mean(residual**2)))


def normalized(error: float, dummy: float) -> float:
    """LAMBench's normalised error: error / the dummy model's, capped at 1."""
    return 1.0 if dummy <= 0 else min(error / dummy, 1.0)
