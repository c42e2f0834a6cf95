"""import_data — existing DFT outputs (VASP OUTCAR, CP2K, ABACUS, QE, labelled extxyz) as deepmd/npy.

Groups arrive with years of DFT already computed; relabelling it would waste the most expensive
part of the pipeline. dpdata reads the formats, the output is what ``train`` consumes.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from .artifacts import atomic_dir
from .base import DpdataFormat, OutputPath, Params, TypeMap, check_type_map
from .structures import check_labelled, deepmd_systems, read_labelled

class ImportSource(Params):
    """DFT outputs that dpdata reads, imported as labelled data as they are (no relabelling)."""

    files: list[Path] = Field(min_length=1, description="VASP OUTCAR or vasprun.xml, CP2K/ABACUS/QE outputs, "
                                                        "labelled extxyz")
    fmt: DpdataFormat = Field(None, description="dpdata format, e.g. vasp/outcar, cp2k/output (default: guessed "
                                                "per file: OUTCAR, vasprun.xml, an ABACUS folder, extxyz)")


class ImportParams(ImportSource):
    type_map: TypeMap
    output: OutputPath

    _unique = field_validator("type_map")(classmethod(lambda cls, v: check_type_map(v)))


class ImportResult(BaseModel):
    systems: list[Path]
    n_frames: int


def run(params: ImportParams) -> ImportResult:
    import dpdata

    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    for path in map(Path, params.files):
        for system in read_labelled(path, params.type_map, params.fmt):
            multi.append(check_labelled(system, path))
    with atomic_dir(params.output) as work:
        multi.to_deepmd_npy(str(work))
    systems = deepmd_systems(params.output)
    return ImportResult(systems=systems, n_frames=multi.get_nframes())
