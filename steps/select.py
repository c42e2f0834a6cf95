"""select — classify explored frames by model deviation and pick the ones worth labelling.

With trust levels ``lo < hi`` on the largest atomic force deviation: ``< lo`` the student is
already accurate there, ``[lo, hi)`` a *candidate* worth a teacher label, ``>= hi`` a *failed*
frame. With DFT (dpgen2) failed frames are discarded: the SCF often fails there. A teacher model
labels any frame, and those are where the student is worst, so by default they are offered for
labelling too (``label_failed``); the teacher's ``max_force`` drops the truly absurd ones. The caps keep one
iteration's labelling budget bounded; ``highest`` picks the frames the student gets most wrong
first, ``random`` (seeded) samples the candidate region evenly, as dpgen2 does by default.
A trajectory that blew up (a failed explore task) counts every frame it wrote as failed, and
offers them like any failed frame: when each trajectory of a first student breaks, the frames
before the break are the only ones the loop can learn from.

A frame whose atoms overlap (closer than half their covalent radii, as no real structure comes)
is *broken*: the students' MD went where their deviation cannot be trusted. Two students trained
on the same few frames agree there as readily as anywhere (tried: 100-step students under npt
fused Cu atoms to 1.2 Å, their deviation stayed below 0.02 eV/Å, every frame "accurate", the
teacher's forces 84–115 eV/Å). A broken frame counts as failed, never as accurate, and is not
offered for labelling: its label would be a force of 10²–10⁴ eV/Å (dropped by ``max_force``, or
learnt without one), or an SCF that fails (dpgen2's distance filter drops such frames too).

``trust_lo: adaptive`` is dpgen2's adaptive-lower report: a fixed ``trust_lo`` must be set to an
error the student can reach, which nobody knows before the run (an underfit ensemble disagrees
at 0.2 eV/Å on a hot liquid, and then no frame is ever "accurate"). The adaptive level is instead
read off each exploration: the ``max_candidates`` frames with the highest error below
``trust_hi`` are the candidates, and the lowest of their errors is that iteration's ``trust_lo``.
The loop is converged when that level stops moving (``convergence.level_tolerance``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from .base import OutputPath, Params, Seed, TypeMap, ordered_trust_levels

from .artifacts import atomic_dir, write_json
from .errors import InputError, StepFailed
from .explore import ExploreTask, has_deviation_rows, reached_first_step
from .structures import deepmd_systems, overlaps


class SelectSettings(Params):
    """What a user tunes; the distill config's ``selection`` section is this model."""

    trust_lo: float | Literal["adaptive"] = Field(
        0.05, description="eV/Å: below, the student is accurate. 'adaptive' (dpgen2's adaptive-lower): "
                          "each iteration, the max_candidates frames with the highest error below trust_hi "
                          "are the candidates and the lowest of their errors is the level")
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

    @field_validator("trust_lo", mode="before")
    @classmethod
    def _level_or_adaptive(cls, value: Any) -> Any:
        """One line for either mistake, instead of the union's two ("a number ... or a literal ...")."""
        if isinstance(value, str) and value != "adaptive":
            raise ValueError(f"expected a number (eV/Å) or 'adaptive', got '{value}'")
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"must be >= 0 eV/Å or 'adaptive', got {value}")
        return value

    @property
    def adaptive(self) -> bool:
        """The lower level is read off each exploration (``trust_lo: adaptive``)."""
        return self.trust_lo == "adaptive"

    @model_validator(mode="after")
    def _levels(self) -> "SelectSettings":
        if not self.adaptive:
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
    trust_lo: float = Field(description="eV/Å: the lower level this selection used (the adaptive one's value)")
    n_accurate: int
    n_candidate: int
    n_failed: int
    n_selected: int
    n_failed_tasks: int
    n_broken: int = Field(0, description="explored frames with overlapping atoms: failed, and not labelled")
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
    lines = path.read_text().splitlines()
    header = lines[0].lstrip("#").split() if lines else []
    if not has_deviation_rows(path):
        return header, np.zeros((0, len(header)))  # a task LAMMPS stopped before its first step
    return header, np.loadtxt(path, ndmin=2)


def _dumped_frames(task: Path) -> int:
    """How many frames ``traj.dump`` holds. A LAMMPS that lost atoms writes that step's deviation
    row and dies before its dump frame: the row has no configuration to label."""
    dump = Path(task) / "traj.dump"
    if not dump.is_file():
        return 0
    with dump.open() as f:
        return sum(line.startswith("ITEM: TIMESTEP") for line in f)


def _task_failure(task: Path) -> str | None:
    """The reason explore recorded for a failed task, ``None`` for a task that ran."""
    status = Path(task) / "status.json"
    if not status.is_file():
        return None
    record = ExploreTask.model_validate_json(status.read_text())
    return (record.reason or "failed") if record.status == "failed" else None


def read_trajectory(task: Path, type_map: list[str]):
    """A task's ``traj.dump`` as a dpdata System (None where LAMMPS wrote none): read once per
    selection, for the overlap check and for the frames it picks."""
    import dpdata

    dump = Path(task) / "traj.dump"
    return dpdata.System(str(dump), fmt="lammps/dump", type_map=list(type_map)) if dump.is_file() else None


def broken_frames(traj, frames: np.ndarray) -> np.ndarray:
    """Which of a trajectory's dumped ``frames`` have overlapping atoms (:func:`structures.overlaps`)."""
    mask = np.zeros(len(frames), dtype=bool)
    if traj is None or not len(frames):
        return mask
    inside = np.flatnonzero(frames < len(traj))
    atoms = traj.sub_system(frames[inside].tolist()).to("ase/structure") if len(inside) else []
    mask[inside[[i for i, _ in overlaps(atoms)]]] = True
    return mask


