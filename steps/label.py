"""label — reference energies, forces and virials for structures, with any ASE calculator.

The output is DeePMD-kit's ``deepmd/npy`` (written by dpdata), one folder per composition, so it
feeds ``dp train`` directly. ``chunk``/``n_chunks`` select a contiguous slice of the frames so a
flow can fan the labelling out over many workers; the chunks' outputs are simply listed together
as training systems.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, field_validator

from .base import CalculatorKwargs, Chunk, NChunks, OutputPath, Params, StructureFormat, TypeMap, check_type_map

from .artifacts import atomic_dir
from .calculators import fresh_after_failure, known_calculator, make_calculator
from .errors import NON_FINITE, InputError, StepFailed, above_max_force, count_drop, first_sentence, out_of_memory
from .runtime import interrupt_if_stopping
from .structures import deepmd_systems, read_atoms

log = logging.getLogger(__name__)


class LabelSettings(Params):
    """Which reference calculator labels; the config's ``label`` sections extend this model."""

    calculator: str = Field("emt", description="emt, xtb, deepmd, sevenn, chgnet or module:Class (an ASE calculator)")
    calculator_kwargs: CalculatorKwargs
    max_force: float | None = Field(
        None, gt=0, description="drop frames whose largest force (eV/Å) exceeds this"
    )

    _known = field_validator("calculator")(classmethod(lambda cls, v: known_calculator(v)))


class LabelParams(LabelSettings):
    """Label the frames of ``structures`` with ``calculator``; write deepmd/npy to ``output``."""

    structures: list[Path] = Field(min_length=1, description="structure files to label (any ASE or dpdata format)")
    type_map: TypeMap
    output: OutputPath
    fmt: StructureFormat = None
    chunk: Chunk = 0
    n_chunks: NChunks = 1

    _unique = field_validator("type_map")(classmethod(lambda cls, v: check_type_map(v)))


class LabelResult(BaseModel):
    systems: list[Path]
    n_frames: int
    n_dropped: int
    drop_reasons: dict[str, int] = {}  # why: frames (the calculator's own words for a failure)


def _labelled_frame(atoms, calc):
    """Evaluate one frame; return a copy carrying a single-point calculator (or None)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    results = {"energy": energy, "forces": forces}
    if atoms.pbc.all() and atoms.get_volume() > 1e-6:
        try:
            results["stress"] = atoms.get_stress()
        except Exception:  # calculators without stress still give usable E/F labels
            pass
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


def run(params: LabelParams) -> LabelResult:
    import dpdata

    if params.chunk >= params.n_chunks:
        raise InputError("chunk", f"must be < n_chunks ({params.n_chunks}), got {params.chunk}")
    calc = make_calculator(params.calculator, params.calculator_kwargs)  # cheap checks first
    frames = [a for path in params.structures for a in read_atoms(path, params.type_map, params.fmt)]
    mine = np.array_split(np.arange(len(frames)), params.n_chunks)[params.chunk]
    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    reasons: dict[str, int] = {}
    for index in mine:
        interrupt_if_stopping("label")
        try:
            frame = _labelled_frame(frames[index], calc)
        except InputError:
            raise
        except Exception as exc:  # SCF not converged and the like: drop the frame, keep going
            if out_of_memory(exc):
                raise StepFailed(f"label: frame {index}: the calculator ran out of memory ({first_sentence(exc)}); "
                                 "the step is retried, no frame dropped") from exc
            log.warning("label: frame %d dropped: %s", index, exc)
            count_drop(reasons, first_sentence(exc) or type(exc).__name__)
            calc = fresh_after_failure(params.calculator, params.calculator_kwargs)
            continue
        forces = frame.calc.results["forces"]
        energy = frame.calc.results["energy"]
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            count_drop(reasons, NON_FINITE)
            continue
        if params.max_force is not None and np.abs(forces).max() > params.max_force:
            count_drop(reasons, above_max_force(params.max_force))
            continue
        multi.append(dpdata.LabeledSystem(frame, fmt="ase/structure", type_map=params.type_map))
    with atomic_dir(params.output) as out:
        if multi.get_nframes():
            multi.to_deepmd_npy(str(out))
    systems = deepmd_systems(params.output)
    return LabelResult(systems=systems, n_frames=multi.get_nframes(), n_dropped=sum(reasons.values()),
                       drop_reasons=reasons)
