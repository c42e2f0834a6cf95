"""Base of every step's parameter model: unknown keys are errors, not silently ignored.

A misspelt ``trust_hi`` that were silently dropped would run a day-long distillation with the
default; so every parameter model forbids extra keys and the CLI names the offending one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .structures import check_format


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Parameters many steps share, declared (and documented) once, like deepmd-kit's argcheck pieces.
TypeMap = Annotated[list[str], Field(min_length=1, description="element symbols in the order of the model's atom "
                                                              "types (DeePMD-kit's type_map)")]
OutputPath = Annotated[Path, Field(description="what the step writes: a folder (or a .json file for one result); "
                                               "its record is written beside it as NAME.result.json")]
Seed = Annotated[int, Field(description="random seed: the same seed and inputs give the same result")]
CalculatorKwargs = Annotated[dict[str, Any], Field(
    default_factory=dict, description="keyword arguments of the calculator (e.g. {device: cuda} for sevenn, "
                                      "{model: PATH} for deepmd)")]
#: a dpdata format name (``vasp/outcar``, ``cp2k/output``, ``lammps/lmp`` …), checked when the config loads
DpdataFormat = Annotated[str | None, AfterValidator(check_format)]
StructureFormat = Annotated[DpdataFormat, Field(description="dpdata format of the structures (default: from the "
                                                            "file name)")]
Chunk = Annotated[int, Field(ge=0, description="this task's share of the frames: part `chunk` of `n_chunks` "
                                               "(how labelling fans out)")]
NChunks = Annotated[int, Field(ge=1, description="the number of parts the frames are split into")]


def check_type_map(type_map: list[str]) -> list[str]:
    """Validator shared by every config with a ``type_map``: element symbols (LAMMPS needs their
    masses, the calculators and dpdata their elements: a name that is none failed only when the
    first exploration wrote its LAMMPS input, after the teacher and the first students), no
    element twice."""
    from ase.data import chemical_symbols

    for name in type_map:
        if name not in chemical_symbols[1:]:
            near = name[:1].upper() + name[1:].lower()
            hint = f" (did you mean {near}?)" if near in chemical_symbols[1:] else ""
            raise ValueError(f"'{name}' is not a chemical element symbol{hint}: lamflow's MD needs each type's "
                             "mass and its calculators each type's element")
    if len(set(type_map)) != len(type_map):
        raise ValueError(f"duplicate elements in {type_map}")
    return type_map


def ordered_trust_levels(lo: float, hi: float) -> None:
    """Validator shared by the select step and the distill config."""
    if lo >= hi:
        raise ValueError(f"trust_lo ({lo}) must be below trust_hi ({hi})")


def changed_from_default(model: BaseModel, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a model holds at other than their defaults. Compared with the default
    rather than with the keys given, because the pipelines rebuild these models from full dumps."""
    fields = type(model).model_fields
    return [n for n in names if getattr(model, n) != fields[n].get_default(call_default_factory=True)]


def barostat_unused(model: BaseModel, names: tuple[str, ...]) -> None:
    """Validator shared by every MD with an ``ensemble``: a pressure (or barostat time) given to an
    MD that has no barostat is ignored by LAMMPS, ASE and dpgen2 alike, so the user would get a
    fixed-volume run while believing it was pressurised."""
    ensemble = getattr(model, "ensemble")
    if ensemble == "npt":
        return
    changed = changed_from_default(model, names)
    if changed:
        what = " and ".join(changed)
        raise ValueError(f"{what} given, but ensemble {ensemble!r} has no barostat (the volume stays fixed): "
                         f"set ensemble: npt, or drop {what}")


def positive_kelvin(temps: list[float] | None) -> list[float] | None:
    """Validator shared by every MD's ``temps`` (exploration, teacher MD)."""
    if temps is not None and any(t <= 0 for t in temps):
        raise ValueError(f"temperatures must be positive kelvin, got {temps}")
    return temps


def frames_after_start(trj_freq: int, nsteps: int, what: str) -> None:
    """An MD that keeps no frame after its start produces nothing: refuse it when it is configured."""
    if trj_freq > nsteps:
        raise ValueError(f"trj_freq ({trj_freq}) must not exceed nsteps ({nsteps}): no frame would be {what}")
