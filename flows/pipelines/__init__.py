"""Pipelines: what runs, in which order, written once for every engine.

Each pipeline is a :class:`Pipeline`: its config model, the function that runs it on any
engine's runner, its preflight and how its report is read back and summarised. The CLI, the
Prefect flows and the dflow planner dispatch through :data:`PIPELINES`; adding a pipeline
(model versions, ...) means adding one entry. Modules are imported when first used, so reading
the registry costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lamflow.steps.errors import InputError

from lamflow.flows.core.config import RunConfig, read_mapping


@dataclass(frozen=True)
class Pipeline:
    name: str
    doc: str
    #: ``module:attribute`` of the config model, the run function, the preflight, the report reader
    #: and the terminal summary
    config_ref: str
    run_ref: str
    preflight_ref: str
    report_ref: str
    summary_ref: str
    #: a top-level key that only this pipeline's configs have (when ``pipeline:`` is not given)
    marker: str
    #: the report's table (iterations, versions) as the terminal and the Prefect UI show it
    table_ref: str

    @staticmethod
    def _get(ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def config(self) -> type[RunConfig]:
        return self._get(self.config_ref)

    @property
    def run(self) -> Callable[..., Any]:
        """``run(cfg, run_dir, runner, on_batch=None, on_iteration=None, check_inputs=True)``"""
        return self._get(self.run_ref)

    def preflight(self, cfg: RunConfig) -> None:
        self._get(self.preflight_ref)(cfg)

    def read_report(self, run_dir: Path) -> Any:
        return self._get(self.report_ref)(Path(run_dir))

    def summarize(self, console: Any, cfg: RunConfig, report: Any) -> None:
        self._get(self.summary_ref)(console, cfg, report)

    def table(self, report: Any) -> Any:
        """A rich ``Table`` of ``report``, or None where it has none yet."""
        return self._get(self.table_ref)(report)


_D, _L, _V = "lamflow.flows.pipelines.distill", "lamflow.flows.pipelines.lam", "lamflow.flows.pipelines.version"

PIPELINES: dict[str, Pipeline] = {p.name: p for p in (
    Pipeline("distill", "distil a teacher into a fast student (the loop)",
             f"{_D}.config:DistillConfig", f"{_D}.loop:run_distill", f"{_D}.preflight:preflight",
             f"{_D}.records:read_report", "lamflow.flows.report.distill:summarize", marker="teacher",
             table_ref="lamflow.flows.report.distill:table"),
    Pipeline("lam", "the full pipeline: datasets → pretrain → finetune → distill",
             f"{_L}.config:LamConfig", f"{_L}.pipeline:run_lam", f"{_L}.config:preflight",
             f"{_L}.pipeline:read_report", f"{_L}.pipeline:summarize", marker="finetune",
             table_ref=f"{_L}.pipeline:table"),
    Pipeline("version", "model versions: each verified dataset a new version of a multi-task model, scored on "
             "standard datasets", f"{_V}.config:VersionConfig", f"{_V}.pipeline:run_versions",
             f"{_V}.config:preflight", f"{_V}.pipeline:read_report", f"{_V}.pipeline:summarize", marker="versions",
             table_ref="lamflow.flows.report.versions:history_table"),
)}


def pipeline_of(raw: dict[str, Any], source: str = "config", expect: str | None = None) -> Pipeline:
    """The pipeline a raw config is for: its ``pipeline:`` key, else the one whose marker it has,
    else ``expect`` (the pipeline the command runs, whose validation then names what is missing)."""
    name = raw.get("pipeline")
    if name is not None:
        if name not in PIPELINES:
            raise InputError(f"{source}: pipeline", f"unknown pipeline {name!r}; expected one of {sorted(PIPELINES)}")
        return PIPELINES[name]
    found = [p for p in PIPELINES.values() if p.marker in raw]
    if len(found) == 1:
        return found[0]
    if expect is not None:
        return PIPELINES[expect]
    raise InputError(source, "cannot tell the pipeline: add `pipeline: " + " | ".join(PIPELINES) + "` at the top level")


def parse_any(raw: dict[str, Any], base: Path, source: str = "config",
              expect: str | None = None) -> tuple[Pipeline, RunConfig]:
    """The pipeline and validated config of a raw mapping whose relative paths are relative to
    ``base`` (``expect``: the pipeline the command or the deployment runs)."""
    pipe = pipeline_of(raw, source, expect)
    if expect and pipe.name != expect:
        raise InputError(source, f"is a {pipe.name} config, not a {expect} config (run it with `lamflow {pipe.name}`)")
    return pipe, pipe.config.parse(raw, base, source)


def load_any(path: Path, expect: str | None = None) -> tuple[Pipeline, RunConfig]:
    """As :func:`parse_any`, for a config file (its paths relative to its folder)."""
    path = Path(path)
    return parse_any(read_mapping(path), path.resolve().parent, str(path), expect)
