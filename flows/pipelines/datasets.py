"""Reference-labelled datasets, for every pipeline that labels structures with a calculator:
(optionally) perturbed copies of the structures, then ASE-calculator labels in chunks.

One builder for the teacher's data in ``distill`` and the datasets of ``lam``, so a
:class:`~lamflow.flows.pipelines.distill.config.LabelSpec` means the same in both.
"""

from __future__ import annotations

from pathlib import Path

from lamflow.steps.label import LabelParams, LabelSettings
from lamflow.steps.perturb import PerturbParams, PerturbSettings

from lamflow.flows.core.config import RunConfig
from lamflow.flows.core.records import StepCall

from .distill.config import LabelSpec


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
