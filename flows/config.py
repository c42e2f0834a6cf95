"""The distillation config: one YAML file, validated field by field.

Relative paths are resolved against the config file's folder, so a config and its data can be
moved together. Every model forbids unknown keys: a misspelt ``trust_hi`` fails at load time
with ``selection.trust_hgh: unknown key`` instead of silently running a day with the default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lamflow.steps.base import ordered_trust_levels, unique_elements
from lamflow.steps.errors import InputError

from .errors import one_line
from .resources import Resources


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelSpec(Section):
    """Reference labels for the teacher's training data, computed with an ASE calculator."""

    structures: list[Path] = Field(min_length=1, description="files with structures (extxyz, POSCAR, ...)")
    calculator: str = Field("emt", description="emt, xtb, deepmd or module:Class")
    calculator_kwargs: dict[str, Any] = Field(default_factory=dict)
    chunks: int = Field(1, ge=1, description="label in this many parallel tasks")
    perturbed_frames: int = Field(
        0, ge=0, description="label this many perturbed copies of each structure instead of the structures")
    cell_fraction: float = Field(0.03, ge=0)
    atom_distance: float = Field(0.1, ge=0)


class TeacherTrain(Section):
    """Train the teacher here (a demo, or a teacher from your own DFT data)."""

    data: list[Path] = Field(default_factory=list, description="labelled deepmd/npy systems")
    label: LabelSpec | None = None
    template: str = Field("dpa3", description="DeePMD-kit template name or .json path")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the template")
    numb_steps: int = Field(2000, ge=1)

    @model_validator(mode="after")
    def _some_data(self) -> "TeacherTrain":
        if not self.data and self.label is None:
            raise ValueError("give 'data' (labelled systems) and/or 'label' (structures to label)")
        return self


class Teacher(Section):
    """The fine-tuned model to distil: a file (any DeePMD-kit format), or trained here."""

    model: Path | None = Field(None, description="frozen .pth/.pt2, or a .pt checkpoint (frozen for LAMMPS)")
    head: str | None = Field(None, description="branch of a multi-task checkpoint")
    train: TeacherTrain | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Teacher":
        if (self.model is None) == (self.train is None):
            raise ValueError("give exactly one of 'model' (a file) or 'train'")
        return self


class Student(Section):
    template: str = Field("se_e2_a", description="se_e2_a, se_atten_v2, dpa4c or a .json path")
    overrides: dict[str, Any] = Field(default_factory=dict)
    numb_steps: int = Field(2000, ge=1, description="steps for the first student")
    numb_steps_next: int = Field(1000, ge=1, description="steps for later students (initialised from the previous)")
    init_from_previous: bool = True
    compress: bool = True
    count: int = Field(1, ge=1, description="1: deviation vs the teacher; >=2: an ensemble's deviation")


class Configurations(Section):
    """Initial configurations for exploration (every frame of every file is one start)."""

    files: list[Path] = Field(min_length=1)
    fmt: str | None = Field(None, description="format when not guessed from the name (e.g. lammps/lmp)")


class InitialData(Section):
    systems: list[Path] = Field(default_factory=list, description="labelled deepmd/npy systems to start from")
    perturbed_frames: int = Field(
        40, ge=0, description="perturbed copies of each initial configuration, labelled by the teacher")
    cell_fraction: float = Field(0.03, ge=0)
    atom_distance: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _some(self) -> "InitialData":
        if not self.systems and self.perturbed_frames == 0:
            raise ValueError("no initial data: give 'systems' or perturbed_frames > 0")
        return self


class Exploration(Section):
    """What one iteration explores (LAMMPS, every initial configuration × temperature × pressure)."""

    ensemble: Literal["nvt", "npt", "nve"] = "nvt"
    temps: list[float] = Field(min_length=1, description="K")
    pressures: list[float] = Field(default_factory=lambda: [1.0], description="bar, for npt")
    nsteps: int = Field(2000, ge=1)
    trj_freq: int = Field(10, ge=1, description="dump and deviation every N steps")
    dt: float = Field(0.001, gt=0, description="ps")

    @field_validator("temps")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError(f"temperatures must be positive kelvin, got {v}")
        return v


class Selection(Section):
    trust_lo: float = Field(0.05, ge=0, description="eV/Å: below, the student is accurate")
    trust_hi: float = Field(0.35, gt=0, description="eV/Å: at or above, the frame is failed")
    max_candidates: int = Field(100, ge=1, description="teacher labels per iteration, at most")
    strategy: Literal["random", "highest"] = "random"
    validation_frames: int = Field(
        20, ge=0, description="random explored frames labelled only to measure the student's error")

    @model_validator(mode="after")
    def _levels(self) -> "Selection":
        ordered_trust_levels(self.trust_lo, self.trust_hi)
        return self


