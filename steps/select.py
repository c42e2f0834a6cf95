"""select — classify explored frames by model deviation and pick the ones worth labelling.

With trust levels ``lo < hi`` on the largest atomic force deviation: ``< lo`` the student is
already accurate there, ``[lo, hi)`` a *candidate* worth a teacher label, ``>= hi`` a *failed*
frame. With DFT (dpgen2) failed frames are discarded: the SCF often fails there. A teacher model
labels any frame, and those are where the student is worst, so by default they are offered for
labelling too (``label_failed``); the teacher's ``max_force`` drops the truly absurd ones. The caps keep one
iteration's labelling budget bounded; ``highest`` picks the frames the student gets most wrong
first, ``random`` (seeded) samples the candidate region evenly, as dpgen2 does by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from .base import OutputPath, Params, Seed, TypeMap, ordered_trust_levels

from .artifacts import atomic_dir, write_json
from .errors import InputError, StepFailed
from .explore import ExploreTask
from .structures import deepmd_systems


class SelectSettings(Params):
    """What a user tunes; the distill config's ``selection`` section is this model."""

    trust_lo: float = Field(0.05, ge=0, description="eV/Å: below, the student is accurate")
    trust_hi: float = Field(0.35, gt=0, description="eV/Å: at or above, the frame is failed")
    max_candidates: int = Field(100, ge=1, description="teacher labels per iteration, at most")
    strategy: Literal["random", "highest"] = Field("random", description="which candidates to keep when there are "
                                                                         "more than max_candidates: a random draw, "
                                                                         "or the highest errors")
    label_failed: bool = Field(
        True, description="also offer frames at or above trust_hi for labelling. A teacher model labels "
                          "any frame, and those are where the student is worst: discarding them (dpgen2's "
                          "habit with DFT, which fails there) can stall the loop")
    validation_frames: int = Field(
        20, ge=0, description="random explored frames (below trust_hi unless label_failed), labelled only to "
                              "measure the student's error on unseen frames")

    @model_validator(mode="after")
    def _levels(self) -> "SelectSettings":
        ordered_trust_levels(self.trust_lo, self.trust_hi)
        return self


class SelectParams(SelectSettings):
    output: OutputPath
    tasks: list[Path] = Field(description="explore task folders (task.NNN)")
    type_map: TypeMap
    deviation_scale: float = Field(
        1.0, gt=0, description="multiplies max_devi_f; 2.0 turns a 2-model deviation into the force error"
    )
    seed: Seed = 1


class SelectResult(BaseModel):
    candidates: list[Path]
    validation: list[Path] = []
    n_frames: int
    n_accurate: int
    n_candidate: int
    n_failed: int
    n_selected: int
    n_failed_tasks: int
    accurate_ratio: float
    candidate_ratio: float
    failed_ratio: float
    deviations: Path


def max_force_deviation(task: Path) -> np.ndarray:
    """The ``max_devi_f`` column of a task's ``model_devi.out`` (one row per dumped frame)."""
    header, data = _model_devi(task)
    return data[:, header.index("max_devi_f")] if data.size else np.zeros(0)


def explored_frames(task: Path) -> np.ndarray:
    """Indices of the dumped frames the MD produced: all but step 0, the starting cell itself.

    The starting cell is given, not explored: an unmoved crystal has symmetric, near-zero forces
    that any student gets right, and counting it would let a run that explored nothing look
    accurate (and spend labels on the same frame every iteration)."""
    header, data = _model_devi(task)
    if not data.size:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(data[:, header.index("step")] > 0)


def _model_devi(task: Path) -> tuple[list[str], np.ndarray]:
    path = Path(task) / "model_devi.out"
    if not path.is_file():
        raise InputError(str(path), "not found: explore with at least two models to get deviations")
    header = path.read_text().splitlines()[0].lstrip("#").split()
    return header, np.loadtxt(path, ndmin=2)


