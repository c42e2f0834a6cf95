"""train — pretrain (multi-task), finetune and student training with ``dp --pt``, then freeze
and compress.

One step for the three trainings, because they differ only in the ``dp train`` flags and in how
the input is rendered:

* **pretrain**: ``branches`` given → one shared descriptor, one fitting net per dataset,
  ``model_prob`` from the branch weights (DPA-2 paper, multi-task pretraining).
* **finetune**: ``finetune_from`` a (multi-task) checkpoint, ``model_branch`` picks the upstream
  fitting net or ``RANDOM`` re-initialises it.
* **a new model version**: ``finetune_from`` a multi-task checkpoint *and* ``branches``:
  DeePMD-kit's multi-task fine-tuning. Branches of the checkpoint resume; a new branch starts
  from the fitting net its ``finetune_head`` names (or a random one).
* **student**: a small model from a template, optionally initialised from the previous
  iteration's student (``init_model``), so each distillation iteration trains for fewer steps.

The rendered ``input.json`` stays next to the model for provenance, with ``lcurve.out`` and logs.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator

from .base import OutputPath, Params, Seed, TypeMap

from . import dp_input
from .artifacts import atomic_dir, write_json
from .errors import InputError, StepFailed
from .dp_session import FROZEN, frozen_model
from .runtime import DpCommand, dp_command, library_env, run_dp, run_logged
from .structures import check_systems

log = logging.getLogger(__name__)

#: descriptors whose ``dp freeze`` works in the process that trained them, so train, freeze and
#: compress share one process (and one ~8 s import: :func:`~lamflow.steps.runtime.run_dp`).
#: DPA-3 cannot be scripted there after training ("Module 'SiLUTScript' has no attribute
#: 'SiLUTFunction'"): other descriptors freeze in a fresh process, as ``dp`` users do.
FREEZE_WHERE_TRAINED = frozenset({"se_e2_a", "se_a", "se_atten_v2"})
#: descriptors whose PyTorch implementation supports ``dp compress`` (a hybrid: when each of its
#: members does).
COMPRESSIBLE = {"se_e2_a", "se_a", "se_e2_r", "se_r", "se_e3", "se_at", "se_atten_v2", "se_atten",
                "dpa1", "dpa2", "dpa4c"}


class Branch(Params):
    """One dataset of a multi-task pretraining."""

    train: list[Path] = Field(min_length=1, description="deepmd/npy systems of this branch")
    valid: list[Path] = Field(default_factory=list, description="deepmd/npy validation systems of this branch")
    weight: float = Field(1.0, gt=0, description="sampling importance (DeePMD-kit's model_prob)")
    finetune_head: str | None = Field(None, description="multi-task fine-tuning: the branch of finetune_from a "
                                                        "new branch starts from, or RANDOM (none: the branch "
                                                        "resumes its namesake in finetune_from)")


class TrainParams(Params):
    output: OutputPath
    type_map: TypeMap
    template: str = Field(description="DeePMD-kit template name or .json path (each config role has its default)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DeePMD-kit input keys deep-merged into the "
                                                                        "template")
    train: list[Path] = Field(default_factory=list, description="deepmd/npy training systems (single-task)")
    valid: list[Path] = Field(default_factory=list, description="deepmd/npy validation systems (single-task)")
    branches: dict[str, Branch] = Field(default_factory=dict, description="multi-task training: one fitting net per "
                                                                          "branch, one shared descriptor")
    numb_steps: int = Field(ge=1, description="training steps (each config role has its default)")
    seed: Seed = 1
    finetune_from: Path | None = Field(None, description="a pretrained model to finetune (dp --pt train --finetune)")
    model_branch: str | None = Field(None, description="branch of a multi-task finetune_from, or RANDOM "
                                                      "(default: its first branch)")
    use_pretrain_script: bool = Field(True, description="single-task finetuning: take the model section from the "
                                                        "pretrained model (--use-pretrain-script)")
    init_model: Path | None = Field(None, description="continue from this checkpoint (.pt) or frozen model (.pth)")
    head: str | None = Field(None, description="multi-task: the branch to freeze (default: the first)")
    compress: bool = Field(description="dp compress the frozen model (each config role has its default)")

    @model_validator(mode="after")
    def _one_kind(self) -> "TrainParams":
        if self.branches and self.train:
            raise ValueError("give either 'train' (single task) or 'branches' (multi-task), not both")
        if not self.branches and not self.train:
            raise ValueError("'train' needs at least one deepmd/npy system")
        if self.finetune_from is None and any(b.finetune_head for b in self.branches.values()):
            raise ValueError("'finetune_head' needs 'finetune_from' (the multi-task checkpoint it names)")
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
    fit_rmse_f: float | None = Field(None, description="eV/Å: the force RMSE on its own training batches at the end "
                                                       "(lcurve.out's rmse_f_trn over its last tenth; single-task)")


#: the share of lcurve.out's last lines that measure how well a training fits its own frames
FIT_TAIL = 0.1


def fit_rmse_f(lcurve: Path) -> float | None:
    """How well a trained model fits its own training frames: the RMS of DeePMD-kit's
    ``rmse_f_trn`` over the last tenth of ``lcurve.out``.

    Each line is one batch (one frame, with ``batch_size: auto`` on a small cell), so one line is
    noise and a tenth of them is a measure. Beside the error on unseen frames it tells an underfit
    student (no better on the frames it was trained on: train longer or give it capacity) from one
    short of data (far better on them: label more frames), DeePMD-kit's own lcurve reading. None
    where there is no such column (multi-task: one per branch) or no line."""
    if not lcurve.is_file():
        return None
    with warnings.catch_warnings():  # an lcurve.out without a line yet: numpy warns, nothing to measure
        warnings.simplefilter("ignore")
        try:
            table = np.genfromtxt(lcurve, names=True)  # the header line names the columns
        except ValueError:  # lines of different lengths: not an lcurve.out we can read
            return None
    if "rmse_f_trn" not in (table.dtype.names or ()):
        return None
    values = np.atleast_1d(table["rmse_f_trn"])
    values = values[~np.isnan(values)]  # NaN: a line without data
    tail = values[len(values) - max(1, round(FIT_TAIL * len(values))):]
    return float(np.sqrt(np.mean(tail ** 2))) if tail.size else None


def _descriptor_type(config: dict[str, Any]) -> str:
    model = config["model"]
    if "shared_dict" in model:
        return "multitask"
    return str(model["descriptor"].get("type", "")).lower()


def branch_descriptor(config: dict[str, Any], branch: str) -> str:
    """The descriptor type of one branch of a multi-task input (its ``input.json``, where a
    shared descriptor is a name in ``shared_dict``, or the ``out.json`` DeePMD-kit expands)."""
    model = config["model"]
    descriptor = model["model_dict"][branch]["descriptor"]
    if isinstance(descriptor, str):
        descriptor = model["shared_dict"][descriptor]
    return str(descriptor.get("type", "")).lower()


def render(params: TrainParams) -> dict[str, Any]:
    template = dp_input.load_template(params.template)
    if params.branches:
        branches = {
            name: {
                "train": check_systems(b.train, params.type_map, f"branches.{name}.train"),
                "valid": b.valid,
                "weight": b.weight,
                "finetune_head": b.finetune_head,
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
                branches: list[str] | None = None, where: str = "overrides", compress: str | None = None
                ) -> dict[str, Any]:
    """The input a training would render, checked by deepmd-kit's argcheck and returned as
    DeePMD-kit reads it; its data are placeholders, so the check runs before any data exists (preflight). ``compress``: the field
    that asks for compression, when it does: the descriptor must be one DeePMD-kit can tabulate,
    known now rather than after the teacher's labelling."""
    placeholder = [Path("<data>")]
    config = dp_input.load_template(template)
    if branches:
        rendered = dp_input.render_multitask(config, overrides, type_map, {
            name: {"train": placeholder, "valid": [], "weight": 1.0} for name in branches}, numb_steps, 1)
    else:
        rendered = dp_input.render_single(config, overrides, type_map, placeholder, [], numb_steps, 1)
    normalized = dp_input.check_input(rendered, where)
    if compress is not None and not branches:
        check_compressible(rendered, compress)
    return normalized


