"""``lamflow package RUN``: the delivered student (or ``--version N``, a model version) as a
folder a user takes to production.

A run directory is a workshop (hundreds of steps, checkpoints, logs); what a user deploys is one
model, the facts that say how far to trust it, and an input that runs it. The folder holds:

* ``model.pth`` (``model.pt2`` for DPA-4): the delivered student (compressed where its
  descriptor allows);
* ``model-card.json`` and ``README.md``: type map, teacher, labels used, error against the
  teacher on unseen explored frames, speed against the teacher, the run's outcome, and the
  lamflow, DeePMD-kit and PyTorch versions it was made with, with the model's SHA-256;
* ``conf.lmp``/``conf.extxyz``: the cell its speed was measured on (one its exploration started
  from, where that timing failed); ``in.lammps`` and
  ``md_ase.py``: MD with the model in LAMMPS and in ASE (the tests run both on a packaged model).

A model version (``lamflow version``) is packaged the same way: its newest branch frozen, or the
branch ``--head`` names, compressed where its descriptor allows it (a large atomic model's DPA-3
does not; an se_e2_a or se_atten_v2 version does), and a card with its datasets, frame counts and
scores on the standard datasets (:func:`package_version`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from string import Template

from lamflow.steps.errors import InputError, StepFailed
from lamflow.steps.structures import read_system

from lamflow.flows.core.records import file_digest
from lamflow.flows.pipelines.distill.records import find_report

#: MD the packaged inputs run: short, so that trying them takes seconds
TEMPERATURE, NSTEPS_LAMMPS, NSTEPS_ASE = 300.0, 1000, 100


@dataclass
class ModelCard:
    name: str
    created: str
    model: str
    sha256: str
    type_map: list[str]
    teacher: str
    status: str
    iteration: int
    teacher_labels: int
    rmse_f_vs_teacher: float | None
    rmse_e_per_atom_vs_teacher: float | None
    n_eval_frames: int
    us_per_atom_step: float | None
    speed_vs_teacher: float | None
    teacher_engine: str
    run_dir: str
    versions: dict[str, str]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def package(run: Path, out: Path) -> ModelCard:
    run = Path(run)
    _, report = find_report(run)
    if report.status not in ("converged", "max_iterations", "inaccurate") or not report.final_student:
        raise InputError(str(run), f"the run has not finished (status {report.status}): no student to package")
    it = report.delivering()
    if it is None:
        raise InputError(report.run_dir, "the report names no iteration of its final student")
    student = Path(report.delivered or report.final_student)
    it_dir = Path(report.run_dir) / f"iter-{it.iteration:03d}"
    # the cell its speed was measured on; where that timing failed (the run went on without it),
    # a cell its exploration started from
    timed = it_dir / "speed" / "task.000" / "conf.lmp"
    cell = next((c for c in [timed, *sorted(it_dir.glob("explore/task-*/task.*/conf.lmp"))] if c.is_file()), timed)
    for path in (student, cell):
        if not path.is_file():
            raise InputError(str(path), "missing from the run directory")
    type_map = json.loads((student.parent / "input.json").read_text())["model"]["type_map"] \
        if (student.parent / "input.json").is_file() else None
    if type_map is None:
        from lamflow.steps.inference import load_model

        type_map = list(load_model(student).get_type_map())
    name = _write_folder(out, student, read_system(cell, type_map, "lammps/lmp"), type_map)
    last = report.iterations[-1]
    card = ModelCard(
        name=report.name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=name,
        sha256=file_digest(out / name), type_map=type_map,
        teacher=report.teacher, status=report.status, iteration=it.iteration,
        teacher_labels=last.n_train_frames + sum(i.n_eval_frames for i in report.iterations),
        rmse_f_vs_teacher=it.rmse_f, rmse_e_per_atom_vs_teacher=it.rmse_e_per_atom, n_eval_frames=it.n_eval_frames,
        us_per_atom_step=it.student_us_per_atom_step, speed_vs_teacher=it.speed_ratio,
        teacher_engine=report.teacher_engine, run_dir=report.run_dir,
        versions={p: _version(p) for p in ("lamflow", "deepmd-kit", "torch")})
    (out / "model-card.json").write_text(json.dumps(asdict(card), indent=2) + "\n")
    (out / "README.md").write_text(_readme(card))
    return card


def _check_empty(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise InputError(str(out), "exists and is not empty: give a new folder (-o)")


def _write_folder(out: Path, model: Path, cell, type_map: list[str]) -> str:
    """The model, its cell (``cell``: a dpdata system, first frame used) and the LAMMPS input and
    ASE script that run MD with it; ``out`` must be new or empty (nothing is overwritten).
    Returns the model's name there: ``model`` plus its own suffix, which tells DeePMD-kit how
    to load it (``.pth`` TorchScript, ``.pt2`` DPA-4's exported program)."""
    _check_empty(out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"model{model.suffix}"
    shutil.copyfile(model, out / name)
    first = cell.sub_system([0])
    first.to("lammps/lmp", str(out / "conf.lmp"))
    first.to("ase/structure")[0].write(out / "conf.extxyz")
    templates = resources.files("lamflow.templates").joinpath("package")
    fields = {"model": name, "elements": " ".join(type_map), "temperature": TEMPERATURE}
    (out / "in.lammps").write_text(Template(templates.joinpath("in.lammps").read_text()).substitute(
        fields, nsteps=NSTEPS_LAMMPS))
    (out / "md_ase.py").write_text(Template(templates.joinpath("md_ase.py.tmpl").read_text()).substitute(
        fields, nsteps=NSTEPS_ASE))
    return name


@dataclass
class VersionCard:
    name: str
    created: str
    version: int
    parent: int | None
    model: str
    sha256: str
    head: str
    type_map: list[str]
    branches: dict[str, int]
    numb_steps: int
    checkpoint_sha256: str
    compressed: bool
    compression: str
    scores: list[dict]
    score: float | None
    run_dir: str
    versions: dict[str, str]


def package_version(run: Path, out: Path, number: int | None = None, head: str | None = None) -> VersionCard:
    """Model version ``number`` (default: the current one) of a ``lamflow version`` run: the
    frozen model of its newest branch, or of ``head`` (frozen now from the version's checkpoint),
    compressed when its descriptor is one ``dp compress`` knows."""
    from lamflow.steps.train import COMPRESSIBLE, CompressParams, FreezeParams, branch_descriptor, compress, freeze

    from lamflow.flows.pipelines.version.history import read_history

    history = read_history(run)
    number = number if number is not None else history.current
    if number is None:
        raise InputError(str(run), "has no trained version to package")
    try:
        version = history.get(number)
    except KeyError:
        trained = [v.version for v in history.versions if v.status == "trained"]
        raise InputError("--version", f"{number} is not a trained version of {run} (trained: {trained})") from None
    branch = head or version.added[-1]
    if branch not in version.branches:
        raise InputError("--head", f"'{branch}' is not a branch of version {number} ({sorted(version.branches)})")
    _check_empty(out)  # before freezing: nothing is computed for a folder that cannot be written
    model = Path(version.model)
    scratch = out.parent / f".{out.name}-work"
    shutil.rmtree(scratch, ignore_errors=True)
    if branch != version.added[-1]:
        model = freeze(FreezeParams(checkpoint=Path(version.checkpoint), head=branch, output=scratch / "freeze")).model
    trained_on = json.loads((Path(version.checkpoint).parent / "input.json").read_text())
    kind = branch_descriptor(trained_on, branch)
    compressed, compression = False, f"{kind} descriptor: dp compress does not support it"
    if kind in COMPRESSIBLE:
        try:
            model = compress(CompressParams(model=model, output=scratch / "compress")).model
            compressed, compression = True, f"dp compress of its {kind} descriptor"
        except StepFailed as exc:  # e.g. a DPA-2 that concatenates its type embedding: ship it uncompressed
            compression = f"{kind} descriptor: dp compress failed ({str(exc).strip().splitlines()[-1][:200]})"
    cell = read_system(Path(trained_on["training"]["data_dict"][branch]["training_data"]["systems"][0]), history.type_map)
    name = _write_folder(out, model, cell, history.type_map)
    shutil.rmtree(scratch, ignore_errors=True)
    card = VersionCard(
        name=history.name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), version=number,
        parent=version.parent, model=name, sha256=file_digest(out / name), head=branch,
        type_map=history.type_map, branches=version.branches, numb_steps=version.numb_steps,
        checkpoint_sha256=version.checkpoint_sha256, compressed=compressed, compression=compression,
        scores=[s.model_dump() for s in version.scores],
        score=version.score, run_dir=history.run_dir,
        versions={p: _version(p) for p in ("lamflow", "deepmd-kit", "torch")})
    (out / "model-card.json").write_text(json.dumps(asdict(card), indent=2) + "\n")
    (out / "README.md").write_text(_version_readme(card))
    return card


def _version_readme(card: VersionCard) -> str:
    rows = "\n".join(f"| {s['dataset']} ({s['head']}) | {s['n_frames']} | {s['rmse_f']:.4f} | "
                     f"{1000 * s['rmse_e_per_atom_shifted']:.2f} | {s['normalized_f']:.3f} | {s['normalized_e']:.3f} | "
                     f"{'-' if s['instability'] is None else format(s['instability'], '.2f')} |" for s in card.scores)
    return f"""# {card.name}, version {card.version}: a DeePMD-kit model made by lamflow

| | |
|---|---|
| model | `{card.model}` (branch `{card.head}`, {"compressed" if card.compressed else "not compressed"}: {card.compression}; SHA-256 `{card.sha256[:16]}…`) |
| elements (type_map) | {", ".join(card.type_map)} |
| trained | from version {card.parent if card.parent is not None else "- (from scratch)"}, {card.numb_steps} steps; branches (frames): {", ".join(f"{k} ({v})" for k, v in card.branches.items())} |
| score | {"-" if card.score is None else format(card.score, ".3f")} (LAMBench-style: 0 perfect, 1 no better than the composition alone) |
| made with | {", ".join(f"{k} {v}" for k, v in card.versions.items())}, {card.created} |

| standard dataset (head) | frames | force RMSE eV/Å | energy RMSE meV/atom (shifted) | norm. F | norm. E | NVE instability |
|---|---|---|---|---|---|---|
{rows}

```bash
lmp -in in.lammps      # LAMMPS (pair_style deepmd {card.model}), NVT at {TEMPERATURE:.0f} K on conf.lmp
python md_ase.py       # ASE (deepmd.calculator.DP), the same cell
```
"""


def _readme(card: ModelCard) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return f"""# {card.name}: a DeePMD-kit model distilled by lamflow

| | |
|---|---|
| model | `{card.model}` (SHA-256 `{card.sha256[:16]}…`) |
| elements (type_map) | {", ".join(card.type_map)} |
| teacher | `{card.teacher}` |
| run | {card.status} (iteration {card.iteration} delivered), {card.teacher_labels} teacher labels; `{card.run_dir}` |
| force RMSE vs the teacher | {num(card.rmse_f_vs_teacher, ".4f")} eV/Å on {card.n_eval_frames} explored frames the student never trained on |
| energy RMSE vs the teacher | {num(None if card.rmse_e_per_atom_vs_teacher is None else 1000 * card.rmse_e_per_atom_vs_teacher, ".2f")} meV/atom |
| speed | {num(card.us_per_atom_step, ".2f")} µs/atom-step in LAMMPS, {num(card.speed_vs_teacher, ".1f")}× the teacher (teacher in {card.teacher_engine}) |
| made with | {", ".join(f"{k} {v}" for k, v in card.versions.items())}, {card.created} |

The errors are against the teacher, not against DFT: the student is as good as its teacher
where the exploration went, and nothing is known outside it.

```bash
lmp -in in.lammps      # LAMMPS (pair_style deepmd {card.model}), NVT at {TEMPERATURE:.0f} K on conf.lmp
python md_ase.py       # ASE (deepmd.calculator.DP), the same cell
```
"""
