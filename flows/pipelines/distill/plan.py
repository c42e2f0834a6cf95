"""The distillation iteration, defined once: which steps run, with which parameters, where.

Pure functions from (config, run directory, previous results) to :class:`StepCall` lists. The
loop in :mod:`lamflow.flows.pipelines.distill.loop` and every engine adapter use them, so Prefect and dflow run
the very same iteration and lay out the very same run directory::

    RUN/init/{teacher-label-data/, teacher/, perturb/, label/chunk-000/, speed-teacher/, train-00/}
    RUN/iter-000/{explore/task-000/, select/, label/chunk-000/, validation/, evaluate.json,
                  speed/, train-00/}
    RUN/final/{train/, evaluate.json}      (student.numb_steps_final)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lamflow.steps.evaluate import EvaluateParams
from lamflow.steps.label import LabelParams
from lamflow.steps.label_md import LabelMDParams
from lamflow.steps.explore import ExploreParams, ExploreSettings
from lamflow.steps.perturb import PerturbParams, PerturbSettings
from lamflow.steps.select import SelectParams
from lamflow.steps.speed import SpeedParams
from lamflow.steps.structures import count_frames, read_system
from lamflow.steps.teacher_label import TeacherLabelParams
from lamflow.steps.train import FreezeParams, TrainParams

from lamflow.flows.core.records import StepCall

from ..datasets import call as _call
from ..datasets import label_calls, perturb_calls
from .config import DistillConfig

#: seed offsets of the random streams the loop draws besides the MD (one per stream, so that
#: changing one setting does not reshuffle the others)
REFERENCE_SEED = 17
TEACHER_MD_SEED = 29
#: the stream that draws each iteration's starting frames (``n_sample``)
SAMPLE_SEED = 31


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def init(self) -> Path:
        return self.root / "init"

    def iteration(self, k: int) -> Path:
        return self.root / f"iter-{k:03d}"

    @property
    def final(self) -> Path:
        return self.root / "final"

    def delivered(self, student: Path) -> Path:
        """Where a finished run leaves its student (a copy): one path to hand to LAMMPS or ASE,
        whichever iteration delivered it."""
        return self.root / f"student{student.suffix}"


# -- preparation -------------------------------------------------------------------------------

def reference_structures(cfg: DistillConfig, lay: Layout) -> list[StepCall]:
    """Perturbed copies of the structures the teacher's reference labels are computed on."""
    spec = cfg.teacher.train.label if cfg.teacher.train else None
    if spec is None:
        return []
    return perturb_calls(cfg, spec, cfg.type_map, lay.init / "reference-structures", "init/reference-structures",
                         cfg.seed + REFERENCE_SEED)


def reference_labels(cfg: DistillConfig, lay: Layout, perturbed: list[Path]) -> list[StepCall]:
    spec = cfg.teacher.train.label if cfg.teacher.train else None
    if spec is None:
        return []
    return label_calls(cfg, spec, cfg.type_map, perturbed, lay.init / "reference", "init/reference")


@dataclass(frozen=True)
class TeacherRef:
    """The teacher as the iteration uses it: a DeePMD-kit model (``lammps`` runs in LAMMPS, ``infer``
    is what ``DeepPot`` loads) or an ASE calculator, which labels through the ``label`` step.

    ``lammps`` and ``infer`` differ for a DPA-4 checkpoint: LAMMPS needs the frozen ``.pt2``, which
    deepmd-kit 3.2's ``DeepPot`` cannot read back, while it reads the ``.pt`` checkpoint itself.
    """

    lammps: Path | None = None
    infer: Path | None = None
    head: str | None = None
    calculator: str | None = None

    @property
    def name(self) -> str:
        return self.calculator or str(self.lammps)


def teacher_ref(cfg: DistillConfig, made: Path | None) -> TeacherRef:
    """The teacher of this run, given the model :func:`teacher_model` made (None: nothing to make)."""
    t = cfg.teacher
    if t.calculator is not None:
        return TeacherRef(calculator=t.calculator)
    if made is None:
        return TeacherRef(lammps=Path(t.model), infer=Path(t.model))
    if t.model is not None and made.suffix == ".pt2":
        return TeacherRef(lammps=made, infer=Path(t.model), head=t.head)
    return TeacherRef(lammps=made, infer=made)


