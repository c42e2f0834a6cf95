"""Model versions, written once for every engine:

    version 1   datasets of ``pretrain`` built and verified (check_data) → multi-task training
    version N+1 the next dataset built and verified → if it passed, ``dp --pt train --finetune``
                from version N with a new branch (the earlier branches resume on their data
                for a ``replay`` share of the steps) → the new branch frozen
    every version: each benchmark scored from the checkpoint with its head (evaluate, LAMBench's
                normalised errors), and NVE MD of its first frame with that head frozen (stability);
                its MD speed on a supercell of the first benchmark (efficiency)

Verification is a step like any other, so its verdict is recorded and the pipeline's shape
(which datasets became versions) replays identically on dflow's planner and after a resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from lamflow.steps.check_data import CheckDataParams
from lamflow.steps.evaluate import EvaluateParams
from lamflow.steps.speed import SpeedResult
from lamflow.steps.stability import StabilityParams, StabilityResult
from lamflow.steps.structures import count_frames
from lamflow.steps.train import Branch, FreezeParams, TrainParams, TrainResult

from lamflow.flows.core.book import Book
from lamflow.flows.core.records import file_digest
from lamflow.flows.core.runner import Pending, Runner

from ..datasets import build, drop_notes
from ..datasets import call as _call
from .config import NewVersion, VersionConfig, check_files
from .history import History, Rejected, Score, Version, read_history


def _branches(cfg: VersionConfig, data: dict[str, list[Path]], old: dict[str, Branch],
              spec: NewVersion) -> dict[str, Branch]:
    """The branches of the version that adds ``spec.dataset``: the earlier ones resume and share
    ``replay`` of the steps in proportion to their datasets' weights; the new one takes the rest
    and starts from ``start_from``'s fitting net."""
    total = sum(cfg.dataset(n).weight for n in old)
    resumed = {n: Branch(train=b.train, weight=spec.replay * cfg.dataset(n).weight / total) for n, b in old.items()}
    head = spec.start_from or next(iter(old))
    return {**resumed, spec.dataset: Branch(train=data[spec.dataset], weight=1.0 - spec.replay, finetune_head=head)}


def run_versions(cfg: VersionConfig, run_dir: Path, runner: Runner, on_batch: Callable[[str], None] | None = None,
                 on_iteration: Callable[[Any], None] | None = None, check_inputs: bool = True) -> History:
    """The pipeline; ``check_inputs`` as for the other pipelines (off in a replay). Progress is
    per step (``on_batch``); there are no iterations (``on_iteration`` is not called)."""
    if check_inputs:
        from .config import preflight

        preflight(cfg)
    else:
        check_files(cfg)
    run_dir = Path(run_dir).resolve()
    root = run_dir / "versions"
    root.mkdir(parents=True, exist_ok=True)
    history = History(name=cfg.name, run_dir=str(run_dir), type_map=cfg.type_map)
    book = Book(runner, on_batch)
    secs = history.seconds
    branches: dict[str, Branch] = {}
    checkpoint: Path | None = None
    stages: list[tuple[list[str], NewVersion | None]] = [(list(cfg.pretrain.datasets), None)]
    stages += [([v.dataset], v) for v in cfg.versions]
    t0 = time.perf_counter()
    try:
        # every dataset made and verified before the first version: independent steps, one batch
        # per step kind (a dataset that arrives later is made when the config names it, the
        # versions before it are read back)
        trained = [n for added, _ in stages for n in added]
        data = build(cfg, root, [*(b.dataset for b in cfg.benchmarks), *trained], book, secs, history.labelling)
        bench = {b.dataset: data[b.dataset] for b in cfg.benchmarks}
        problems = _verify(cfg, root / "checks", book, secs, {n: data[n] for n in trained})
        for added, spec in stages:
            if spec is not None and checkpoint is None:  # version 1 was refused: nothing to add to
                history.rejected.append(Rejected(dataset=spec.dataset, problems=["no version 1 to add it to"]))
                continue
            refused = [Rejected(dataset=n, problems=problems[n]) for n in added if problems[n]]
            if refused:
                history.rejected += refused
                history.save(run_dir)
                continue
            number = (history.current or 0) + 1
            version = Version(version=number, status="failed", parent=history.current, added=added,
                              branches={}, numb_steps=spec.numb_steps if spec else cfg.pretrain.numb_steps,
                              replay=spec.replay if spec else None)
            history.versions.append(version)
            try:
                checkpoint, branches = _train(cfg, root / f"v{number:03d}", book, secs, data, branches, checkpoint,
                                              spec, version)
                version.scores = _scores(cfg, root / f"v{number:03d}" / "benchmarks", book, secs, bench, checkpoint,
                                         set(branches))
                _efficiency(cfg, root / f"v{number:03d}" / "efficiency", book, secs, bench, version)
            except Pending:
                history.versions.pop()
                raise
            except BaseException as exc:
                version.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                raise
            version.status = "trained"
            history.current = number
            history.save(run_dir)
        history.status = "done"
    except Pending:
        history.status = "running"
        raise
    except BaseException:
        history.status = "failed"
        raise
    finally:
        history.wall_seconds = time.perf_counter() - t0
        history.save(run_dir)
    return history