RANDOM_BRANCH = "RANDOM"


def model_script(path: Path) -> dict[str, Any]:
    """The model definition a DeePMD-kit model or checkpoint was trained with."""
    from deepmd.infer.deep_eval import DeepEval

    from .inference import not_a_model

    try:
        return DeepEval(str(Path(path).resolve()), head=0).get_model_def_script()
    except Exception as exc:
        raise not_a_model(path, exc) from None


def model_descriptor(path: Path) -> dict[str, Any]:
    """The descriptor of a model (the shared one of a multi-task model: every branch has it)."""
    script = model_script(path)
    return next(iter(script["model_dict"].values()))["descriptor"] if "model_dict" in script else script["descriptor"]


def model_branches(path: Path) -> dict[str, str]:
    """Branch names of a multi-task model, aliases included (alias → branch); empty for a
    single-task one. What ``dp --pt show MODEL model-branch`` lists, read the way it reads it."""
    from deepmd.utils.model_branch_dict import get_model_dict

    script = model_script(path)
    if "model_dict" not in script:
        return {}
    aliases, _ = get_model_dict(script["model_dict"])
    return aliases


def finetune_branch(model: Path, branch: str | None) -> str | None:
    """The ``--model-branch`` to finetune ``model`` from: ``branch`` if it is one of its branches
    (or RANDOM: a re-initialised fitting net); by default the first branch of a multi-task model.

    Without ``--model-branch`` DeePMD-kit re-initialises the fitting net of a multi-task model,
    which throws away what the chosen head learnt; "the first branch" is what users are told."""
    if branch == RANDOM_BRANCH:
        return branch
    branches = model_branches(model)
    if not branches:
        if branch:
            raise InputError("model_branch", f"'{branch}': {Path(model).name} is a single-task model, it has no branches")
        return None
    if branch is None:
        first = next(iter(branches.values()))
        log.info("finetune: %s is multi-task; starting from its first branch, '%s'", Path(model).name, first)
        return first
    if branch not in branches:
        raise InputError("model_branch", f"'{branch}' is not a branch of {Path(model).name} "
                         f"({sorted(set(branches.values()))}) nor {RANDOM_BRANCH}")
    return branch