def teacher_model(cfg: DistillConfig, lay: Layout, reference: list[Path]) -> StepCall | None:
    """Train the teacher, or freeze a checkpoint so LAMMPS can run it; None for a frozen file or a
    calculator."""
    if cfg.teacher.calculator is not None:
        return None
    if cfg.teacher.train is not None:
        t = cfg.teacher.train
        return _call(cfg, "train", TrainParams(compress=False, 
            output=lay.init / "teacher", type_map=cfg.type_map, template=t.template, overrides=t.overrides,
            train=[*t.data, *reference], numb_steps=t.numb_steps, seed=cfg.seed), "init/teacher")
    model = Path(cfg.teacher.model)
    if model.suffix == ".pt":
        return _call(cfg, "freeze", FreezeParams(checkpoint=model, head=cfg.teacher.head,
                                                 output=lay.init / "teacher-frozen"), "init/teacher-frozen")
    return None


def initial_structures(cfg: DistillConfig, lay: Layout) -> list[StepCall]:
    if cfg.initial_data.perturbed_frames == 0:
        return []
    d = cfg.initial_data
    return [_call(cfg, "perturb", PerturbParams(
        structures=cfg.configurations.files, type_map=cfg.type_map, output=lay.init / "perturbed",
        n_per_structure=d.perturbed_frames, seed=cfg.seed, **d.model_dump(include=set(PerturbSettings.model_fields))),
        "init/perturbed")]


def teacher_md(cfg: DistillConfig, lay: Layout, teacher: TeacherRef) -> list[StepCall]:
    """Labelled frames of short MD driven by the teacher (a calculator, or a DeePMD-kit model
    through its ASE calculator), one trajectory per initial configuration × temperature."""
    md = cfg.initial_data.teacher_md
    if md is None:
        return []
    if teacher.calculator is not None:
        calculator, kwargs = teacher.calculator, cfg.teacher.calculator_kwargs
    else:
        calculator = "deepmd"
        kwargs = {"model": str(teacher.infer), **({"head": teacher.head} if teacher.head else {})}
    return [_call(cfg, "label_md", LabelMDParams(
        structures=cfg.configurations.files, type_map=cfg.type_map, output=lay.init / "teacher-md",
        calculator=calculator, calculator_kwargs=kwargs, max_force=cfg.teacher.max_force,
        seed=cfg.seed + TEACHER_MD_SEED, **md.model_dump()), "init/teacher-md")]


def teacher_labels(cfg: DistillConfig, teacher: TeacherRef, systems: list[Path], out: Path,
                   label: str) -> list[StepCall]:
    """Teacher labelling fanned out in chunks of ``label_chunk_size`` frames: ``teacher_label``
    (batched ``DeepPot``) for a DeePMD-kit teacher, ``label`` for a calculator."""
    if not systems:
        return []
    n = max(1, math.ceil(count_frames(systems) / cfg.label_chunk_size))
    t = cfg.teacher
    if teacher.calculator is not None:
        return [_call(cfg, "label", LabelParams(
            output=out / f"chunk-{c:03d}", structures=systems, type_map=cfg.type_map, chunk=c, n_chunks=n,
            calculator=teacher.calculator, calculator_kwargs=t.calculator_kwargs, max_force=t.max_force),
            f"{label}/chunk-{c:03d}") for c in range(n)]
    return [
        _call(cfg, "teacher_label", TeacherLabelParams(
            output=out / f"chunk-{c:03d}", model=teacher.infer, head=teacher.head, systems=systems,
            type_map=cfg.type_map, chunk=c, n_chunks=n, max_force=t.max_force), f"{label}/chunk-{c:03d}")
        for c in range(n)
    ]


def _timing(cfg: DistillConfig, **where) -> SpeedParams:
    """The speed step of config section ``speed`` on the first starting cell."""
    return cfg.speed.params(structure=cfg.configurations.files[0], type_map=cfg.type_map, **where)


def speed(cfg: DistillConfig, model: Path, out: Path, label: str) -> StepCall:
    return _call(cfg, "speed", _timing(cfg, model=model, output=out), label)


def teacher_speed(cfg: DistillConfig, teacher: TeacherRef, out: Path, label: str) -> StepCall:
    """The teacher's speed on the student's cell: in LAMMPS, or in ASE for a calculator."""
    if teacher.calculator is None:
        return speed(cfg, teacher.lammps, out, label)
    return _call(cfg, "speed", _timing(
        cfg, calculator=teacher.calculator, calculator_kwargs=cfg.teacher.calculator_kwargs, output=out), label)


