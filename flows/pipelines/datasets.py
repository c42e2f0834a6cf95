"""Datasets, for every pipeline that trains on labelled data or makes it.

* Reference-labelled data: (optionally) perturbed copies of structures, then ASE-calculator
  labels in chunks. One builder for the teacher's data in ``distill`` and the datasets of
  ``lam`` and ``version``, so a :class:`~lamflow.flows.pipelines.distill.config.LabelSpec`
  means the same in all.
* :class:`Dataset`: a named dataset of a config (given, labelled here or imported), and
  :func:`build`, which makes datasets through the engine's runner.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Protocol

from pydantic import Field, model_validator

from lamflow.steps.calculators import asks_missing_gpu, check_evaluates
from lamflow.steps.check_data import check_or_raise
from lamflow.steps.import_data import ImportParams, ImportSource
from lamflow.steps.label import LabelParams, LabelResult, LabelSettings
from lamflow.steps.perturb import PerturbParams, PerturbSettings
from lamflow.steps.structures import read_atoms

from lamflow.flows.core.book import Book
from lamflow.flows.core.config import RunConfig, Section
from lamflow.flows.core.records import Labelling, StepCall

from .distill.config import LabelSpec

#: seed offset of the datasets' perturbations (a random stream of its own)
DATASET_SEED = 31


def dataset_seed(run_seed: int, name: str) -> int:
    """The perturbation seed of dataset ``name``: a stream per dataset. With one seed for all, a
    held-out set made from the same cells as a training set (``cu3au_test`` beside ``cu3au``)
    was the training set's first frames, and its "held-out" errors were training errors."""
    return run_seed + DATASET_SEED + zlib.crc32(name.encode()) % 1_000_003


class Dataset(Section):
    """One labelled dataset: given (deepmd/npy), labelled here, or imported from DFT outputs."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="also the name of its branch (fitting "
                                                                       "net) in multi-task training")
    systems: list[Path] = Field(default_factory=list, description="labelled deepmd/npy systems")
    label: LabelSpec | None = Field(None, description="make the dataset: perturb structures and label them with an "
                                                      "ASE calculator")
    import_: ImportSource | None = Field(None, alias="import", description="make the dataset: import DFT outputs with "
                                                                         "dpdata")
    weight: float = Field(1.0, gt=0, description="sampling importance in multi-task training (model_prob)")

    @model_validator(mode="after")
    def _one_source(self) -> "Dataset":
        given = [k for k, v in (("systems", self.systems), ("label", self.label), ("import", self.import_)) if v]
        if len(given) != 1:
            raise ValueError(f"dataset '{self.name}': give exactly one of systems, label, import (got {given or 'none'})")
        return self

    def files(self) -> list[tuple[str, Path]]:
        """``(field, path)`` of every file the dataset names, for the run's missing-file check."""
        where = f"datasets.{self.name}"
        found = [(f"{where}.systems[{i}]", p) for i, p in enumerate(self.systems)]
        if self.label:
            found += [(f"{where}.label.structures[{i}]", p) for i, p in enumerate(self.label.structures)]
        if self.import_:
            found += [(f"{where}.import.files[{i}]", p) for i, p in enumerate(self.import_.files)]
        return found

    def check(self, cfg: RunConfig) -> None:
        """What `lamflow dataset check` calls an error, as one line (preflight) for data given as
        they are; labelled data are made by the run and checked when made, their calculator now."""
        type_map = list(cfg.type_map)
        if self.systems:
            check_or_raise(self.systems, type_map, f"datasets.{self.name}.systems")
        if self.import_:
            check_or_raise(self.import_.files, type_map, f"datasets.{self.name}.import", self.import_.fmt)
        if self.label:
            check_labeller(cfg, self.label, type_map, f"datasets.{self.name}.label.calculator")


def check_labeller(cfg: RunConfig, spec: LabelSpec, type_map: list[str], field: str) -> None:
    """``spec``'s calculator evaluates the first frame of each of its structure files (one per
    element set), before any work."""
    probe_calculator(cfg, spec.calculator, spec.calculator_kwargs,
                     [(Path(p).name, read_atoms(Path(p), type_map)[0]) for p in spec.structures], field)


def probe_calculator(cfg: RunConfig, name: str, kwargs: dict, frames: list, field: str,
                     steps: tuple[str, ...] = ("label",)) -> None:
    """:func:`~lamflow.steps.calculators.check_evaluates` on ``frames``, on the machine that
    checks the config. A CUDA device it lacks is probed on its CPU when the ``steps`` that run the
    calculator are sent elsewhere (a login node or laptop submitting to GPU nodes): the elements
    are what is checked."""
    if asks_missing_gpu(kwargs) and any(cfg.resources_for(s).elsewhere() for s in steps):
        kwargs = {**kwargs, "device": "cpu"}
    check_evaluates(name, kwargs, frames, field)


def check_names(datasets: list[Dataset], refs: list[tuple[str, str | None]]) -> list[str]:
    """The datasets' names, after refusing a name given twice and a reference (``(field, name)``)
    to a dataset that does not exist; a validator of every config with ``datasets``."""
    names = [d.name for d in datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"datasets: duplicate names {dup}")
    for field, ref in refs:
        if ref is not None and ref not in names:
            raise ValueError(f"{field}: no dataset named '{ref}' (have {names})")
    return names


