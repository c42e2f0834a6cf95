"""The full LAM pipeline, written once for every engine:

    datasets   label (perturb → ASE calculator, in chunks) | import (dpdata) | given
    pretrain   multi-task ``dp --pt train``: one shared descriptor, a fitting net per dataset,
               sampled by ``weight`` (model_prob) → per-branch RMSE (frozen head → evaluate)
    finetune   ``dp --pt train --finetune`` from a branch (or RANDOM) on the downstream data
               → optional ``dp change-bias`` → downstream RMSE
    distill    the distillation loop with the finetuned model as teacher (``RUN/distill``)

Stages whose product the config gives are skipped. Every step goes through the engine's
runner, so the pipeline resumes like the loop: finished steps are read back from their records.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lamflow.steps.artifacts import write_json
from lamflow.steps.change_bias import ChangeBiasParams, ChangeBiasResult
from lamflow.steps.evaluate import EvaluateParams, EvaluateResult
from lamflow.steps.structures import count_frames
from lamflow.steps.train import Branch, FreezeParams, TrainParams, TrainResult

from lamflow.flows.core.book import Book
from lamflow.flows.core.records import Labelling
from lamflow.flows.core.runner import Pending, Runner

from ..datasets import build, drop_notes
from ..datasets import call as _call
from ..distill.loop import run_distill
from ..distill.records import DistillReport
from .config import LamConfig, check_lam_files

@dataclass
class LamReport:
    name: str
    run_dir: str
    datasets: dict[str, int] = field(default_factory=dict)  # name → frames
    labelling: dict[str, Labelling] = field(default_factory=dict)  # labelled dataset → given, left out
    pretrained: str = ""
    branch_rmse_f: dict[str, float] = field(default_factory=dict)
    finetuned: str = ""
    downstream: dict[str, float] = field(default_factory=dict)  # rmse_f, rmse_e_per_atom (after bias)
    downstream_before_bias: dict[str, float] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    status: str = "running"


def run_lam(cfg: LamConfig, run_dir: Path, runner: Runner, on_batch: Callable[[str], None] | None = None,
            on_iteration: Callable[[DistillReport], None] | None = None, check_inputs: bool = True) -> LamReport:
    """The pipeline; ``check_inputs`` as for :func:`run_distill` (off in a replay)."""
    if check_inputs:
        from .config import preflight

        preflight(cfg)
    else:
        check_lam_files(cfg)
    run_dir = Path(run_dir).resolve()
    root = run_dir / "lam"
    root.mkdir(parents=True, exist_ok=True)
    report = LamReport(name=cfg.name, run_dir=str(run_dir))
    book = Book(runner, on_batch)
    secs = report.seconds
    t0 = time.perf_counter()

    def save() -> None:
        report.wall_seconds = time.perf_counter() - t0
        write_json(run_dir / "lam-report.json", asdict(report))

    try:
        teacher = cfg.finetune.model
        if teacher is None:
            # --- datasets (only those a stage uses)
            used = [*([] if cfg.pretrain.model else cfg.branches()), cfg.finetune.dataset,
                    *([cfg.finetune.validation] if cfg.finetune.validation else [])]
            data = build(cfg, root, used, book, secs, report.labelling)
            report.datasets = {n: count_frames(s) for n, s in data.items()}
            # --- pretrain
            pretrained = cfg.pretrain.model
            if pretrained is None:
                branches = {n: Branch(train=data[n], weight=cfg.dataset(n).weight) for n in cfg.branches()}
                pre: TrainResult = book.one(_call(cfg, "train", TrainParams(compress=False, 
                    output=root / "pretrain", type_map=cfg.type_map, template=cfg.pretrain.template,
                    overrides=cfg.pretrain.overrides, branches=branches, numb_steps=cfg.pretrain.numb_steps,
                    seed=cfg.seed), "pretrain"), secs)
                pretrained = pre.checkpoint
                heads = book.run([_call(cfg, "freeze", FreezeParams(
                    checkpoint=pretrained, head=n, output=root / "pretrain-heads" / n), f"pretrain-heads/{n}")
                    for n in cfg.branches()], secs)
                evals = book.run([_call(cfg, "evaluate", EvaluateParams(
                    model=h.result.model, systems=data[n], type_map=cfg.type_map,
                    output=root / "pretrain-heads" / f"{n}.evaluate.json"), f"pretrain-heads/{n}/evaluate")
                    for n, h in zip(cfg.branches(), heads)], secs)
                report.branch_rmse_f = {n: e.result.rmse_f for n, e in zip(cfg.branches(), evals)}
            report.pretrained = str(pretrained)
            save()
            # --- finetune
            branch = cfg.finetune.branch or (cfg.branches()[0] if cfg.pretrain.model is None else None)
            downstream = data[cfg.finetune.dataset]
            tuned: TrainResult = book.one(_call(cfg, "train", TrainParams(compress=False, 
                output=root / "finetune", type_map=cfg.type_map, template=cfg.pretrain.template,
                overrides=cfg.finetune_overrides(), train=downstream, numb_steps=cfg.finetune.numb_steps,
                finetune_from=pretrained, model_branch=branch, seed=cfg.seed), "finetune"), secs)
            teacher = tuned.model
            probe = data[cfg.finetune.validation] if cfg.finetune.validation else downstream

            def measure(model: Path, label: str) -> dict[str, float]:
                ev: EvaluateResult = book.one(_call(cfg, "evaluate", EvaluateParams(
                    model=model, systems=probe, type_map=cfg.type_map, output=root / f"{label}.json"),
                    label), secs)
                return {"rmse_f": ev.rmse_f, "rmse_e_per_atom": ev.rmse_e_per_atom, "n_frames": ev.n_frames}

            report.downstream = measure(teacher, "finetune-evaluate")
            if cfg.finetune.change_bias:
                report.downstream_before_bias = report.downstream
                biased: ChangeBiasResult = book.one(_call(cfg, "change_bias", ChangeBiasParams(
                    model=teacher, systems=downstream, type_map=cfg.type_map, output=root / "change-bias"),
                    "change-bias"), secs)
                teacher = biased.model
                report.downstream = measure(teacher, "change-bias-evaluate")
        report.finetuned = str(teacher)
        save()
        # --- distill
        distilled = run_distill(cfg.distill_config(Path(teacher)), run_dir / "distill", runner, on_batch,
                                on_iteration, check_inputs)
        report.distill = {"status": distilled.status, "final_student": distilled.final_student,
                          "report": str(run_dir / "distill" / "report.json"),
                          "rmse_f": distilled.iterations[-1].rmse_f if distilled.iterations else None,
                          "speed_ratio": distilled.iterations[-1].speed_ratio if distilled.iterations else None}
        report.status = distilled.status
    except Pending:
        report.status = "running"
        raise
    except BaseException:
        report.status = "failed"
        raise
    finally:
        save()
    return report



def read_report(run_dir: Path) -> LamReport:
    return LamReport(**json.loads((Path(run_dir) / "lam-report.json").read_text()))


def table(report: LamReport) -> Any:
    """The distillation stage's iteration table; None before that stage has a report."""
    from lamflow.flows.report.distill import table as distill_table

    path = report.distill.get("report")
    return distill_table(DistillReport.from_json(Path(path))) if path and Path(path).is_file() else None


def summarize(console: Any, cfg: LamConfig, report: LamReport) -> None:
    """The pipeline's outcome in the terminal, after its progress."""
    console.print()
    for name, rmse in report.branch_rmse_f.items():
        console.print(f"pretrained branch {name}: force RMSE {rmse:.4f} eV/Å")
    if report.downstream:
        on = (f"on {cfg.finetune.validation}" if cfg.finetune.validation else
              "on its own training frames (finetune.validation names a held-out dataset)")
        console.print(f"finetuned on {cfg.finetune.dataset}: force RMSE {report.downstream['rmse_f']:.4f} eV/Å, "
                      f"energy {report.downstream['rmse_e_per_atom'] * 1000:.2f} meV/atom, {on}")
    for why in drop_notes(report.labelling):
        console.print(f"[yellow]note[/yellow]: {why}", highlight=False)
    d = report.distill
    console.print(f"distill: {d.get('status')}; student {d.get('final_student')}")
    console.print(f"report: {Path(report.run_dir) / 'lam-report.json'} and {d.get('report')}")