def _verify(cfg: VersionConfig, out: Path, book: Book, secs: dict[str, float],
            data: dict[str, list[Path]]) -> dict[str, list[str]]:
    """Per dataset of ``data``, why verification refuses it (``lamflow dataset check``'s errors;
    empty: it passed)."""
    checks = book.run([_call(cfg, "check_data", CheckDataParams(
        paths=systems, type_map=cfg.type_map, output=out / f"{name}.json"), f"checks/{name}")
        for name, systems in data.items()], secs)
    return {name: [] if rec.result.passed else [p.line() for p in rec.result.errors]
            for name, rec in zip(data, checks)}


def _train(cfg: VersionConfig, out: Path, book: Book, secs: dict[str, float], data: dict[str, list[Path]],
           old: dict[str, Branch], checkpoint: Path | None, spec: NewVersion | None,
           version: Version) -> tuple[Path, dict[str, Branch]]:
    """Train one version; its checkpoint and branches. Version 1 trains from scratch; a later
    version fine-tunes the previous checkpoint with one more branch."""
    if spec is None:
        branches = {n: Branch(train=data[n], weight=cfg.dataset(n).weight) for n in version.added}
        params = TrainParams(compress=False, output=out / "train", type_map=cfg.type_map,
                             template=cfg.pretrain.template, overrides=cfg.pretrain.overrides, branches=branches,
                             numb_steps=cfg.pretrain.numb_steps, seed=cfg.seed, head=version.added[-1])
    else:
        branches = _branches(cfg, data, old, spec)
        params = TrainParams(compress=False, output=out / "train", type_map=cfg.type_map,
                             template=cfg.pretrain.template, overrides=cfg.version_overrides(spec),
                             branches=branches, numb_steps=spec.numb_steps, seed=cfg.seed, finetune_from=checkpoint,
                             head=spec.dataset)
    version.branches = {n: count_frames(b.train) for n, b in branches.items()}
    trained: TrainResult = book.one(_call(cfg, "train", params, f"v{version.version:03d}/train"), secs)
    version.checkpoint, version.checkpoint_sha256 = str(trained.checkpoint), file_digest(trained.checkpoint)
    version.model, version.model_sha256 = str(trained.model), file_digest(trained.model)
    return trained.checkpoint, branches


def _scores(cfg: VersionConfig, out: Path, book: Book, secs: dict[str, float], bench: dict[str, list[Path]],
            checkpoint: Path, heads: set[str]) -> list[Score]:
    """Every benchmark this version has the head for: its errors, from the checkpoint through
    that head, and the NVE run of its first frame with that head frozen for LAMMPS."""
    todo = [b for b in cfg.benchmarks if cfg.benchmark_head(b) in heads]
    version = out.parent.name
    evals = book.run([_call(cfg, "evaluate", EvaluateParams(
        model=checkpoint, head=cfg.benchmark_head(b), systems=bench[b.dataset], type_map=cfg.type_map,
        output=out / f"{cfg.benchmark_name(b)}.json"), f"{version}/benchmarks/{cfg.benchmark_name(b)}")
        for b in todo], secs)
    runs: list[StabilityResult | None] = [None] * len(todo)
    if cfg.stability is not None and todo:
        used = list(dict.fromkeys(cfg.benchmark_head(b) for b in todo))
        frozen = book.run([_call(cfg, "freeze", FreezeParams(checkpoint=checkpoint, head=h, output=out / "heads" / h),
                                 f"{version}/heads/{h}") for h in used], secs)
        models = {h: f.result.model for h, f in zip(used, frozen)}
        runs = [r.result for r in book.run([_call(cfg, "stability", StabilityParams(
            model=models[cfg.benchmark_head(b)], structure=bench[b.dataset][0], type_map=cfg.type_map,
            output=out / f"{cfg.benchmark_name(b)}-nve", seed=cfg.seed, **cfg.stability.model_dump()),
            f"{version}/benchmarks/{cfg.benchmark_name(b)}-nve") for b in todo], secs)]
    return [Score.of(b.dataset, cfg.benchmark_head(b), ev.result, md) for b, ev, md in zip(todo, evals, runs)]


def _efficiency(cfg: VersionConfig, out: Path, book: Book, secs: dict[str, float], bench: dict[str, list[Path]],
                version: Version) -> None:
    """The version's MD speed on a supercell of the first benchmark's first frame (any head costs
    the same: the branches share the descriptor, which is most of the work)."""
    if cfg.efficiency is None or not cfg.benchmarks:
        return
    speed: SpeedResult = book.one(_call(cfg, "speed", cfg.efficiency.params(
        model=Path(version.model), structure=bench[cfg.benchmarks[0].dataset][0], type_map=cfg.type_map,
        output=out),
        f"v{version.version:03d}/efficiency"), secs)
    version.us_per_atom_step, version.efficiency_atoms = speed.us_per_atom_step, speed.natoms


def read_report(run_dir: Path) -> History:
    return read_history(run_dir)


def summarize(console: Any, cfg: VersionConfig, report: History) -> None:
    """The history as a table after the run's progress."""
    from lamflow.flows.report.versions import history_table, refusals

    console.print()
    console.print(history_table(report))
    for line in refusals(report):
        console.print(line, style="yellow", markup=False)
    for why in drop_notes(report.labelling):
        console.print(f"[yellow]note[/yellow]: {why}", highlight=False)
    console.print(f"current version: {report.current}; history: {Path(report.run_dir) / 'versions.json'}")
