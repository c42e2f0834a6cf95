"""The distillation loop, written once for every engine.

    prepare:      teacher (train / freeze / as given) → initial data (perturb → teacher-label)
                  → student 0
    iteration k:  explore (student k drives, teacher compared) → select → teacher-label
                  → evaluate student k on unseen explored frames → converged? → student k+1

The student that is delivered is always one whose error was measured: convergence is judged on
student k's own exploration, before any retraining. Engines differ only in the
:class:`~lamflow.flows.runner.Runner` they pass in.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lamflow.steps.errors import StepFailed
from lamflow.steps.structures import count_frames

from . import plan
from .config import DistillConfig
from .preflight import preflight
from .report import write_report
from .runner import Pending, Runner, StepCall, StepRecord


@dataclass
class IterationRecord:
    iteration: int
    n_frames: int = 0
    accurate_ratio: float = 0.0
    candidate_ratio: float = 0.0
    failed_ratio: float = 0.0
    failed_tasks: int = 0
    n_selected: int = 0
    labels_added: int = 0
    labels_dropped: int = 0
    n_train_frames: int = 0
    rmse_f: float | None = None
    rmse_e_per_atom: float | None = None
    n_eval_frames: int = 0
    student_speed: float | None = None
    speed_ratio: float | None = None
    student: str = ""
    deviations: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    meets_rule: bool = False


@dataclass
class DistillReport:
    name: str
    run_dir: str
    teacher: str = ""
    teacher_speed: float | None = None
    trust_lo: float = 0.0
    trust_hi: float = 0.0
    init_seconds: dict[str, float] = field(default_factory=dict)
    iterations: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    final_student: str = ""
    wall_seconds: float = 0.0
    step_seconds: float = 0.0
    cached_steps: int = 0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, path: Path) -> "DistillReport":
        import json

        data = json.loads(Path(path).read_text())
        data["iterations"] = [IterationRecord(**it) for it in data.get("iterations", [])]
        return cls(**data)


class _Book:
    """Runs batches through the engine and keeps the time accounts."""

    def __init__(self, runner: Runner, report: DistillReport, on_batch: Callable[[str], None] | None):
        self.runner, self.report, self.on_batch = runner, report, on_batch

    def run(self, calls: list[StepCall], seconds: dict[str, float]) -> list[StepRecord]:
        if not calls:
            return []
        if self.on_batch:
            self.on_batch(calls[0].label.rsplit("/", 1)[0] if len(calls) > 1 else calls[0].label)
        records = self.runner.map(calls)
        for call, rec in zip(calls, records):
            if rec.cached:
                self.report.cached_steps += 1
            else:
                seconds[call.step] = seconds.get(call.step, 0.0) + rec.seconds
                self.report.step_seconds += rec.seconds
        return records

    def one(self, call: StepCall, seconds: dict[str, float]) -> dict[str, Any]:
        return self.run([call], seconds)[0].result

    def systems(self, calls: list[StepCall], seconds: dict[str, float]) -> list[Path]:
        """Run a batch of data-producing steps; the deepmd/npy systems they wrote, in order."""
        return _paths([r.result for r in self.run(calls, seconds)], "systems")


def _paths(results: list[dict[str, Any]], key: str) -> list[Path]:
    return [Path(p) for r in results for p in r.get(key, [])]


def converged(history: list[IterationRecord], cfg: DistillConfig) -> bool:
    rule = cfg.convergence
    recent = history[-rule.consecutive:]
    return len(recent) == rule.consecutive and all(r.meets_rule for r in recent)


def _meets_rule(rec: IterationRecord, cfg: DistillConfig) -> bool:
    rule = cfg.convergence
    ok = rec.accurate_ratio >= rule.accurate_ratio and rec.failed_tasks == 0
    if rule.max_rmse_f is not None:
        ok = ok and rec.rmse_f is not None and rec.rmse_f <= rule.max_rmse_f
    return ok


def run_distill(
    cfg: DistillConfig,
    run_dir: Path,
    runner: Runner,
    on_batch: Callable[[str], None] | None = None,
    on_iteration: Callable[[DistillReport], None] | None = None,
    check_inputs: bool = True,
) -> DistillReport:
    """The distillation loop on any engine's runner.

    ``check_inputs=False`` is for replays (dflow's planner re-enters the loop once per level):
    the inputs were checked when the run started, and checking the teacher again would load
    and evaluate it once per level.
    """
    if check_inputs:
        preflight(cfg)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lay = plan.Layout(run_dir)
    report = DistillReport(name=cfg.name, run_dir=str(run_dir), trust_lo=cfg.selection.trust_lo,
                           trust_hi=cfg.selection.trust_hi)
    book = _Book(runner, report, on_batch)
    t_start = time.perf_counter()
    init_s = report.init_seconds
    try:
        # --- the teacher
        ref_structures = book.systems(plan.reference_structures(cfg, lay), init_s)
        reference = book.systems(plan.reference_labels(cfg, lay, ref_structures), init_s)
        call = plan.teacher_model(cfg, lay, reference)
        teacher = Path(book.one(call, init_s)["model"]) if call else Path(cfg.teacher.model)
        report.teacher = str(teacher)
        report.teacher_speed = book.one(plan.speed(cfg, teacher, lay.init / "speed-teacher", "init/speed-teacher"),
                                        init_s)["timesteps_per_second"]
        # --- initial data and the first student(s)
        perturbed = book.systems(plan.initial_structures(cfg, lay), init_s)
        labelled = book.systems(plan.teacher_labels(cfg, teacher, perturbed, lay.init / "label", "init/label"), init_s)
        data = [*cfg.initial_data.systems, *labelled]
        if not data:
            raise StepFailed("the teacher labelled no initial frame (all NaN or dropped)")
        trained = book.run(plan.students(cfg, lay.init, data, None), init_s)
        write_report(report, run_dir)

        for k in range(cfg.max_iterations):
            t_iter = time.perf_counter()
            rec = IterationRecord(iteration=k)
            report.iterations.append(rec)
            secs = rec.seconds
            models = [Path(r.result["compressed"] or r.result["model"]) for r in trained]
            checkpoints = [Path(r.result["checkpoint"]) for r in trained]
            rec.student = str(models[0])
            md_models = [models[0], teacher] if cfg.student.count == 1 else models
            explored = book.run(plan.explore(cfg, lay, k, md_models), secs)
            tasks = [Path(t["path"]) for r in explored for t in r.result["tasks"]]
            sel = book.one(plan.select(cfg, lay, k, tasks), secs)
            rec.n_frames, rec.n_selected = sel["n_frames"], sel["n_selected"]
            rec.accurate_ratio, rec.candidate_ratio = sel["accurate_ratio"], sel["candidate_ratio"]
            rec.failed_ratio, rec.failed_tasks = sel["failed_ratio"], sel["n_failed_tasks"]
            rec.deviations = sel["deviations"]
            it_dir = lay.iteration(k)
            new = book.run(plan.teacher_labels(cfg, teacher, _paths([sel], "candidates"), it_dir / "label",
                                               f"iter-{k:03d}/label"), secs)
            val = book.run(plan.teacher_labels(cfg, teacher, _paths([sel], "validation"), it_dir / "validation",
                                               f"iter-{k:03d}/validation"), secs)
            rec.labels_added = sum(r.result["n_frames"] for r in new)
            rec.labels_dropped = sum(r.result["n_dropped"] for r in new + val)
            new_systems = _paths([r.result for r in new], "systems")
            probe = _paths([r.result for r in val], "systems") or new_systems
            if probe:
                ev = book.one(plan.evaluate(cfg, lay, k, models[0], probe), secs)
                rec.rmse_f, rec.rmse_e_per_atom, rec.n_eval_frames = ev["rmse_f"], ev["rmse_e_per_atom"], ev["n_frames"]
            rec.student_speed = book.one(plan.speed(cfg, models[0], it_dir / "speed", f"iter-{k:03d}/speed"),
                                         secs)["timesteps_per_second"]
            if report.teacher_speed:
                rec.speed_ratio = rec.student_speed / report.teacher_speed
            rec.meets_rule = _meets_rule(rec, cfg)
            data = [*data, *new_systems]
            rec.n_train_frames = count_frames(data)
            if converged(report.iterations, cfg):
                report.converged = True
            elif k + 1 < cfg.max_iterations:
                trained = book.run(plan.students(cfg, it_dir, data, checkpoints), secs)
            rec.wall = time.perf_counter() - t_iter
            report.final_student = rec.student
            report.wall_seconds = time.perf_counter() - t_start
            write_report(report, run_dir)
            if on_iteration:
                on_iteration(report)
            if report.converged:
                break
        report.status = "converged" if report.converged else "max_iterations"
    except Pending:
        report.status = "running"  # a planner stopped at steps still to run (dflow engine)
        raise
    except BaseException:
        report.status = "failed"
        raise
    finally:
        report.wall_seconds = time.perf_counter() - t_start
        write_report(report, run_dir, plots=True)
    return report
