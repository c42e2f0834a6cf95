"""The LAM pipeline config: datasets → pretrain → finetune → distill, one YAML file.

Any stage can be skipped by giving its product: ``pretrain.model`` (a multi-task checkpoint
trained elsewhere, e.g. an OpenLAM release) skips pretraining; ``finetune.model`` (a finetuned
model) skips both and goes straight to distillation. The ``distill`` section is a distill config
without ``teacher`` and ``type_map`` — the finetuned model is the teacher — and is validated as
one at load time, so a typo in iteration 3's temperatures fails before hours of pretraining.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from lamflow.steps.base import unique_elements
from lamflow.steps.errors import InputError

from .config import DistillConfig, LabelSpec, Resources, Section, _resolve_paths, parse_config, read_mapping
from .errors import one_line

RANDOM = "RANDOM"


class ImportSpec(Section):
    files: list[Path] = Field(min_length=1, description="VASP OUTCAR, CP2K/ABACUS/QE outputs, labelled extxyz")
    fmt: str | None = Field(None, description="dpdata format (default: guessed per file)")


class Dataset(Section):
    """One labelled dataset: given (deepmd/npy), labelled here, or imported from DFT outputs."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="also the pretraining branch name")
    systems: list[Path] = Field(default_factory=list, description="labelled deepmd/npy systems")
    label: LabelSpec | None = None
    import_: ImportSpec | None = Field(None, alias="import")
    weight: float = Field(1.0, gt=0, description="sampling importance in pretraining (model_prob)")

    @model_validator(mode="after")
    def _one_source(self) -> "Dataset":
        given = [k for k, v in (("systems", self.systems), ("label", self.label), ("import", self.import_)) if v]
        if len(given) != 1:
            raise ValueError(f"dataset '{self.name}': give exactly one of systems, label, import (got {given or 'none'})")
        return self


class Pretrain(Section):
    model: Path | None = Field(None, description="a pretrained (multi-task) checkpoint: skip pretraining")
    datasets: list[str] = Field(default_factory=list, description="branches (default: every dataset but the downstream ones)")
    template: str = Field("dpa3", description="multi-task DeePMD-kit template: dpa3, dpa2 or a .json path")
    overrides: dict[str, Any] = Field(default_factory=dict)
    numb_steps: int = Field(2000, ge=1)


class Finetune(Section):
    model: Path | None = Field(None, description="a finetuned model: skip pretrain and finetune")
    dataset: str | None = Field(None, description="the downstream dataset")
    validation: str | None = Field(None, description="dataset to measure the finetuned model on (default: the downstream one)")
    branch: str | None = Field(None, description="upstream fitting net to start from, or RANDOM (default: the first branch)")
    change_bias: bool = Field(False, description="dp change-bias on the downstream data after finetuning")
    numb_steps: int = Field(1000, ge=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


class LamConfig(Section):
    name: str = "lam"
    type_map: list[str] = Field(min_length=1)
    datasets: list[Dataset] = Field(default_factory=list)
    pretrain: Pretrain = Field(default_factory=Pretrain)
    finetune: Finetune
    distill: dict[str, Any] = Field(description="a distill config without teacher/type_map (see `lamflow config --schema`)")
    seed: int = 1
    max_workers: int = Field(1, ge=1)
    resources: dict[str, Resources] = Field(default_factory=dict)
    workdir: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> "LamConfig":
        unique_elements(self.type_map)
        names = [d.name for d in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"datasets: duplicate names {dup}")
        if self.finetune.model is None:
            if self.finetune.dataset is None:
                raise ValueError("finetune: give 'dataset' (the downstream data) or 'model' (a finetuned model)")
            for field, ref in (("finetune.dataset", self.finetune.dataset), ("finetune.validation", self.finetune.validation),
                               *((f"pretrain.datasets[{i}]", n) for i, n in enumerate(self.pretrain.datasets))):
                if ref is not None and ref not in names:
                    raise ValueError(f"{field}: no dataset named '{ref}' (have {names})")
            if self.pretrain.model is None:
                if not self.branches():
                    raise ValueError("pretrain: no dataset to pretrain on (all are downstream); give datasets or pretrain.model")
                branch = self.finetune.branch
                if branch not in (None, RANDOM) and branch not in self.branches():
                    raise ValueError(f"finetune.branch: '{branch}' is not a pretraining branch {self.branches()} or RANDOM")
        for key in ("teacher", "type_map"):
            if key in self.distill:
                raise ValueError(f"distill.{key}: set by the pipeline (the finetuned model is the teacher)")
        return self

    def branches(self) -> list[str]:
        downstream = {self.finetune.dataset, self.finetune.validation}
        return self.pretrain.datasets or [d.name for d in self.datasets if d.name not in downstream]

    def dataset(self, name: str) -> Dataset:
        return next(d for d in self.datasets if d.name == name)

    def resources_for(self, step: str) -> Resources:
        return self.resources.get(step) or self.resources.get("default") or Resources()

    def run_dir(self, workdir: str | Path | None = None) -> Path:
        return Path(workdir or self.workdir or Path(os.environ.get("LAMFLOW_RUNS", "runs")) / self.name)

    def distill_config(self, teacher: Path) -> DistillConfig:
        """The distillation stage as a distill config whose teacher is ``teacher``."""
        raw = {"name": self.name, "type_map": self.type_map, "seed": self.seed, "max_workers": self.max_workers,
               "resources": {k: v.model_dump(exclude_defaults=True) for k, v in self.resources.items()},
               **self.distill, "teacher": {"model": str(teacher)}}
        try:
            return DistillConfig.model_validate(raw)
        except ValidationError as exc:
            raise InputError("distill", one_line(exc)) from None


def parse_lam_config(raw: dict[str, Any], base: Path, source: str = "config") -> LamConfig:
    try:
        resolved = _resolve_paths({k: v for k, v in raw.items() if k != "distill"}, base)
        resolved["distill"] = _resolve_paths(raw.get("distill") or {}, base)
        cfg = LamConfig.model_validate(resolved)
    except ValidationError as exc:
        raise InputError(source, one_line(exc)) from None
    try:
        cfg.distill_config(base / "finetuned-teacher.pth")  # validated now, not after the pretraining
    except InputError as exc:
        raise InputError(source, f"distill.{exc.problem}") from None
    return cfg


def load_lam_config(path: Path) -> LamConfig:
    path = Path(path)
    return parse_lam_config(read_mapping(path), path.resolve().parent, str(path))


def check_lam_files(cfg: LamConfig) -> None:
    needed: list[tuple[str, Path]] = []
    for d in cfg.datasets:
        needed += [(f"datasets.{d.name}.systems[{i}]", p) for i, p in enumerate(d.systems)]
        if d.label:
            needed += [(f"datasets.{d.name}.label.structures[{i}]", p) for i, p in enumerate(d.label.structures)]
        if d.import_:
            needed += [(f"datasets.{d.name}.import.files[{i}]", p) for i, p in enumerate(d.import_.files)]
    for field, path in (("pretrain.model", cfg.pretrain.model), ("finetune.model", cfg.finetune.model)):
        if path is not None:
            needed.append((field, path))
    for field, path in needed:
        if not Path(path).exists():
            raise InputError(field, f"file not found: {path}")