def _train_flags(params: TrainParams) -> list[str]:
    flags: list[str] = []
    if params.finetune_from is not None:
        src = Path(params.finetune_from)
        if not src.is_file():
            raise InputError(str(src), "finetune_from: model file not found")
        flags += ["--finetune", str(src.resolve())]
        if params.branches:  # multi-task fine-tuning: each branch says where it starts (finetune_head)
            _check_branch_sources(src, params.branches)
            return flags
        branch = finetune_branch(src, params.model_branch)
        if branch:
            flags += ["--model-branch", branch]
        if params.use_pretrain_script:
            flags.append("--use-pretrain-script")
    if params.init_model is not None:
        src = Path(params.init_model)
        if not src.is_file():
            raise InputError(str(src), "init_model: model file not found")
        flags += ["--init-frz-model" if src.suffix == ".pth" else "--init-model", str(src.resolve())]
    return flags


def _check_branch_sources(src: Path, branches: dict[str, Branch]) -> None:
    """Every branch of a multi-task fine-tuning starts where it is meant to.

    DeePMD-kit silently re-initialises a branch that is missing from the checkpoint and names no
    ``finetune_head`` (a misspelt branch loses what it learnt), and re-initialises from its head
    one that names one though it exists (a copied ``finetune_head`` resets a trained branch)."""
    known = model_branches(src)
    if not known:
        raise InputError("branches", f"{src.name} is a single-task model: multi-task fine-tuning needs a "
                                     "multi-task checkpoint")
    for name, b in branches.items():
        head = b.finetune_head
        if head is None and name not in known:
            raise InputError(f"branches.{name}", f"is not a branch of {src.name} ({sorted(set(known.values()))}): "
                                                 "give finetune_head (a branch, or RANDOM) for a new branch")
        if head is not None and name in known:
            raise InputError(f"branches.{name}.finetune_head", f"'{name}' is already a branch of {src.name}; "
                                                                "it resumes without finetune_head")
        if head not in (None, RANDOM_BRANCH) and head not in known:
            raise InputError(f"branches.{name}.finetune_head", f"'{head}' is not a branch of {src.name} "
                                                                f"({sorted(set(known.values()))}) nor {RANDOM_BRANCH}")


