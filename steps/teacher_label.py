"""teacher_label — label selected frames with the teacher model instead of DFT.

In distillation the fine-tuned LAM *is* the reference: it is orders of magnitude cheaper than
DFT, so every candidate can be labelled, in batches, in one process that loads the teacher once.
Frames where the teacher returns NaN/inf are dropped (and counted), never written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .base import Chunk, NChunks, OutputPath, Params, TypeMap

from .artifacts import atomic_dir
from .errors import NON_FINITE, InputError, above_max_force, count_drop
from .inference import load_model, predict
from .structures import deepmd_systems, read_system

log = logging.getLogger(__name__)


class TeacherLabelParams(Params):
    output: OutputPath
    model: Path = Field(description="the teacher: a DeePMD-kit model (.pth, .pt, .pt2)")
    head: str | None = Field(None, description="branch of a multi-task checkpoint")
    systems: list[Path] = Field(description="deepmd/npy folders (or any structure file)")
    type_map: TypeMap
    chunk: Chunk = 0
    n_chunks: NChunks = 1
    batch_size: int = Field(32, ge=1, description="frames per evaluation at most (fewer when memory is short)")
    max_force: float | None = Field(None, gt=0, description="drop frames with a larger teacher force (eV/Å)")


class TeacherLabelResult(BaseModel):
    systems: list[Path]
    n_frames: int
    n_dropped: int
    drop_reasons: dict[str, int] = {}


def run(params: TeacherLabelParams) -> TeacherLabelResult:
    if params.chunk >= params.n_chunks:
        raise InputError("chunk", f"must be < n_chunks ({params.n_chunks}), got {params.chunk}")
    model = load_model(params.model, params.head)
    with atomic_dir(params.output) as out:  # in progress: RUN/.../chunk-000.partial
        multi, reasons = _label(params, model)
        if multi.get_nframes():
            multi.to_deepmd_npy(str(out))
    return TeacherLabelResult(systems=deepmd_systems(params.output), n_frames=multi.get_nframes(),
                              n_dropped=sum(reasons.values()), drop_reasons=reasons)


def _label(params: TeacherLabelParams, model):
    """This chunk's frames of every system with the teacher's labels; the frames dropped (NaN,
    beyond ``max_force``), counted by why."""
    import dpdata

    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    reasons: dict[str, int] = {}
    for path in params.systems:
        system = read_system(Path(path), params.type_map)
        idx = np.array_split(np.arange(len(system)), params.n_chunks)[params.chunk]
        if len(idx) == 0:
            continue
        system = dpdata.System(data={k: system.data[k] for k in
                                     ("atom_names", "atom_numbs", "atom_types", "orig", "cells",
                                      "coords", "nopbc") if k in system.data}).sub_system(idx)
        e, f, v = predict(model, system, str(path), params.batch_size)
        good = np.isfinite(e) & np.all(np.isfinite(f), axis=(1, 2)) & np.all(np.isfinite(v), axis=(1, 2))
        count_drop(reasons, NON_FINITE, int((~good).sum()))
        if params.max_force is not None:
            within = np.abs(np.nan_to_num(f, nan=np.inf)).max(axis=(1, 2)) <= params.max_force
            count_drop(reasons, above_max_force(params.max_force), int((good & ~within).sum()))
            good &= within
        if (~good).any():
            log.warning("teacher_label: %s: %d frames dropped (NaN or too large)", path, int((~good).sum()))
        if not good.any():
            continue
        data = dict(system.data)
        data.update(energies=e, forces=f)
        if not system.nopbc:
            data["virials"] = v
        multi.append(dpdata.LabeledSystem(data=data).sub_system(np.flatnonzero(good)))
    return multi, reasons
