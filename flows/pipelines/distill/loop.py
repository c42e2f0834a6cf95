"""The distillation loop, written once for every engine.

    prepare:      teacher (train / freeze / as given) → initial data (perturb → teacher-label)
                  → student 0
    iteration k:  explore (student k drives, teacher compared) → select → teacher-label
                  → evaluate student k on unseen explored frames → converged? → student k+1
    final:        (student.numb_steps_final) the last measured student trained longer on every
                  label, measured on every iteration's validation frames → delivered

The student that is delivered is always one whose error was measured: convergence is judged on
student k's own exploration, before any retraining. Engines differ only in the
:class:`~lamflow.flows.core.runner.Runner` they pass in.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from lamflow.steps.errors import StepFailed
from lamflow.steps.evaluate import EvaluateResult
from lamflow.steps.select import SelectResult
from lamflow.steps.speed import SpeedResult
from lamflow.steps.structures import count_frames
from lamflow.steps.train import FreezeResult, TrainResult

from lamflow.flows.core.book import Book
from lamflow.flows.core.runner import Pending, Runner
from lamflow.flows.report.distill import write_report

from . import plan
from .config import DistillConfig
from .preflight import preflight
from .records import DistillReport, FinalRecord, IterationRecord


def converged(history: list[IterationRecord], cfg: DistillConfig) -> bool:
    rule = cfg.convergence
    recent = history[-rule.consecutive:]
    return len(recent) == rule.consecutive and all(r.meets_rule for r in recent)


def meets_rule(history: list[IterationRecord], cfg: DistillConfig) -> bool:
    """Whether the last iteration of ``history`` meets the rule (an adaptive level is judged
    against the previous iteration's, so the first iteration never meets it)."""
    rule, rec = cfg.convergence, history[-1]
    if cfg.selection.adaptive:
        before = history[-2].trust_lo if len(history) > 1 else None
        ok = before is not None and rec.trust_lo is not None and abs(rec.trust_lo - before) < rule.level_tolerance
    else:
        ok = rec.accurate_ratio >= rule.accurate_ratio
    ok = ok and rec.failed_tasks == 0
    if not cfg.student.numb_steps_final:  # else the final student is judged on it
        ok = ok and within_max_rmse(rec.rmse_f, cfg)
    return ok


def within_max_rmse(rmse_f: float | None, cfg: DistillConfig) -> bool:
    """The force RMSE on unseen frames is within ``convergence.max_rmse_f`` (where one is set)."""
    limit = cfg.convergence.max_rmse_f
    return limit is None or (rmse_f is not None and rmse_f <= limit)


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
    replay = getattr(runner, "replay", False)  # a planner's replay draws no plots
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lay = plan.Layout(run_dir)
    selection = cfg.selection
    report = DistillReport(name=cfg.name, run_dir=str(run_dir), trust_hi=selection.trust_hi,
                           trust_lo=0.0 if selection.adaptive else selection.trust_lo,
                           trust_lo_adaptive=selection.adaptive)
    book = Book(runner, on_batch)
    t_start = time.perf_counter()
    init_s = report.init_seconds

    def wall(since: float, mark: int = 0) -> float:
        """Wall seconds since ``since``; in a planner's replay (a static engine, one process per
        level) from the first start to the last finish of the steps, taken from their records."""
        return book.span(mark) if replay else time.perf_counter() - since

    def save(plots: bool = False) -> None:
        report.cached_steps, report.step_seconds = book.cached_steps, book.step_seconds
        report.compute_seconds = book.compute_seconds
        write_report(report, run_dir, plots=plots and not replay)

    def final(report: DistillReport, data: list[Path], checkpoint: Path, validation: list[Path]) -> None:
        """The long final training of the last measured student, measured on unseen frames and
        judged on ``max_rmse_f`` (the iterations' students are short-trained explorers)."""
        rec = report.final = FinalRecord(student="", numb_steps=cfg.student.numb_steps_final,
                                         n_train_frames=count_frames(data))
        t_final, mark = time.perf_counter(), len(book.intervals)
        made: TrainResult = book.one(plan.final_student(cfg, lay, data, checkpoint), rec.seconds)
        rec.student, rec.fit_rmse_f = str(made.compressed or made.model), made.fit_rmse_f
        if validation:
            ev: EvaluateResult = book.one(plan.evaluate_final(cfg, lay, Path(rec.student), validation), rec.seconds)
            rec.rmse_f, rec.rmse_e_per_atom, rec.n_eval_frames = ev.rmse_f, ev.rmse_e_per_atom, ev.n_frames
        rec.seconds["wall"] = wall(t_final, mark)
        rec.meets_rule = within_max_rmse(rec.rmse_f, cfg)
        report.final_student = rec.student

    try:
        # --- the teacher
        ref_structures = book.systems(plan.reference_structures(cfg, lay), init_s)
        reference = book.systems(plan.reference_labels(cfg, lay, ref_structures), init_s)
        call = plan.teacher_model(cfg, lay, reference)
        made: TrainResult | FreezeResult | None = None if call is None else book.one(call, init_s)
        teacher = plan.teacher_ref(cfg, None if made is None else made.model)
        report.teacher = teacher.name
        teacher_speed: SpeedResult = book.one(
            plan.teacher_speed(cfg, teacher, lay.init / "speed-teacher", "init/speed-teacher"), init_s)
        report.teacher_speed, report.teacher_engine = teacher_speed.timesteps_per_second, teacher_speed.engine
        report.teacher_us_per_atom_step = teacher_speed.us_per_atom_step
        report.speed_atoms, report.teacher_speed_error = teacher_speed.natoms, teacher_speed.error
        # --- initial data and the first student(s)
        perturbed = book.systems(plan.initial_structures(cfg, lay), init_s)
        first = [r.result for r in book.run(plan.teacher_labels(cfg, teacher, perturbed, lay.init / "label",
                                                                 "init/label"), init_s)]
        report.labelling.add(first)
        labelled = [p for r in first for p in r.systems]
        md_frames = book.systems(plan.teacher_md(cfg, lay, teacher), init_s)
        data = [*cfg.initial_data.systems, *labelled, *md_frames]
        if not data:
            raise StepFailed("the teacher labelled no initial frame (all NaN or dropped)")
        trained: list[TrainResult] = [r.result for r in book.run(plan.students(cfg, lay.init, data, None), init_s)]
        save()

        validation: list[Path] = []  # every iteration's validation frames: no student trains on them
        for k in range(cfg.max_iterations):
            t_iter, mark = time.perf_counter(), len(book.intervals)
            rec = IterationRecord(iteration=k)
            report.iterations.append(rec)
            secs = rec.seconds
            models = [t.compressed or t.model for t in trained]
            checkpoints = [t.checkpoint for t in trained]
            rec.student = str(models[0])
            fits = [t.fit_rmse_f for t in trained if t.fit_rmse_f is not None]
            rec.fit_rmse_f = max(fits) if fits else None
            # one student: the DeePMD-kit teacher runs beside it and the deviation is the real error
            md_models = [models[0], teacher.lammps] if cfg.student.count == 1 else models
            explored = book.run(plan.explore(cfg, lay, k, md_models), secs)
            tasks = [t.path for r in explored for t in r.result.tasks]
            sel: SelectResult = book.one(plan.select(cfg, lay, k, tasks), secs)
            rec.n_frames, rec.n_selected = sel.n_frames, sel.n_selected
            rec.accurate_ratio, rec.candidate_ratio = sel.accurate_ratio, sel.candidate_ratio
            rec.failed_ratio, rec.failed_tasks, rec.trust_lo = sel.failed_ratio, sel.n_failed_tasks, sel.trust_lo
            rec.n_broken = sel.n_broken
            rec.deviations = str(sel.deviations)
            it_dir = lay.iteration(k)
            new, val = book.together([
                plan.teacher_labels(cfg, teacher, sel.candidates, it_dir / "label", f"iter-{k:03d}/label"),
                plan.teacher_labels(cfg, teacher, sel.validation, it_dir / "validation", f"iter-{k:03d}/validation"),
            ], secs)
            rec.labels_added = sum(r.result.n_frames for r in new)
            report.labelling.add([r.result for r in new + val])
            rec.labels_dropped = sum(r.result.n_dropped for r in new + val)
            new_systems = [p for r in new for p in r.result.systems]
            validation += [p for r in val for p in r.result.systems]
            probe = [p for r in val for p in r.result.systems] or new_systems
            if probe:
                ev: EvaluateResult = book.one(plan.evaluate(cfg, lay, k, models[0], probe), secs)
                rec.rmse_f, rec.rmse_e_per_atom, rec.n_eval_frames = ev.rmse_f, ev.rmse_e_per_atom, ev.n_frames
            speed: SpeedResult = book.one(plan.speed(cfg, models[0], it_dir / "speed", f"iter-{k:03d}/speed"), secs)
            rec.student_speed, rec.student_us_per_atom_step = speed.timesteps_per_second, speed.us_per_atom_step
            rec.speed_error = speed.error
            if report.teacher_speed and rec.student_speed:
                rec.speed_ratio = rec.student_speed / report.teacher_speed
            rec.meets_rule = meets_rule(report.iterations, cfg)
            data = [*data, *new_systems]
            rec.n_train_frames = count_frames(data)
            if converged(report.iterations, cfg):
                report.converged = True
            elif k + 1 < cfg.max_iterations:
                trained = [r.result for r in book.run(plan.students(cfg, it_dir, data, checkpoints), secs)]
            rec.wall = wall(t_iter, mark)
            report.final_student = rec.student
            report.wall_seconds = wall(t_start)
            save()
            if on_iteration:
                on_iteration(report)
            if report.converged:
                break
        explored = report.converged
        if cfg.student.numb_steps_final and report.iterations:
            final(report, data, checkpoints[0], validation)
            report.converged = explored and report.final.meets_rule
        report.status = "converged" if report.converged else "inaccurate" if explored else "max_iterations"
        if report.final_student:
            delivered = lay.delivered(Path(report.final_student))
            shutil.copyfile(report.final_student, delivered)
            report.delivered = str(delivered)
    except Pending:
        report.status = "running"  # a planner stopped at steps still to run (dflow engine)
        raise
    except BaseException:
        report.status = "failed"
        raise
    finally:
        report.wall_seconds = wall(t_start)
        save(plots=True)
    return report