# -- students ----------------------------------------------------------------------------------

def students(cfg: DistillConfig, where: Path, data: list[Path], previous: list[Path] | None) -> list[StepCall]:
    """Train ``student.count`` students (different seeds) on all data so far."""
    s = cfg.student
    calls = []
    for m in range(s.count):
        init = previous[m] if previous and s.init_from_previous else None
        calls.append(_call(cfg, "train", TrainParams(
            output=where / f"train-{m:02d}", type_map=cfg.type_map, template=s.template,
            overrides=s.overrides, train=data, numb_steps=s.numb_steps_next if init else s.numb_steps,
            seed=cfg.seed + 1000 * m, init_model=init, compress=s.compress), f"{where.name}/train-{m:02d}"))
    return calls


def final_student(cfg: DistillConfig, lay: Layout, data: list[Path], checkpoint: Path) -> StepCall:
    """The long final training: the last measured student (the first of the ensemble, its seed)
    continued for ``numb_steps_final`` steps on every labelled frame."""
    s = cfg.student
    return _call(cfg, "train", TrainParams(
        output=lay.final / "train", type_map=cfg.type_map, template=s.template, overrides=s.overrides, train=data,
        numb_steps=s.numb_steps_final, seed=cfg.seed, init_model=checkpoint, compress=s.compress), "final/train")


def evaluate_final(cfg: DistillConfig, lay: Layout, model: Path, systems: list[Path]) -> StepCall:
    return _call(cfg, "evaluate", EvaluateParams(model=model, systems=systems, type_map=cfg.type_map,
                                                 output=lay.final / "evaluate.json"), "final/evaluate")


# -- one iteration -----------------------------------------------------------------------------

def explore(cfg: DistillConfig, lay: Layout, k: int, models: list[Path]) -> list[StepCall]:
    """One task per starting frame × temperature (pressures inside the task), or × combination
    of a ``lammps_template``'s revisions: every frame of every configuration file, or
    ``n_sample`` of them drawn for this iteration."""
    e = cfg.exploration(k)
    where = lay.iteration(k) / "explore"
    settings = e.model_dump(include=set(ExploreSettings.model_fields))
    calls, n = [], 0
    for path, frame in starting_frames(cfg, k):
        for point in e.task_points():
            calls.append(_call(cfg, "explore", ExploreParams(
                output=where / f"task-{n:03d}", models=models, type_map=cfg.type_map, structure=path,
                fmt=cfg.configurations.fmt, frame=frame, seed=cfg.seed + 7919 * k + n + 1,
                **{**settings, **point}), f"iter-{k:03d}/explore/task-{n:03d}"))
            n += 1
    return calls


def starting_frames(cfg: DistillConfig, k: int) -> list[tuple[Path, int]]:
    """(file, frame) pairs iteration ``k`` starts its MD from, in file order. With ``n_sample``
    a seeded draw of that many, a new one each iteration (dpgen2's random conf sampling): a
    trajectory given as configurations then spreads its frames over the iterations instead of
    making every one of them a task of every iteration."""
    frames = [(Path(path), frame) for path in cfg.configurations.files
              for frame in range(configuration_frames(path, cfg))]
    n = cfg.exploration(k).n_sample
    if n is None or n >= len(frames):
        return frames
    rng = np.random.default_rng([cfg.seed, SAMPLE_SEED, k])
    return [frames[i] for i in sorted(rng.choice(len(frames), size=n, replace=False))]


def configuration_frames(path: Path, cfg: DistillConfig) -> int:
    return len(read_system(path, cfg.type_map, cfg.configurations.fmt))


def select(cfg: DistillConfig, lay: Layout, k: int, task_dirs: list[Path]) -> StepCall:
    return _call(cfg, "select", SelectParams(
        output=lay.iteration(k) / "select", tasks=task_dirs, type_map=cfg.type_map,
        # with the teacher as second model, DeePMD-kit's deviation is half the force error
        deviation_scale=2.0 if cfg.student.count == 1 else 1.0, seed=cfg.seed + k,
        **cfg.selection.model_dump()), f"iter-{k:03d}/select")


def evaluate(cfg: DistillConfig, lay: Layout, k: int, model: Path, systems: list[Path]) -> StepCall:
    return _call(cfg, "evaluate", EvaluateParams(
        model=model, systems=systems, type_map=cfg.type_map,
        output=lay.iteration(k) / "evaluate.json"), f"iter-{k:03d}/evaluate")
