"""change_bias — refit a model's per-element energy shift on the downstream data (``dp change-bias``).

A finetuned (or zero-shot) model inherits the energy reference of its upstream DFT settings;
energies from another code, functional or pseudopotential differ by a per-element constant.
``dp --pt change-bias`` fits that constant on the downstream frames without touching the
network, so energies match the downstream reference at no training cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from .artifacts import atomic_dir
from .base import OutputPath, Params, TypeMap
from .errors import InputError
from .runtime import dp_command, library_env, run_logged
from .structures import check_systems


class ChangeBiasParams(Params):
    model: Path = Field(description="frozen .pth or .pt checkpoint")
    systems: list[Path] = Field(min_length=1, description="labelled deepmd/npy systems")
    type_map: TypeMap
    output: OutputPath
    mode: Literal["change", "set"] = Field("change", description="dp change-bias mode: change (refit the shift) or "
                                                                 "set")
    model_branch: str | None = Field(None, description="the branch of a multi-task model")


class ChangeBiasResult(BaseModel):
    model: Path
    seconds: float


def run(params: ChangeBiasParams) -> ChangeBiasResult:
    src = Path(params.model)
    if not src.is_file():
        raise InputError(str(src), "model file not found")
    systems = check_systems(params.systems, params.type_map, "systems")
    name = "model" + (src.suffix if src.suffix in (".pth", ".pt") else ".pth")
    t0 = time.perf_counter()
    branch = ["--model-branch", params.model_branch] if params.model_branch else []
    with atomic_dir(params.output) as work:
        (work / "systems.txt").write_text("\n".join(str(Path(s).resolve()) for s in systems) + "\n")
        run_logged([*dp_command(), "--pt", "change-bias", str(src.resolve()), "-f", "systems.txt",
                    "-m", params.mode, "-o", name, *branch], work, "change-bias.log", library_env())
    return ChangeBiasResult(model=Path(params.output) / name, seconds=time.perf_counter() - t0)
