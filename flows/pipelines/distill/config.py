"""The distillation config: one YAML file, validated field by field.

Each section that a step also reads *is* that step's settings model (``selection`` is
:class:`~lamflow.steps.select.SelectSettings`, each ``iterations`` entry
:class:`~lamflow.steps.explore.ExploreSettings`, ...): a parameter is declared once, with one
default and one validator, and ``lamflow step select`` behaves like ``lamflow distill`` with the
same values left out. The sections add only what the loop wires itself (paths, seeds, chunks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from lamflow.steps.base import CalculatorKwargs, StructureFormat, TypeMap, check_type_map
from lamflow.steps.calculators import known_calculator
from lamflow.steps.explore import ExploreSettings
from lamflow.steps.label import LabelSettings
from lamflow.steps.label_md import TeacherMDSettings
from lamflow.steps.perturb import PerturbSettings
from lamflow.steps.select import SelectSettings
from lamflow.steps.speed import SupercellSpeed

from lamflow.flows.core.config import RunConfig, Section, check_exist


class LabelSpec(LabelSettings, PerturbSettings):
    """Reference labels computed with an ASE calculator (of the structures, or of perturbed copies)."""

    structures: list[Path] = Field(min_length=1, description="files with structures (extxyz, POSCAR, ...)")
    chunks: int = Field(1, ge=1, description="label in this many parallel tasks")
    perturbed_frames: int = Field(
        0, ge=0, description="label this many perturbed copies of each structure instead of the structures")


class TeacherTrain(Section):
    """Train the teacher here (a demo, or a teacher from your own DFT data)."""

    data: list[Path] = Field(default_factory=list, description="labelled deepmd/npy systems")
    label: LabelSpec | None = Field(None, description="label the reference cells with an ASE calculator (default: "
                                                      "configurations, labelled as given)")
    template: str = Field("dpa3", description="DeePMD-kit template name or .json path")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the template")
    numb_steps: int = Field(2000, ge=1, description="training steps of the teacher")

    @model_validator(mode="after")
    def _some_data(self) -> "TeacherTrain":
        if not self.data and self.label is None:
            raise ValueError("give 'data' (labelled systems) and/or 'label' (structures to label)")
        return self


class Teacher(Section):
    """The model to distil: a DeePMD-kit file, one trained here, or any ASE calculator.

    A DeePMD-kit teacher runs beside the student in LAMMPS, so the deviation LAMMPS writes is the
    student's real error. A calculator teacher (``sevenn``, ``chgnet``, ``module:Class``) cannot
    run in LAMMPS: the students drive the MD alone, an ensemble's deviation selects the frames,
    and the teacher labels them (and measures the student's real error on unseen frames).
    """

    model: Path | None = Field(None, description="frozen .pth/.pt2, or a .pt checkpoint (frozen for LAMMPS)")
    head: str | None = Field(None, description="branch of a multi-task checkpoint")
    train: TeacherTrain | None = None
    calculator: str | None = Field(None, description="an ASE calculator as the teacher: sevenn, chgnet, xtb, "
                                                     "emt or module:Class")
    calculator_kwargs: CalculatorKwargs
    max_force: float | None = Field(
        20.0, gt=0, description="eV/Å: frames where the teacher's largest force is larger are not learnt (and the "
                                "teacher's own MD stops there); null: every frame is. Frames a student's broken MD "
                                "reaches (atoms fused: 10²-10⁴ eV/Å) are labelled with label_failed, and one of "
                                "them outweighs thousands of sane frames in the force loss. 20 suits MD up to a few "
                                "thousand K; raise it for stiff or compressed systems (the report counts the "
                                "dropped labels)")

    _known = field_validator("calculator")(classmethod(lambda cls, v: known_calculator(v)))

    @model_validator(mode="after")
    def _one_source(self) -> "Teacher":
        given = [k for k in ("model", "train", "calculator") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'model' (a file), 'train' or 'calculator' "
                             f"(got {', '.join(given) or 'none'})")
        return self


class Student(Section):
    """The fast model the loop delivers: its DeePMD-kit template, training and compression."""

    template: str = Field("se_e2_a", description="se_e2_a, se_e2_a+se_e3 (with angles), se_atten_v2 "
                          "(`lamflow templates`) or a .json path (any DeePMD-kit descriptor; to compress: "
                          "se_e2_a, se_e3, se_atten_v2, DPA-2 strip, dpa4c, or a hybrid of them)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DeePMD-kit input keys deep-merged into the "
                                                                        "template (e.g. model.descriptor.rcut)")
    numb_steps: int = Field(2000, ge=1, description="steps for the first student")
    numb_steps_next: int = Field(1000, ge=1, description="steps for later students (initialised from the previous)")
    init_from_previous: bool = Field(True, description="each iteration's student starts from the previous one's "
                                                       "checkpoint (numb_steps_next steps) and keeps its neighbour "
                                                       "counts (sel)")
    numb_steps_final: int | None = Field(
        None, ge=1, description="after the loop, the delivered student trains this many more steps on every "
                                "labelled frame, from the last measured student, and is measured on every "
                                "iteration's validation frames (DP-GEN's practice: short trainings explore, a long "
                                "one delivers). None: deliver the last measured student as it is")
    compress: bool = Field(True, description="dp compress the student (tabulated embedding: faster MD)")
    count: int | None = Field(
        None, ge=1, description="students trained side by side. 1: the deviation against a DeePMD-kit teacher "
                                "(the student's real error); >= 2: the ensemble's deviation. Default: 1 with a "
                                "DeePMD-kit teacher, 2 with a calculator teacher")


class Configurations(Section):
    """Initial configurations for exploration (every frame of every file is one start)."""

    files: list[Path] = Field(min_length=1, description="starting cells of exploration (extxyz, POSCAR, LAMMPS data, "
                                                        "deepmd/npy …; a pattern such as confs/POSCAR_* is every "
                                                        "file it matches); every frame of each file is one. Every cell "
                                                        "runs periodic: a slab (pbc False along c) across its vacuum, "
                                                        "which must be at least the student's cut-off (npt holds it in "
                                                        "its plane); a molecule needs a box")
    fmt: StructureFormat = None


class TeacherMD(TeacherMDSettings):
    """Short MD the teacher drives from every initial configuration; its frames are labelled on the way."""


class InitialData(PerturbSettings):
    """The first students' data: perturbed copies of the starting cells (and the teacher's own
    MD), labelled by the teacher."""

    systems: list[Path] = Field(default_factory=list, description="labelled deepmd/npy systems to start from "
                                                                 "(mixed-type systems too)")
    perturbed_frames: int = Field(
        40, ge=0, description="perturbed copies of each initial configuration, labelled by the teacher")
    teacher_md: TeacherMD | None = Field(
        None, description="frames of short teacher-driven MD at the exploration's temperatures: a first "
                          "student that has seen thermal disorder explores physical configurations")

    @model_validator(mode="after")
    def _some(self) -> "InitialData":
        if not self.systems and self.perturbed_frames == 0 and self.teacher_md is None:
            raise ValueError("no initial data: give 'systems', perturbed_frames > 0 or 'teacher_md'")
        return self


class Exploration(ExploreSettings):
    """What one iteration explores (LAMMPS, every initial configuration × temperature × pressure)."""

    n_sample: int | None = Field(
        None, ge=1, description="starting frames per iteration, drawn anew each iteration (seeded) from every frame "
                                "of configurations.files (dpgen2's n_sample); unset: every frame. For a trajectory "
                                "or dataset given as configurations, whose every frame would be one MD task per "
                                "temperature")


class Selection(SelectSettings):
    """Which explored frames the teacher labels (trust levels on the student's force error)."""


class Convergence(Section):
    """When the loop stops: the rule must hold this many consecutive iterations.

    With a fixed ``selection.trust_lo`` an iteration meets the rule by its share of accurate
    frames; with ``trust_lo: adaptive`` (dpgen2's adaptive-lower) by its level no longer moving:
    the share below an adaptive level is the labelling budget's complement by construction and
    says nothing, while a level that stops falling says exploration finds nothing worse to teach."""

    accurate_ratio: float = Field(0.99, gt=0, le=1, description="with a fixed selection.trust_lo: an iteration meets "
                                                                "the rule when at least this share of explored frames "
                                                                "is accurate (error below trust_lo)")
    level_tolerance: float = Field(0.05, gt=0, description="eV/Å, with selection.trust_lo: adaptive: an iteration "
                                                           "meets the rule when its level moved less than this from "
                                                           "the previous iteration's (dpgen2's conv_tolerance)")
    consecutive: int = Field(2, ge=1, description="iterations in a row that must meet the rule")
    max_rmse_f: float | None = Field(
        None, gt=0, description="eV/Å: student-vs-teacher force RMSE on unseen explored frames")


class Speed(SupercellSpeed):
    """How the report times teacher and students (same cell, threads and steps; µs per atom-step).

    The first starting cell as it is by default: cheap, and what every iteration can afford. On a
    cell of tens of atoms a compressed student's step is mostly the fixed cost of one call into its
    model, a large teacher's is not, so the ratio there understates what a production cell sees
    (measured, Si, SevenNet-0: 43x at 64 atoms, 128x at 1152); ``atoms: 800`` times LAMBench's
    efficiency size, as ``lamflow version`` does. Its ``atoms`` default (0) is the base's."""


class DistillConfig(RunConfig):
    pipeline_name: ClassVar[str] = "distill"

    name: str = Field("distill", description="the run's name: its default run directory runs/<name>, the workflow's "
                                             "name")
    type_map: TypeMap
    teacher: Teacher
    student: Student = Field(default_factory=Student)
    configurations: Configurations
    initial_data: InitialData = Field(default_factory=InitialData)
    iterations: list[Exploration] = Field(
        min_length=1, description="iteration k explores with iterations[min(k, len-1)]")
    selection: Selection = Field(default_factory=Selection)
    convergence: Convergence = Field(default_factory=Convergence)
    max_iterations: int = Field(5, ge=1, description="stop here if the rule is not met (exit code 3)")
    label_chunk_size: int = Field(200, ge=1, description="frames per teacher-label task")
    speed: Speed = Field(default_factory=Speed)

    _unique = field_validator("type_map")(classmethod(lambda cls, v: check_type_map(v)))

    @model_validator(mode="after")
    def _students(self) -> "DistillConfig":
        """A calculator teacher cannot run in LAMMPS, so only an ensemble can tell which frames to label."""
        if self.student.count is None:
            self.student.count = 2 if self.teacher.calculator else 1
        elif self.teacher.calculator and self.student.count < 2:
            raise ValueError("student.count must be >= 2 with a calculator teacher: LAMMPS cannot run "
                             f"'{self.teacher.calculator}', so the students' deviation selects the frames")
        # a value other than the default: "set" is not a flag that survives a dump and reload (staging)
        rule, defaults = self.convergence, Convergence.model_fields
        given = {k for k in ("accurate_ratio", "level_tolerance") if getattr(rule, k) != defaults[k].default}
        if self.selection.adaptive and "accurate_ratio" in given:
            raise ValueError("convergence.accurate_ratio does not apply with selection.trust_lo: adaptive (the share "
                             "below an adaptive level is fixed by max_candidates): its rule is "
                             "convergence.level_tolerance")
        if not self.selection.adaptive and "level_tolerance" in given:
            raise ValueError("convergence.level_tolerance applies only with selection.trust_lo: adaptive (this "
                             f"config's trust_lo is {self.selection.trust_lo}: its rule is convergence.accurate_ratio)")
        if self.student.numb_steps_final and not self.selection.validation_frames:
            raise ValueError("student.numb_steps_final needs selection.validation_frames > 0: the frames its "
                             "delivered student is measured on")
        return self

    def exploration(self, iteration: int) -> Exploration:
        return self.iterations[min(iteration, len(self.iterations) - 1)]


def check_files(cfg: DistillConfig, with_teacher: bool = True) -> None:
    """Fail before any work when a file the run needs is missing."""
    needed: list[tuple[str, Path]] = [(f"configurations.files[{i}]", p) for i, p in enumerate(cfg.configurations.files)]
    needed += [(f"initial_data.systems[{i}]", p) for i, p in enumerate(cfg.initial_data.systems)]
    if with_teacher and cfg.teacher.model is not None:
        needed.append(("teacher.model", cfg.teacher.model))
    if cfg.teacher.train is not None:
        needed += [(f"teacher.train.data[{i}]", p) for i, p in enumerate(cfg.teacher.train.data)]
        if cfg.teacher.train.label:
            needed += [(f"teacher.train.label.structures[{i}]", p)
                       for i, p in enumerate(cfg.teacher.train.label.structures)]
    needed += [(f"iterations[{i}].lammps_template", it.lammps_template) for i, it in enumerate(cfg.iterations)]
    check_exist(needed)
