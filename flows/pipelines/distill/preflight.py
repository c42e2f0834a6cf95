"""Everything a distillation needs, checked before any work.

A run lasts hours; a wrong file found in iteration 3 wastes them. So before the first step the
loop reads what it will use — every initial configuration (readable, elements in ``type_map``,
finite coordinates), every labelled dataset (a deepmd/npy system, not empty, no NaN), the
teacher (loads, knows every element, and evaluates one configuration to finite numbers: a model
from an incompatible DeePMD-kit version fails here, not inside LAMMPS) — and stops at the first
problem with one line naming the field or the file. The DeePMD-kit inputs the run will train
with (template + overrides) go through deepmd-kit's own argcheck here too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lamflow.steps import lammps_input
from lamflow.steps.check_data import check_or_raise
from lamflow.steps.dp_input import largest_cutoff, load_template
from lamflow.steps.errors import InputError, first_sentence
from lamflow.steps.inference import eval_frames, load_model, model_type_indices
from lamflow.steps.structures import (check_overlaps, check_periodic, check_systems, read_atoms, read_system,
                                      slab_barostat)
from lamflow.steps.train import check_input

from lamflow.flows.executors import check_executors

from ..datasets import check_labeller, probe_calculator
from .config import DistillConfig, check_files

log = logging.getLogger(__name__)

#: starting frames beyond which a run says what they cost: a trajectory or dataset given as
#: configurations makes each frame an MD task per temperature of every iteration
MANY_STARTS = 32


def preflight(cfg: DistillConfig, with_teacher: bool = True) -> None:
    """``with_teacher=False``: the teacher is made by an earlier stage (the LAM pipeline's
    finetuning); everything else is checked."""
    check_files(cfg, with_teacher)
    check_executors(cfg)
    type_map = list(cfg.type_map)
    probes, n_starts = [], 0  # each file's system: the teacher must evaluate every one's elements
    for i, path in enumerate(cfg.configurations.files):
        system = read_system(Path(path), type_map, cfg.configurations.fmt)
        n_starts += len(system)
        if len(system) == 0 or system.get_natoms() == 0:
            raise InputError(str(path), f"(configurations.files[{i}]) contains no atoms")
        if system.get_natoms() == 1:
            # LAMMPS' velocity create removes the centre of mass's motion: one atom has none left
            # ("Attempting to rescale a 0.0 temperature", a failed task and a failed speed step)
            raise InputError(str(path), f"(configurations.files[{i}]) has 1 atom: MD at a temperature needs more, "
                                        "since one atom's motion is its centre of mass's, which the thermostat "
                                        "removes; give a supercell (ASE: atoms.repeat((3, 3, 3)))")
        if not np.all(np.isfinite(system["coords"])) or not np.all(np.isfinite(system["cells"])):
            raise InputError(str(path), f"(configurations.files[{i}]) has NaN or infinite coordinates")
        check_overlaps(system.to("ase/structure"), f"{path} (configurations.files[{i}])")
        probes.append((path, system))
    _many_starts(cfg, n_starts)
    for i, it in enumerate(cfg.iterations):
        if it.lammps_template is not None:
            lammps_input.check(it.lammps_template, it.revisions, it.trj_freq, prefix=f"iterations[{i}].")
    if cfg.initial_data.systems:
        _labelled(cfg.initial_data.systems, type_map, "initial_data.systems")
    _template(cfg.student.template, "student.template")
    student = check_input(cfg.student.template, cfg.student.overrides, type_map, cfg.student.numb_steps,
                          where="student.overrides", compress="student.compress" if cfg.student.compress else None)
    _periodic(cfg, largest_cutoff(student["model"]))
    if cfg.teacher.train is not None:
        if cfg.teacher.train.data:
            _labelled(cfg.teacher.train.data, type_map, "teacher.train.data")
        if cfg.teacher.train.label is not None:
            check_labeller(cfg, cfg.teacher.train.label, type_map, "teacher.train.label.calculator")
        _template(cfg.teacher.train.template, "teacher.train.template")
        t = cfg.teacher.train
        check_input(t.template, t.overrides, type_map, t.numb_steps, where="teacher.train.overrides")
    if with_teacher and cfg.teacher.model is not None:
        check_teacher(Path(cfg.teacher.model), type_map, *probes[0], head=cfg.teacher.head)  # it knows all of type_map
    if cfg.teacher.calculator is not None:
        check_calculator_teacher(cfg, probes)


def _many_starts(cfg: DistillConfig, n_starts: int) -> None:
    """Not an error (a user may want them all), but a cost nobody should find out in iteration 0."""
    unsampled = [i for i, it in enumerate(cfg.iterations) if it.n_sample is None]
    copies = cfg.initial_data.perturbed_frames
    per_start = len(cfg.iterations[unsampled[0]].task_points()) if unsampled else 0
    costs = [f"iterations[{unsampled[0]}] runs {n_starts * per_start} MD tasks per iteration (its n_sample draws "
             "fewer)"] if unsampled else []
    costs += [f"initial_data.perturbed_frames makes {n_starts * copies} copies for the teacher to label"] if copies else []
    if n_starts > MANY_STARTS and costs:
        log.warning(f"configurations.files hold {n_starts} frames, each a starting cell: {'; '.join(costs)}")


def _periodic(cfg: DistillConfig, reach: float) -> None:
    """Every starting cell runs periodic with the student out of reach of its images, and a
    barostat is given only to what it can hold: a bulk cell, or a slab in its plane."""
    md = cfg.initial_data.teacher_md
    barostats = [f"iterations[{k}].ensemble" for k, it in enumerate(cfg.iterations) if it.ensemble == "npt"]
    barostats += ["initial_data.teacher_md.ensemble"] if md is not None and md.ensemble == "npt" else []
    for i, path in enumerate(cfg.configurations.files):
        where = f"{path} (configurations.files[{i}])"
        open_axes = check_periodic(read_atoms(Path(path), list(cfg.type_map), cfg.configurations.fmt), where, reach)
        if barostats:
            try:
                slab_barostat(open_axes, where)
            except InputError as exc:
                raise InputError(barostats[0], f"{exc.where}: {exc.problem}") from None


def _template(name: str, field: str) -> None:
    try:
        load_template(name)
    except InputError as exc:
        raise InputError(field if exc.where == "template" else exc.where, exc.problem) from None


def _labelled(systems: list[Path], type_map: list[str], field: str) -> None:
    check_systems(systems, type_map, field)
    for system in map(Path, systems):
        if not any(system.glob("set.*/energy.npy")) or not any(system.glob("set.*/force.npy")):
            raise InputError(str(system), f"({field}) has no labels: expected energy.npy and force.npy in set.*")
    check_or_raise(systems, type_map, field)  # what `lamflow dataset check` calls an error


#: the steps that run a calculator teacher (its labels, its own MD, its speed)
TEACHER_CALCULATOR_STEPS = ("label", "label_md", "speed")


def check_calculator_teacher(cfg: DistillConfig, probes: list[tuple[Path, object]]) -> None:
    """The calculator teacher builds with its kwargs and evaluates the first frame of every
    starting file (``probes``: file, dpdata system): one that lacks an element of any fails here,
    with one line, not as labels dropped one by one in iteration 0."""
    t = cfg.teacher
    probe_calculator(cfg, t.calculator, t.calculator_kwargs,
                     [(Path(path).name, probe.sub_system([0]).to("ase/structure")[0]) for path, probe in probes],
                     "teacher.calculator", TEACHER_CALCULATOR_STEPS)


def check_teacher(model_path: Path, type_map: list[str], probe_path: Path, probe, head: str | None = None) -> None:
    """The teacher loads, knows every element of ``type_map`` and evaluates ``probe``'s first frame."""
    model = load_model(model_path, head)
    known = list(model.get_type_map())
    missing = [e for e in type_map if e not in known]
    if missing:
        raise InputError(str(model_path), f"(teacher.model) does not know elements {missing} of type_map "
                                          f"{type_map}; its type_map is {known}")
    frame = probe.sub_system([0])
    types = model_type_indices(model, list(frame["atom_names"]), np.asarray(frame["atom_types"]), str(probe_path))
    cells = None if frame.nopbc else frame["cells"].reshape(1, 9)
    try:
        energy, force, _ = eval_frames(model, frame["coords"].reshape(1, -1), cells, types, [0])
    except Exception as exc:  # deepmd-kit/TorchScript raise anything when a model does not fit
        raise InputError(str(model_path), f"(teacher.model) could not evaluate {probe_path.name}: "
                                          f"{first_sentence(exc)} — a model from an incompatible DeePMD-kit "
                                          "version?") from None
    if not (np.all(np.isfinite(energy)) and np.all(np.isfinite(force))):
        raise InputError(str(model_path), f"(teacher.model) returns NaN or infinite values on {probe_path.name}")