def check_compressible(config: dict[str, Any], where: str = "compress") -> None:
    kind = _descriptor_type(config)
    members = config["model"]["descriptor"].get("list", []) if kind == "hybrid" else [{"type": kind}]
    for member in members:
        if str(member.get("type", "")).lower() not in COMPRESSIBLE:
            raise InputError(
                where,
                f"descriptor '{member.get('type')}' cannot be compressed; use se_e2_a, se_e3, se_atten_v2, "
                "DPA-2 (tebd_input_mode strip), DPA4C or a hybrid of them, or compress: false",
            )


def run(params: TrainParams) -> TrainResult:
    config = render(params)
    dp_input.check_input(config, "overrides")
    flags = _train_flags(params)
    src = params.finetune_from
    for resolved in dp_input.share_auto_sel(config, lambda: model_descriptor(src) if src is not None else None):
        log.info("shared descriptor: %s for every branch", resolved)
    start = params.init_model or params.finetune_from
    if start is not None and "shared_dict" not in config["model"]:
        for key in dp_input.keep_sel(config, model_descriptor(Path(start))):
            log.info("%s, as in %s", key, Path(start).name)
    from_pretrained_script = params.finetune_from is not None and params.use_pretrain_script and not params.branches
    if params.compress and not from_pretrained_script:
        check_compressible(config)
    env = library_env()
    compress_after = params.compress and from_pretrained_script  # compressible? known once trained
    with atomic_dir(params.output, keep=True) as work:
        restart = resumable(work, {"input": config, "flags": flags})
        if restart is not None:
            log.info("resuming the training a killed run left at %s", restart.name)
            flags = ["--restart", restart.name]
        write_json(work / "input.json", config)
        head = ["--head", params.head or next(iter(params.branches))] if params.branches else []
        train: DpCommand = (["--pt", "train", "input.json", *flags], "train.log")
        after: list[DpCommand] = [(["--pt", "freeze", "-o", "model.pth", *head], "freeze.log")]
        compress = (["--pt", "compress", "-i", FROZEN, "-o", "model-compressed.pth", "-t", "input.json"],
                    "compress.log")
        if params.compress and not compress_after:
            after.append(compress)
        if not from_pretrained_script and _descriptor_type(config) in FREEZE_WHERE_TRAINED:
            spent = run_dp([train, *after], work, env)
        else:
            spent = run_dp([train], work, env) + run_dp(after, work, env)
        seconds = dict(zip(("train", "freeze", "compress"), spent))
        for short in _sel_short(work / "train.log"):
            log.warning("%s; DeePMD-kit keeps the nearest", short)
        model_name = frozen_file(work).name
        if compress_after:  # the model section came from the pretrained checkpoint
            check_compressible(json.loads((work / "out.json").read_text()))
            seconds["compress"] = run_dp([compress], work, env)[0]
        compressed = params.output / "model-compressed.pth" if params.compress else None
        write_json(work / "timings.json", seconds)
    out = params.output
    return TrainResult(
        model=out / model_name,
        compressed=compressed,
        checkpoint=out / "model.ckpt.pt",
        input=out / "input.json",
        lcurve=out / "lcurve.out",
        seconds=seconds,
        fit_rmse_f=fit_rmse_f(out / "lcurve.out"),
    )