def adaptive_level(devi: np.ndarray, trust_hi: float, n: int) -> float:
    """The lowest error among the ``n`` highest below ``trust_hi`` (dpgen2's adaptive lower level):
    the candidate zone ``[level, trust_hi)`` then holds ``n`` frames, the labelling budget. With
    no frame below ``trust_hi`` the zone is empty (level = ``trust_hi``)."""
    below = np.sort(devi[devi < trust_hi])
    return float(below[-min(n, len(below))]) if len(below) else float(trust_hi)


def run(params: SelectParams) -> SelectResult:
    rng = np.random.default_rng(params.seed)
    per_task = []  # (task index, explored frame indices, their errors, whether the task failed)
    n_failed_frames = n_failed_tasks = n_broken = 0
    unstarted = []  # failed before writing one deviation: LAMMPS could not start, not a blow-up
    trajs = {}  # task index → its dumped trajectory
    for ti, task in enumerate(params.tasks):
        failure = _task_failure(task)
        if failure is not None and not reached_first_step(Path(task)):
            unstarted.append(f"{task}: {failure}")
            n_failed_tasks += 1
            continue
        frames = explored_frames(task)
        devi = (max_force_deviation(task) * params.deviation_scale)[frames]
        trajs[ti] = read_trajectory(Path(task), params.type_map)
        broken = broken_frames(trajs[ti], frames)
        n_broken += int(broken.sum())
        if failure is not None or not np.all(np.isfinite(devi)):
            # A trajectory that blew up (lost atoms, NaN, a crash) counts as failed frame by frame;
            # the frames it wrote before are real configurations, and the last ones are where the
            # student went wrong: with label_failed they stay offered, as failed frames are.
            n_failed_tasks += 1
            n_failed_frames += len(devi)
            if params.label_failed:
                kept = np.isfinite(devi) & (frames < _dumped_frames(task)) & ~broken
                per_task.append((ti, frames[kept], devi[kept], True))
            continue
        n_failed_frames += int(broken.sum())  # failed, whatever the students' deviation says
        per_task.append((ti, frames[~broken], devi[~broken], False))
    if unstarted and len(unstarted) == len(params.tasks):
        # nothing was explored: selecting from it would read as "0 frames, converged or stuck"
        raise StepFailed(f"no exploration task ran ({len(unstarted)} failed); first: {unstarted[0]}")
    devi = np.concatenate([d for _, _, d, failed in per_task if not failed] or [np.zeros(0)])
    offered = np.concatenate([d for _, _, d, _ in per_task] or [np.zeros(0)])
    lo = adaptive_level(offered, params.trust_hi, params.max_candidates) if params.adaptive else params.trust_lo
    pool, labelable = [], []  # (deviation, task index, frame index)
    for ti, frames, task_devi, _ in per_task:
        for fi, d in zip(frames.tolist(), task_devi):
            if d < params.trust_hi or params.label_failed:  # frames the teacher will label
                labelable.append((float(d), ti, fi))
                if lo <= d:
                    pool.append((float(d), ti, fi))
    n_acc = int(np.sum(devi < lo))
    n_cand = int(np.sum((devi >= lo) & (devi < params.trust_hi)))
    n_fail = int(np.sum(devi >= params.trust_hi)) + n_failed_frames
    if len(pool) > params.max_candidates:
        if params.strategy == "highest":
            pool = sorted(pool, key=lambda x: -x[0])[: params.max_candidates]
        else:
            keep = rng.choice(len(pool), size=params.max_candidates, replace=False)
            pool = [pool[i] for i in sorted(keep)]
    n_val = min(params.validation_frames, len(labelable))
    validation = [labelable[i] for i in sorted(rng.choice(len(labelable), size=n_val, replace=False))] if n_val else []
    multi = _frames(params, trajs, pool)
    total = len(devi) + n_failed_frames
    with atomic_dir(params.output) as work:
        np.save(work / "deviations.npy", devi)
        if multi.get_nframes():
            multi.to_deepmd_npy(str(work / "candidates"))
        if validation:
            _frames(params, trajs, validation).to_deepmd_npy(str(work / "validation"))
        summary = dict(
            n_frames=total, n_accurate=n_acc, n_candidate=n_cand, n_failed=n_fail,
            n_selected=multi.get_nframes(), n_failed_tasks=n_failed_tasks, n_broken=n_broken,
            accurate_ratio=n_acc / total if total else 0.0,
            candidate_ratio=n_cand / total if total else 0.0,
            failed_ratio=n_fail / total if total else 0.0, trust_lo=lo,
        )
        write_json(work / "select.json", summary)
    return SelectResult(candidates=deepmd_systems(params.output / "candidates"),
                        validation=deepmd_systems(params.output / "validation"),
                        deviations=params.output / "deviations.npy", **summary)


def _frames(params: SelectParams, trajs: dict, picks: list[tuple[float, int, int]]):
    """The picked (task, frame) pairs from the tasks' trajectories (:func:`read_trajectory`)."""
    import dpdata

    multi = dpdata.MultiSystems(type_map=list(params.type_map))
    by_task: dict[int, list[int]] = {}
    for _, ti, fi in picks:
        by_task.setdefault(ti, []).append(fi)
    for ti, frames in sorted(by_task.items()):
        traj = trajs[ti]
        frames = [f for f in frames if f < len(traj)]
        if frames:
            multi.append(traj.sub_system(frames))
    return multi
