"""The distillation's report as data: one record per iteration, written as ``report.json``.

Plain dataclasses with no behaviour beyond (de)serialisation and one derived answer (which
student the run delivers, with which figures), so the loop, the report writers, the terminal
progress, the model card and the CLI all read the same typed fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lamflow.steps.errors import InputError

from lamflow.flows.core.records import Labelling


@dataclass
class IterationRecord:
    iteration: int
    n_frames: int = 0
    accurate_ratio: float = 0.0
    candidate_ratio: float = 0.0
    failed_ratio: float = 0.0
    failed_tasks: int = 0
    n_broken: int = 0  # explored frames with overlapping atoms (the students' MD broke there)
    trust_lo: float | None = None  # the lower level this iteration's selection used (adaptive: its value)
    n_selected: int = 0
    labels_added: int = 0
    labels_dropped: int = 0
    n_train_frames: int = 0
    rmse_f: float | None = None
    rmse_e_per_atom: float | None = None
    n_eval_frames: int = 0
    student_speed: float | None = None
    student_us_per_atom_step: float | None = None
    speed_ratio: float | None = None
    speed_error: str = ""  # why the student's speed was not measured (its timing MD failed)
    student: str = ""
    deviations: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    meets_rule: bool = False
    fit_rmse_f: float | None = None  # eV/Å: the worst of the exploring students' RMSE on their own training frames

    def explorers_underfit(self, trust_hi: float) -> bool | None:
        """Whether the students that explored fit their own training frames so loosely that their
        largest atomic error there is already about ``trust_hi``: their MD fails within steps, and
        training them longer is what helps (None where their fit is unknown)."""
        return None if self.fit_rmse_f is None else self.fit_rmse_f * LARGEST_TO_RMSE >= trust_hi

    def labels_text(self, dropped: str = " dropped") -> str:
        """The labels this iteration added, and beside them those the teacher's ``max_force`` (or
        a non-finite label) dropped, training and validation frames alike: many dropped frames say
        the students' MD broke (or that the cap is too low for the system). ``dropped=""`` for a
        narrow column whose header names them."""
        return f"{self.labels_added} ({self.labels_dropped}{dropped})" if self.labels_dropped else str(self.labels_added)


#: an iteration with at least this share of failed frames is struggling, and the run says why
STRUGGLING_FAILED_RATIO = 0.5
#: the largest of a frame's atomic force errors is about three times their RMSE (a few dozen to a
#: few hundred atoms): explorers whose RMSE on their own training frames is a third of trust_hi
#: already reach trust_hi on the frames they were trained on
LARGEST_TO_RMSE = 3.0

#: a student whose error on its own training frames is at least this share of its error on unseen
#: ones is underfit (DeePMD-kit users read the same from lcurve.out's trn and val columns); the
#: unseen frames are explored ones, harder than the rattled and teacher-MD frames among the
#: training frames, so a student short of data lies well below it
UNDERFIT_RATIO = 0.8


@dataclass
class FinalRecord:
    """The long final training (``student.numb_steps_final``): the delivered student, measured on
    every iteration's validation frames, which no student trained on."""
    student: str
    numb_steps: int
    n_train_frames: int = 0
    rmse_f: float | None = None
    rmse_e_per_atom: float | None = None
    n_eval_frames: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    meets_rule: bool | None = None  # its force RMSE within convergence.max_rmse_f (None: not judged yet)
    fit_rmse_f: float | None = None  # eV/Å on its own training batches at the end (TrainResult.fit_rmse_f)

    def underfit(self) -> bool | None:
        """Whether the student fits the frames it was trained on hardly better than unseen ones
        (then more steps or capacity help, more labels do not); None where either is unknown."""
        if self.fit_rmse_f is None or not self.rmse_f:
            return None
        return self.fit_rmse_f >= UNDERFIT_RATIO * self.rmse_f


@dataclass
class DistillReport:
    name: str
    run_dir: str
    teacher: str = ""
    teacher_speed: float | None = None
    teacher_engine: str = "lammps"
    teacher_us_per_atom_step: float | None = None
    speed_atoms: int = 0  # the cell teacher and students were timed on (config section speed)
    teacher_speed_error: str = ""  # why the teacher's speed was not measured
    trust_lo: float = 0.0  # the fixed level; with an adaptive one, each iteration's is in its record
    trust_lo_adaptive: bool = False
    trust_hi: float = 0.0
    init_seconds: dict[str, float] = field(default_factory=dict)
    iterations: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    final_student: str = ""  # the measured student: an iteration's, or the final training's
    final: FinalRecord | None = None  # the final training, where the config asks for one
    delivered: str = ""  # its copy in the run directory, once the run has finished
    wall_seconds: float = 0.0
    step_seconds: float = 0.0  # in steps that ran in the last session
    compute_seconds: float = 0.0  # in every step of the run, whichever session ran it
    cached_steps: int = 0
    #: frames the teacher was given to label (initial data, every iteration's candidates and
    #: validation frames), and why it left some out: many dropped frames say the students' MD
    #: broke, or that the calculator cannot label such frames (an SCF that does not converge)
    labelling: Labelling = field(default_factory=Labelling)
    #: running, converged, max_iterations (the rule was not met in time), inaccurate (exploration
    #: converged, but the final training's student misses convergence.max_rmse_f), failed
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def delivered_final(self) -> FinalRecord | None:
        """The final training, once it has finished and its student is the one delivered."""
        f = self.final
        return f if f is not None and f.student and f.student == self.final_student else None

    def delivering(self) -> IterationRecord | None:
        """The record of the student the run delivers (or would, stopped now): after a final training,
        the last iteration's with the final student's own figures (its cell, speed and architecture
        are the loop's); else the iteration whose student is the final one; None before any.
        One answer for the terminal, the HTML report and the model card, which once chose apart."""
        if (f := self.delivered_final) is not None:
            return replace(self.iterations[-1], student=f.student, rmse_f=f.rmse_f,
                           rmse_e_per_atom=f.rmse_e_per_atom, n_eval_frames=f.n_eval_frames)
        return next((it for it in reversed(self.iterations) if it.student == self.final_student), None)

    @classmethod
    def from_json(cls, path: Path) -> "DistillReport":
        data = json.loads(Path(path).read_text())
        data["iterations"] = [IterationRecord(**it) for it in data.get("iterations", [])]
        if data.get("final") is not None:
            data["final"] = FinalRecord(**data["final"])
        if data.get("labelling") is not None:
            data["labelling"] = Labelling(**data["labelling"])
        return cls(**data)


#: where a run directory keeps its distillation's report: a distill run, or a LAM run's distill stage
REPORT_PLACES = ("report.json", "distill/report.json")


def report_path(run_dir: Path) -> Path | None:
    """The distillation report of ``run_dir`` (a distill or a LAM run), if there is one yet."""
    return next((Path(run_dir) / p for p in REPORT_PLACES if (Path(run_dir) / p).is_file()), None)


def find_report(run_dir: Path) -> tuple[Path, DistillReport]:
    """The report of a run directory a user names, or one line saying why there is none."""
    path = report_path(run_dir)
    if path is None:
        raise InputError(str(run_dir), "no report.json (nor distill/report.json): not a lamflow run directory")
    try:
        return path, DistillReport.from_json(path)
    except (ValueError, TypeError) as exc:
        raise InputError(str(path), f"is not a lamflow report ({str(exc).splitlines()[0][:120]})") from None


def read_report(run_dir: Path) -> DistillReport:
    """The report of a finished (or running) distillation in ``run_dir``."""
    return DistillReport.from_json(Path(run_dir) / "report.json")