def _sel_short(train_log: Path) -> list[str]:
    """DeePMD-kit's own warnings that the data hold more neighbours than a descriptor's ``sel``
    (its neighbour statistics at the start of ``dp train``), each once: lifted from its log into
    lamflow's, where a user reads them."""
    lines = train_log.read_text(errors="replace").splitlines() if train_log.exists() else []
    return list(dict.fromkeys(line.split("WARNING", 1)[-1].strip() for line in lines if "is not enough!" in line))


def resumable(work: Path, start: dict[str, Any]) -> Path | None:
    """The newest whole checkpoint a killed run of this very training left in ``work``, else
    None with ``work`` emptied for a fresh start.

    A long training (the loop's final student, a pretraining) killed by a time limit, a signal or
    a lost machine restarts from its last ``save_freq`` checkpoint (``dp --pt train --restart``:
    weights, optimiser and step), not from step 0. Only where the input and the flags it started
    with are the same (``start``, kept in ``start.json``); a checkpoint cut off while being
    written is not a whole zip archive and is passed over."""
    import shutil
    import zipfile

    record = work / "start.json"
    if record.exists() and json.loads(record.read_text()) == json.loads(json.dumps(start, default=str)):
        def step(p: Path) -> int:
            tail = p.stem.rsplit("-", 1)[-1]
            return int(tail) if tail.isdigit() else -1

        for ckpt in sorted(work.glob("model.ckpt-*.pt"), key=step, reverse=True):
            try:
                with zipfile.ZipFile(ckpt) as z:
                    if z.testzip() is None:
                        return ckpt
            except (zipfile.BadZipFile, OSError):
                continue
    shutil.rmtree(work)
    work.mkdir()
    write_json(record, start)
    return None


def frozen_file(folder: Path) -> Path:
    """The model ``dp freeze`` wrote: ``model.pth`` (TorchScript) or, for DPA-4, ``model.pt2``."""
    found = frozen_model(folder)
    if found is None:
        raise StepFailed(f"dp freeze wrote no model in {folder}")
    return found


class FreezeParams(Params):
    checkpoint: Path = Field(description="a DeePMD-kit checkpoint (.pt)")
    output: OutputPath
    head: str | None = Field(None, description="the branch of a multi-task checkpoint to freeze")


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


class CompressParams(Params):
    model: Path = Field(description="a frozen DeePMD-kit model (.pth) whose descriptor is compressible")
    output: OutputPath


class CompressResult(BaseModel):
    model: Path
    seconds: float


def compress(params: CompressParams) -> CompressResult:
    """``dp --pt compress`` of a frozen model: the embedding nets tabulated, MD several times
    faster at the same accuracy (:data:`COMPRESSIBLE` descriptors; DeePMD-kit refuses the others
    with its own message). A model trained by DeePMD-kit 3 carries its smallest neighbour
    distance, so no training data is needed; a frozen multi-task head compresses alone."""
    src = Path(params.model)
    if not src.is_file():
        raise InputError(str(src), "model file not found")
    t0 = time.perf_counter()
    with atomic_dir(params.output) as work:
        run_logged([*dp_command(), "--pt", "compress", "-i", str(src.resolve()), "-o", "model-compressed.pth"],
                   work, "compress.log", library_env())
    return CompressResult(model=Path(params.output) / "model-compressed.pth", seconds=time.perf_counter() - t0)
