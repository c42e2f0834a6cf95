"""The LAM pipeline config: datasets → pretrain → finetune → distill, one YAML file.

Any stage can be skipped by giving its product: ``pretrain.model`` (a multi-task checkpoint
trained elsewhere, e.g. an OpenLAM release) skips pretraining; ``finetune.model`` (a finetuned
model) skips both and goes straight to distillation. The ``distill`` section is a distill config
without ``teacher`` and ``type_map`` — the finetuned model is the teacher — and is validated as
one at load time, so a typo in iteration 3's temperatures fails before hours of pretraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationError, model_validator

from lamflow.steps.base import TypeMap, check_type_map
from lamflow.steps.dp_input import deep_merge
from lamflow.steps.errors import InputError
from lamflow.steps.train import RANDOM_BRANCH as RANDOM
from lamflow.steps.train import check_input, finetune_branch

from lamflow.flows.core.config import RunConfig, Section, check_exist
from lamflow.flows.core.errors import one_line

from ..datasets import Dataset, check_names
from ..distill.config import DistillConfig
from lamflow.flows.executors import check_executors

from ..distill.preflight import preflight as distill_preflight


class MultiTask(Section):
    """Multi-task training: one shared DPA descriptor, a fitting net per dataset (branch)."""

    datasets: list[str] = Field(default_factory=list, description="branches (default: every dataset but the "
                                                                  "downstream ones)")
    template: str = Field("dpa3", description="multi-task DeePMD-kit template: dpa3, dpa2 or a .json path")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DeePMD-kit input keys deep-merged into the "
                                                                        "template")
    numb_steps: int = Field(2000, ge=1, description="multi-task training steps")


class Pretrain(MultiTask):
    """Multi-task pretraining, or a pretrained model given."""

    model: Path | None = Field(None, description="a pretrained (multi-task) checkpoint: skip pretraining")


class Finetune(Section):
    """Finetuning the pretrained model on the downstream dataset: the distillation's teacher."""

    model: Path | None = Field(None, description="a finetuned model: skip pretrain and finetune")
    dataset: str | None = Field(None, description="the downstream dataset")
    validation: str | None = Field(None, description="dataset to measure the finetuned model on (default: the "
                                                     "downstream one)")
    branch: str | None = Field(None, description="upstream fitting net to start from, or RANDOM (default: the "
                                                 "first branch, of the pretraining or of pretrain.model)")
    change_bias: bool = Field(False, description="dp change-bias on the downstream data after finetuning")
    numb_steps: int = Field(1000, ge=1, description="finetuning steps")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged over pretrain.overrides for "
                                                                        "finetuning")


class LamConfig(RunConfig):
    pipeline_name: ClassVar[str] = "lam"

    name: str = Field("lam", description="the run's name: its default run directory runs/<name>, the workflow's name")
    type_map: TypeMap
    datasets: list[Dataset] = Field(default_factory=list)
    pretrain: Pretrain = Field(default_factory=Pretrain)
    finetune: Finetune
    distill: dict[str, Any] = Field(description="a distill config without teacher/type_map (see `lamflow config "
                                                "--schema`)")

    @model_validator(mode="after")
    def _check(self) -> "LamConfig":
        check_type_map(self.type_map)
        check_names(self.datasets, [])
        if self.finetune.model is None:
            if self.finetune.dataset is None:
                raise ValueError("finetune: give 'dataset' (the downstream data) or 'model' (a finetuned model)")
            check_names(self.datasets, [("finetune.dataset", self.finetune.dataset),
                                        ("finetune.validation", self.finetune.validation),
                                        *((f"pretrain.datasets[{i}]", n) for i, n in enumerate(self.pretrain.datasets))])
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

    def finetune_overrides(self) -> dict[str, Any]:
        """The finetuning input is the pretraining's, with the finetune overrides on top."""
        return deep_merge(self.pretrain.overrides, self.finetune.overrides)

    @classmethod
    def parse(cls, raw: dict[str, Any], base: Path, source: str = "config") -> "LamConfig":
        cfg = super().parse(raw, base, source)
        try:
            cfg.distill_config(base / "finetuned-teacher.pth")  # validated now, not after the pretraining
        except InputError as exc:
            raise InputError(source, f"distill.{exc.problem}") from None
        return cfg

    def distill_config(self, teacher: Path) -> DistillConfig:
        """The distillation stage as a distill config whose teacher is ``teacher``."""
        raw = {"name": self.name, "type_map": self.type_map, "seed": self.seed, "max_workers": self.max_workers,
               "resources": {k: v.model_dump(exclude_defaults=True) for k, v in self.resources.items()},
               **self.distill, "teacher": {"model": str(teacher)}}
        try:
            return DistillConfig.model_validate(raw)
        except ValidationError as exc:
            raise InputError("distill", one_line(exc, model=DistillConfig)) from None


def check_lam_files(cfg: LamConfig) -> None:
    needed: list[tuple[str, Path | None]] = [f for d in cfg.datasets for f in d.files()]
    needed += [("pretrain.model", cfg.pretrain.model), ("finetune.model", cfg.finetune.model)]
    check_exist(needed)


def preflight(cfg: LamConfig) -> None:
    """Every file the pipeline names, the DeePMD-kit inputs of pretraining and finetuning, and
    the distillation stage's own inputs (all but its teacher, which the pipeline makes)."""
    check_lam_files(cfg)
    for d in cfg.datasets:  # what `lamflow dataset check` calls an error stops the run before any work
        d.check(cfg)
    check_executors(cfg)
    if cfg.finetune.model is None:
        if cfg.pretrain.model is None:
            check_input(cfg.pretrain.template, cfg.pretrain.overrides, cfg.type_map, cfg.pretrain.numb_steps,
                        branches=cfg.branches(), where="pretrain.overrides")
        check_input(cfg.pretrain.template, cfg.finetune_overrides(), cfg.type_map, cfg.finetune.numb_steps,
                    where="finetune.overrides")
        if cfg.pretrain.model is not None:  # a branch the given checkpoint lacks fails now, not after the datasets
            try:
                finetune_branch(cfg.pretrain.model, cfg.finetune.branch)
            except InputError as exc:
                raise InputError("finetune.branch" if exc.where == "model_branch" else exc.where, exc.problem) from None
    distill = cfg.distill_config(cfg.finetune.model or Path("finetuned-teacher.pth"))
    try:
        distill_preflight(distill, with_teacher=cfg.finetune.model is not None)
    except InputError as exc:
        raise InputError(exc.where if "/" in exc.where else f"distill.{exc.where}", exc.problem) from None
