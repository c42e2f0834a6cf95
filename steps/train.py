"""train — pretrain (multi-task), finetune and student training with ``dp --pt``, then freeze
and compress.

One step for the three trainings, because they differ only in the ``dp train`` flags and in how
the input is rendered:

* **pretrain**: ``branches`` given → one shared descriptor, one fitting net per dataset,
  ``model_prob`` from the branch weights (DPA-2 paper, multi-task pretraining).
* **finetune**: ``finetune_from`` a (multi-task) checkpoint, ``model_branch`` picks the upstream
  fitting net or ``RANDOM`` re-initialises it.
* **student**: a small model from a template, optionally initialised from the previous
  iteration's student (``init_model``), so each distillation iteration trains for fewer steps.

The rendered ``input.json`` stays next to the model for provenance, with ``lcurve.out`` and logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from .base import Params

from . import dp_input
from .artifacts import atomic_dir, write_json
from .errors import InputError, StepFailed
from .runtime import dp_command, library_env, run_logged
from .structures import check_systems

#: descriptors whose PyTorch implementation supports ``dp compress``.
COMPRESSIBLE = {"se_e2_a", "se_a", "se_e2_r", "se_r", "se_e3", "se_at", "se_atten_v2", "se_atten",
                "dpa1", "dpa2", "dpa4c", "hybrid"}


class Branch(Params):
    """One dataset of a multi-task pretraining."""

    train: list[Path] = Field(min_length=1)
    valid: list[Path] = Field(default_factory=list)
    weight: float = Field(1.0, gt=0)


class TrainParams(Params):
    output: Path
    type_map: list[str] = Field(min_length=1)
    template: str = Field(description="DeePMD-kit template name or .json path (each config role has its default)")
    overrides: dict[str, Any] = Field(default_factory=dict)
    train: list[Path] = Field(default_factory=list)
    valid: list[Path] = Field(default_factory=list)
    branches: dict[str, Branch] = Field(default_factory=dict)
    numb_steps: int = Field(ge=1, description="training steps (each config role has its default)")
    seed: int = 1
    finetune_from: Path | None = None
    model_branch: str | None = None
    use_pretrain_script: bool = True
    init_model: Path | None = None
    head: str | None = None
    compress: bool = Field(description="dp compress the frozen model (each config role has its default)")

    @model_validator(mode="after")
    def _one_kind(self) -> "TrainParams":
        if self.branches and self.train:
            raise ValueError("give either 'train' (single task) or 'branches' (multi-task), not both")
        if not self.branches and not self.train:
            raise ValueError("'train' needs at least one deepmd/npy system")
        if self.finetune_from and self.init_model:
            raise ValueError("'finetune_from' and 'init_model' exclude each other")
        return self


class TrainResult(BaseModel):
    model: Path
    compressed: Path | None = None
    checkpoint: Path
    input: Path
    lcurve: Path
    seconds: dict[str, float]


def _descriptor_type(config: dict[str, Any]) -> str:
    model = config["model"]
    if "shared_dict" in model:
        return "multitask"
    return str(model["descriptor"].get("type", "")).lower()


def render(params: TrainParams) -> dict[str, Any]:
    template = dp_input.load_template(params.template)
    if params.branches:
        branches = {
            name: {
                "train": check_systems(b.train, params.type_map, f"branches.{name}.train"),
                "valid": b.valid,
                "weight": b.weight,
            }
            for name, b in params.branches.items()
        }
        return dp_input.render_multitask(
            template, params.overrides, params.type_map, branches, params.numb_steps, params.seed
        )
    train = check_systems(params.train, params.type_map, "train")
    valid = check_systems(params.valid, params.type_map, "valid") if params.valid else []
    return dp_input.render_single(
        template, params.overrides, params.type_map, train, valid, params.numb_steps, params.seed
    )


def check_input(template: str, overrides: dict[str, Any], type_map: list[str], numb_steps: int,
                branches: list[str] | None = None, where: str = "overrides") -> None:
    """The input a training would render, checked by deepmd-kit's argcheck; its data are
    placeholders, so the check runs before any data exists (preflight)."""
    placeholder = [Path("<data>")]
    config = dp_input.load_template(template)
    if branches:
        rendered = dp_input.render_multitask(config, overrides, type_map, {
            name: {"train": placeholder, "valid": [], "weight": 1.0} for name in branches}, numb_steps, 1)
    else:
        rendered = dp_input.render_single(config, overrides, type_map, placeholder, [], numb_steps, 1)
    dp_input.check_input(rendered, where)


def _train_flags(params: TrainParams) -> list[str]:
    flags: list[str] = []
    if params.finetune_from is not None:
        src = Path(params.finetune_from)
        if not src.is_file():
            raise InputError(str(src), "finetune_from: model file not found")
        flags += ["--finetune", str(src.resolve())]
        if params.model_branch:
            flags += ["--model-branch", params.model_branch]
        if params.use_pretrain_script:
            flags.append("--use-pretrain-script")
    if params.init_model is not None:
        src = Path(params.init_model)
        if not src.is_file():
            raise InputError(str(src), "init_model: model file not found")
        flags += ["--init-frz-model" if src.suffix == ".pth" else "--init-model", str(src.resolve())]
    return flags


def _check_compressible(config: dict[str, Any]) -> None:
    kind = _descriptor_type(config)
    if kind not in COMPRESSIBLE:
        raise InputError(
            "compress",
            f"descriptor '{kind}' cannot be compressed; use se_e2_a, se_atten_v2 (attn_layer 0), "
            "DPA-2 (tebd_input_mode strip) or DPA4C",
        )


def run(params: TrainParams) -> TrainResult:
    config = render(params)
    dp_input.check_input(config, "overrides")
    flags = _train_flags(params)
    from_pretrained_script = params.finetune_from is not None and params.use_pretrain_script
    if params.compress and not from_pretrained_script:
        _check_compressible(config)
    env = library_env()
    dp = dp_command()
    seconds: dict[str, float] = {}
    with atomic_dir(params.output) as work:
        write_json(work / "input.json", config)
        t0 = time.perf_counter()
        run_logged([*dp, "--pt", "train", "input.json", *flags], work, "train.log", env)
        seconds["train"] = time.perf_counter() - t0
        head = ["--head", params.head or next(iter(params.branches))] if params.branches else []
        t0 = time.perf_counter()
        run_logged([*dp, "--pt", "freeze", "-o", "model.pth", *head], work, "freeze.log", env)
        model_name = frozen_file(work).name
        seconds["freeze"] = time.perf_counter() - t0
        compressed = None
        if params.compress:
            if from_pretrained_script:  # the model section came from the pretrained checkpoint
                _check_compressible(json.loads((work / "out.json").read_text()))
            t0 = time.perf_counter()
            run_logged(
                [*dp, "--pt", "compress", "-i", model_name, "-o", "model-compressed.pth", "-t", "input.json"],
                work, "compress.log", env,
            )
            seconds["compress"] = time.perf_counter() - t0
            compressed = params.output / "model-compressed.pth"
        write_json(work / "timings.json", seconds)
    out = params.output
    return TrainResult(
        model=out / model_name,
        compressed=compressed,
        checkpoint=out / "model.ckpt.pt",
        input=out / "input.json",
        lcurve=out / "lcurve.out",
        seconds=seconds,
    )


def frozen_file(folder: Path) -> Path:
    """The model ``dp freeze`` wrote: ``model.pth`` (TorchScript) or, for DPA-4, ``model.pt2``."""
    for name in ("model.pth", "model.pt2"):
        if (folder / name).is_file():
            return folder / name
    raise StepFailed(f"dp freeze wrote no model in {folder}")


class FreezeParams(Params):
    checkpoint: Path
    output: Path
    head: str | None = None


class FreezeResult(BaseModel):
    model: Path
    seconds: float


def freeze(params: FreezeParams) -> FreezeResult:
    """A training checkpoint (``.pt``) as a model LAMMPS can run (``.pth``, or ``.pt2`` for DPA-4).

    LAMMPS' ``pair_style deepmd`` reads frozen models only; teachers often arrive as checkpoints.
    """
    src = Path(params.checkpoint)
    if not src.is_file():
        raise InputError(str(src), "checkpoint file not found")
    t0 = time.perf_counter()
    head = ["--head", params.head] if params.head else []
    with atomic_dir(params.output) as work:
        run_logged([*dp_command(), "--pt", "freeze", "-c", str(src.resolve()), "-o", "model.pth", *head],
                   work, "freeze.log", library_env())
        name = frozen_file(work).name
    return FreezeResult(model=Path(params.output) / name, seconds=time.perf_counter() - t0)
