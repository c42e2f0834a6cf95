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

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lamflow.steps.artifacts import write_json
from lamflow.steps.change_bias import ChangeBiasParams
from lamflow.steps.dp_input import deep_merge
from lamflow.steps.evaluate import EvaluateParams
from lamflow.steps.import_data import ImportParams
from lamflow.steps.label import LabelParams
from lamflow.steps.perturb import PerturbParams
from lamflow.steps.structures import count_frames
from lamflow.steps.train import Branch, FreezeParams, TrainParams

from .distill import DistillReport, _Book, run_distill
from .lam_config import LamConfig, check_lam_files
from .runner import Pending, Runner, StepCall


@dataclass
class LamReport:
    name: str
    run_dir: str
    datasets: dict[str, int] = field(default_factory=dict)  # name → frames
    pretrained: str = ""
    branch_rmse_f: dict[str, float] = field(default_factory=dict)
    finetuned: str = ""
    downstream: dict[str, float] = field(default_factory=dict)  # rmse_f, rmse_e_per_atom (after bias)
    downstream_before_bias: dict[str, float] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    status: str = "running"


def _call(cfg: LamConfig, step: str, params, label: str) -> StepCall:
    return StepCall(step=step, params=params, label=label, resources=cfg.resources_for(step))


def dataset_calls(cfg: LamConfig, root: Path, name: str, perturbed: list[Path] | None = None) -> list[StepCall]:
    """The steps that produce dataset ``name`` (after ``perturb`` for labelled ones)."""
    d, out = cfg.dataset(name), root / "data" / name
    if d.import_:
        return [_call(cfg, "import_data", ImportParams(files=d.import_.files, fmt=d.import_.fmt,
                                                       type_map=cfg.type_map, output=out), f"data/{name}")]
    if d.label:
        spec = d.label
        if spec.perturbed_frames and perturbed is None:
            return [_call(cfg, "perturb", PerturbParams(
                structures=spec.structures, type_map=cfg.type_map, output=root / "data" / f"{name}-structures",
                n_per_structure=spec.perturbed_frames, cell_fraction=spec.cell_fraction,
                atom_distance=spec.atom_distance, seed=cfg.seed + 31), f"data/{name}-structures")]
        return [_call(cfg, "label", LabelParams(
            structures=perturbed or spec.structures, type_map=cfg.type_map, calculator=spec.calculator,
            calculator_kwargs=spec.calculator_kwargs, chunk=c, n_chunks=spec.chunks,
            output=out / f"chunk-{c:03d}"), f"data/{name}/chunk-{c:03d}") for c in range(spec.chunks)]
    return []


def run_lam(cfg: LamConfig, run_dir: Path, runner: Runner, on_batch: Callable[[str], None] | None = None,
            on_iteration: Callable[[DistillReport], None] | None = None, check_inputs: bool = True) -> LamReport:
    """The pipeline; ``check_inputs`` as for :func:`run_distill` (off in a replay)."""
    check_lam_files(cfg)
    run_dir = Path(run_dir).resolve()
    root = run_dir / "lam"
    root.mkdir(parents=True, exist_ok=True)
    report = LamReport(name=cfg.name, run_dir=str(run_dir))
    book = _Book(runner, DistillReport(name=cfg.name, run_dir=str(run_dir)), on_batch)
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
            data: dict[str, list[Path]] = {}
            for name in dict.fromkeys(used):
                d = cfg.dataset(name)
                perturbed = None
                if d.label and d.label.perturbed_frames:
                    perturbed = book.systems(dataset_calls(cfg, root, name), secs)
                data[name] = d.systems or book.systems(dataset_calls(cfg, root, name, perturbed), secs)
            report.datasets = {n: count_frames(s) for n, s in data.items()}
            # --- pretrain
            pretrained = cfg.pretrain.model
            if pretrained is None:
                branches = {n: Branch(train=data[n], weight=cfg.dataset(n).weight) for n in cfg.branches()}
                res = book.one(_call(cfg, "train", TrainParams(
                    output=root / "pretrain", type_map=cfg.type_map, template=cfg.pretrain.template,
                    overrides=cfg.pretrain.overrides, branches=branches, numb_steps=cfg.pretrain.numb_steps,
                    seed=cfg.seed), "pretrain"), secs)
                pretrained = Path(res["checkpoint"])
                heads = book.run([_call(cfg, "freeze", FreezeParams(
                    checkpoint=pretrained, head=n, output=root / "pretrain-heads" / n), f"pretrain-heads/{n}")
                    for n in cfg.branches()], secs)
                evals = book.run([_call(cfg, "evaluate", EvaluateParams(
                    model=h.result["model"], systems=data[n], type_map=cfg.type_map,
                    output=root / "pretrain-heads" / f"{n}.evaluate.json"), f"pretrain-heads/{n}/evaluate")
                    for n, h in zip(cfg.branches(), heads)], secs)
                report.branch_rmse_f = {n: e.result["rmse_f"] for n, e in zip(cfg.branches(), evals)}
            report.pretrained = str(pretrained)
            save()
            # --- finetune
            branch = cfg.finetune.branch or (cfg.branches()[0] if cfg.pretrain.model is None else None)
            downstream = data[cfg.finetune.dataset]
            res = book.one(_call(cfg, "train", TrainParams(
                output=root / "finetune", type_map=cfg.type_map, template=cfg.pretrain.template,
                overrides=deep_merge(cfg.pretrain.overrides, cfg.finetune.overrides), train=downstream, numb_steps=cfg.finetune.numb_steps,
                finetune_from=pretrained, model_branch=branch, seed=cfg.seed), "finetune"), secs)
            teacher = Path(res["model"])
            probe = data[cfg.finetune.validation] if cfg.finetune.validation else downstream

            def measure(model: Path, label: str) -> dict[str, float]:
                ev = book.one(_call(cfg, "evaluate", EvaluateParams(
                    model=model, systems=probe, type_map=cfg.type_map, output=root / f"{label}.json"),
                    label), secs)
                return {"rmse_f": ev["rmse_f"], "rmse_e_per_atom": ev["rmse_e_per_atom"], "n_frames": ev["n_frames"]}

            report.downstream = measure(teacher, "finetune-evaluate")
            if cfg.finetune.change_bias:
                report.downstream_before_bias = report.downstream
                res = book.one(_call(cfg, "change_bias", ChangeBiasParams(
                    model=teacher, systems=downstream, type_map=cfg.type_map, output=root / "change-bias"),
                    "change-bias"), secs)
                teacher = Path(res["model"])
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