def _task_failure(task: Path) -> str | None:
    """The reason explore recorded for a failed task, ``None`` for a task that ran."""
    status = Path(task) / "status.json"
    if not status.is_file():
        return None
    record = ExploreTask.model_validate_json(status.read_text())
    return (record.reason or "failed") if record.status == "failed" else None


def run(params: SelectParams) -> SelectResult:
    rng = np.random.default_rng(params.seed)
    all_devi, pool, labelable = [], [], []  # (deviation, task index, frame index)
    n_failed_frames = n_failed_tasks = 0
    unstarted = []  # failed before writing one deviation: LAMMPS could not start, not a blow-up
    for ti, task in enumerate(params.tasks):
        failure = _task_failure(task)
        if failure is not None and not (Path(task) / "model_devi.out").is_file():
            unstarted.append(f"{task}: {failure}")
            n_failed_tasks += 1
            continue
        frames = explored_frames(task)
        devi = (max_force_deviation(task) * params.deviation_scale)[frames]
        if failure is not None or not np.all(np.isfinite(devi)):
            n_failed_tasks += 1
            n_failed_frames += len(devi)
            continue
        all_devi.append(devi)
        for fi, d in zip(frames.tolist(), devi):
            if d < params.trust_hi or params.label_failed:  # frames the teacher will label
                labelable.append((float(d), ti, fi))
            if params.trust_lo <= d and (d < params.trust_hi or params.label_failed):
                pool.append((float(d), ti, fi))
    if unstarted and len(unstarted) == len(params.tasks):
        # nothing was explored: selecting from it would read as "0 frames, converged or stuck"
        raise StepFailed(f"no exploration task ran ({len(unstarted)} failed); first: {unstarted[0]}")
    devi = np.concatenate(all_devi) if all_devi else np.zeros(0)
    n_acc = int(np.sum(devi < params.trust_lo))
    n_cand = int(np.sum((devi >= params.trust_lo) & (devi < params.trust_hi)))
    n_fail = int(np.sum(devi >= params.trust_hi)) + n_failed_frames
    if len(pool) > params.max_candidates:
        if params.strategy == "highest":
            pool = sorted(pool, key=lambda x: -x[0])[: params.max_candidates]
        else:
            keep = rng.choice(len(pool), size=params.max_candidates, replace=False)
            pool = [pool[i] for i in sorted(keep)]
    n_val = min(params.validation_frames, len(labelable))
    validation = [labelable[i] for i in sorted(rng.choice(len(labelable), size=n_val, replace=False))] if n_val else []
    multi = _frames(params, pool)
    total = len(devi) + n_failed_frames
    with atomic_dir(params.output) as work:
        np.save(work / "deviations.npy", devi)
        if multi.get_nframes():
            multi.to_deepmd_npy(str(work / "candidates"))
        if validation:
            _frames(params, validation).to_deepmd_npy(str(work / "validation"))
        summary = dict(
            n_frames=total, n_accurate=n_acc, n_candidate=n_cand, n_failed=n_fail,
            n_selected=multi.get_nframes(), n_failed_tasks=n_failed_tasks,
            accurate_ratio=n_acc / total if total else 0.0,
            candidate_ratio=n_cand / total if total else 0.0,
            failed_ratio=n_fail / total if total else 0.0,
        )
        write_json(work / "select.json", summary)
    return SelectResult(candidates=deepmd_systems(params.output / "candidates"),
                        validation=deepmd_systems(params.output / "validation"),
                        deviations=params.output / "deviations.npy", **summary)


def _frames(params: SelectParams, picks: list[tuple[float, int, int]]):
    """The picked (task, frame) pairs read from the tasks' LAMMPS dumps."""
    import dpdata

    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    by_task: dict[int, list[int]] = {}
    for _, ti, fi in picks:
        by_task.setdefault(ti, []).append(fi)
    for ti, frames in sorted(by_task.items()):
        traj = dpdata.System(str(Path(params.tasks[ti]) / "traj.dump"), fmt="lammps/dump",
                             type_map=list(params.type_map))
        frames = [f for f in frames if f < len(traj)]
        if frames:
            multi.append(traj.sub_system(frames))
    return multi