class Convergence(Section):
    accurate_ratio: float = Field(0.99, gt=0, le=1)
    consecutive: int = Field(2, ge=1, description="iterations in a row that must meet the rule")
    max_rmse_f: float | None = Field(
        None, gt=0, description="eV/Å: student-vs-teacher force RMSE on unseen explored frames")


STEP_NAMES = ("label", "train", "freeze", "perturb", "explore", "select", "teacher_label", "evaluate", "speed",
              "import_data", "change_bias")


class DistillConfig(Section):
    name: str = "distill"
    type_map: list[str] = Field(min_length=1)
    teacher: Teacher
    student: Student = Field(default_factory=Student)
    configurations: Configurations
    initial_data: InitialData = Field(default_factory=InitialData)
    iterations: list[Exploration] = Field(
        min_length=1, description="iteration k explores with iterations[min(k, len-1)]")
    selection: Selection = Field(default_factory=Selection)
    convergence: Convergence = Field(default_factory=Convergence)
    max_iterations: int = Field(5, ge=1)
    label_chunk_size: int = Field(200, ge=1, description="frames per teacher-label task")
    seed: int = 1
    max_workers: int = Field(1, ge=1, description="local engine: steps run at once")
    resources: dict[str, Resources] = Field(default_factory=dict)
    workdir: Path | None = Field(None, description="run directory (default: runs/<name>)")

    _unique = field_validator("type_map")(classmethod(lambda cls, v: unique_elements(v)))

    @field_validator("resources")
    @classmethod
    def _known_steps(cls, v: dict[str, Resources]) -> dict[str, Resources]:
        unknown = sorted(set(v) - set(STEP_NAMES) - {"default"})
        if unknown:
            raise ValueError(f"unknown steps {unknown}; expected 'default' or {list(STEP_NAMES)}")
        return v

    def resources_for(self, step: str) -> Resources:
        return self.resources.get(step) or self.resources.get("default") or Resources()

    def run_dir(self, workdir: str | Path | None = None) -> Path:
        """``workdir`` if given, else the config's ``workdir``, else ``$LAMFLOW_RUNS/<name>`` (``runs/<name>``)."""
        return Path(workdir or self.workdir or Path(os.environ.get("LAMFLOW_RUNS", "runs")) / self.name)

    def exploration(self, iteration: int) -> Exploration:
        return self.iterations[min(iteration, len(self.iterations) - 1)]


def _resolve_paths(node: Any, base: Path, model: type[BaseModel] | None = None) -> Any:
    """Make every relative path in the raw config relative to the config file's folder."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("overrides", "calculator_kwargs"):
                out[key] = value
            elif key in ("model", "workdir", "template") and isinstance(value, str):
                out[key] = _path(value, base, template=(key == "template"))
            elif key in ("files", "structures", "systems", "data") and isinstance(value, list):
                out[key] = [_path(v, base) if isinstance(v, str) else v for v in value]
            else:
                out[key] = _resolve_paths(value, base)
        return out
    if isinstance(node, list):
        return [_resolve_paths(v, base) for v in node]
    return node


def _path(value: str, base: Path, template: bool = False) -> str:
    if template and not (value.endswith(".json") or "/" in value):
        return value  # a template name, not a path
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def parse_config(raw: dict[str, Any], base: Path, source: str = "config") -> DistillConfig:
    try:
        return DistillConfig.model_validate(_resolve_paths(raw, base))
    except ValidationError as exc:
        raise InputError(source, one_line(exc)) from None


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) file whose top level is a mapping, or one clear line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(str(path), f"is not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    if not isinstance(raw, dict):
        raise InputError(str(path), "expected a mapping at the top level")
    return raw


def load_config(path: Path) -> DistillConfig:
    path = Path(path)
    return parse_config(read_mapping(path), path.resolve().parent, str(path))


def check_files(cfg: DistillConfig) -> None:
    """Fail before any work when a file the run needs is missing."""
    needed: list[tuple[str, Path]] = [(f"configurations.files[{i}]", p) for i, p in enumerate(cfg.configurations.files)]
    needed += [(f"initial_data.systems[{i}]", p) for i, p in enumerate(cfg.initial_data.systems)]
    if cfg.teacher.model is not None:
        needed.append(("teacher.model", cfg.teacher.model))
    if cfg.teacher.train is not None:
        needed += [(f"teacher.train.data[{i}]", p) for i, p in enumerate(cfg.teacher.train.data)]
        if cfg.teacher.train.label:
            needed += [(f"teacher.train.label.structures[{i}]", p)
                       for i, p in enumerate(cfg.teacher.train.label.structures)]
    for field, path in needed:
        if not Path(path).exists():
            raise InputError(field, f"file not found: {path}")