class DatasetConfig(Protocol):
    """What :func:`build` needs of a pipeline's config."""

    type_map: list[str]
    seed: int

    def dataset(self, name: str) -> Dataset: ...

    def resources_for(self, step: str): ...


def call(cfg: RunConfig, step: str, params, label: str) -> StepCall:
    """A step call with the resources the config gives that step."""
    return StepCall(step=step, params=params, label=label, resources=cfg.resources_for(step))


def perturb_calls(cfg: RunConfig, spec: LabelSpec, type_map: list[str], out: Path, label: str,
                  seed: int) -> list[StepCall]:
    """The perturbed copies to label, or nothing when the spec labels its structures as they are."""
    if spec.perturbed_frames == 0:
        return []
    return [call(cfg, "perturb", PerturbParams(
        structures=spec.structures, type_map=type_map, output=out, n_per_structure=spec.perturbed_frames,
        seed=seed, **spec.model_dump(include=set(PerturbSettings.model_fields))), label)]


def label_calls(cfg: RunConfig, spec: LabelSpec, type_map: list[str], structures: list[Path], out: Path,
                label: str) -> list[StepCall]:
    """``spec.chunks`` label tasks over ``structures`` (the perturbed copies, or the spec's own)."""
    return [call(cfg, "label", LabelParams(
        structures=structures or spec.structures, type_map=type_map, chunk=c, n_chunks=spec.chunks,
        output=out / f"chunk-{c:03d}", **spec.model_dump(include=set(LabelSettings.model_fields))),
        f"{label}/chunk-{c:03d}") for c in range(spec.chunks)]


def dataset_calls(cfg: DatasetConfig, root: Path, name: str, perturbed: list[Path] | None = None) -> list[StepCall]:
    """The steps that produce dataset ``name`` under ``root/data`` (after ``perturb`` for
    labelled ones)."""
    d, out = cfg.dataset(name), root / "data" / name
    if d.import_:
        return [call(cfg, "import_data", ImportParams(files=d.import_.files, fmt=d.import_.fmt,
                                                      type_map=cfg.type_map, output=out), f"data/{name}")]
    if d.label:
        if d.label.perturbed_frames and perturbed is None:
            return perturb_calls(cfg, d.label, cfg.type_map, root / "data" / f"{name}-structures",
                                 f"data/{name}-structures", dataset_seed(cfg.seed, name))
        return label_calls(cfg, d.label, cfg.type_map, perturbed or [], out, f"data/{name}")
    return []


def build(cfg: DatasetConfig, root: Path, names: list[str], book: Book, seconds: dict[str, float],
          labelling: dict[str, Labelling] | None = None) -> dict[str, list[Path]]:
    """The deepmd/npy systems of the datasets ``names``: given, or made through the engine's
    runner. Independent steps go in one batch per step kind (every perturbation, then every
    label chunk, then every import), not one batch per dataset: they run side by side on every
    engine, and on dflow they are one planning level each instead of two per dataset.
    ``labelling`` gets, per labelled dataset, what its calculator was given and left out."""
    names = list(dict.fromkeys(names))
    given = {n: list(cfg.dataset(n).systems) for n in names if cfg.dataset(n).systems}
    todo = [n for n in names if n not in given]
    perturbing = [n for n in todo if cfg.dataset(n).label and cfg.dataset(n).label.perturbed_frames]
    perturbed = _by_kind(book, {n: dataset_calls(cfg, root, n) for n in perturbing}, seconds)
    made = _by_kind(book, {n: dataset_calls(cfg, root, n, perturbed.get(n)) for n in todo}, seconds, labelling)
    return {n: given[n] if n in given else made[n] for n in names}


def _by_kind(book: Book, calls: dict[str, list[StepCall]], seconds: dict[str, float],
             labelling: dict[str, Labelling] | None = None) -> dict[str, list[Path]]:
    """Each name's calls run, those of one step kind in one batch; per name, the systems they wrote."""
    out: dict[str, list[Path]] = {n: [] for n in calls}
    for kind in dict.fromkeys(c.step for cs in calls.values() for c in cs):
        batch = [(n, c) for n, cs in calls.items() for c in cs if c.step == kind]
        for (name, _), rec in zip(batch, book.run([c for _, c in batch], seconds)):
            out[name] += [Path(p) for p in rec.result.systems]
            if labelling is not None and isinstance(rec.result, LabelResult):
                labelling.setdefault(name, Labelling()).add([rec.result])
    return out


def drop_notes(labelling: dict[str, Labelling]) -> list[str]:
    """One line per dataset whose calculator left out many of its frames, with why: those frames
    are not in the dataset, and a DFT-like labeller that fails on many wants other settings or
    another method."""
    return [f"dataset {name}: its calculator left out {done.lost} of the {done.given} frames it was given "
            f"({done.reasons()}); they are not in the dataset (datasets[].label.calculator_kwargs, or another "
            "method, may label them)" for name, done in labelling.items() if done.many_lost()]
