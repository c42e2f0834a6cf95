"""Engines: where and how a pipeline's steps run. Each is an :class:`Engine` in :data:`ENGINES`.

Every engine has the same contract (the engine contract tests check it): it runs a pipeline's
batches through :func:`~lamflow.flows.core.execute.execute`, so the same calls leave the same
records; it retries per :func:`~lamflow.flows.core.policy.retryable` and ``resources.<step>``;
a second run of the same config resumes from the records; bad input ends before any step.
Adding an engine (a batch scheduler, ...) means one entry here and passing those tests.
Engine modules import their optional packages (Prefect, dflow) only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lamflow.flows.core.config import RunConfig
from lamflow.flows.core.records import StepCall, StepRecord


@dataclass
class Hooks:
    """What the terminal shows while a pipeline runs (all optional)."""

    on_batch: Callable[[str], None] | None = None
    on_iteration: Callable[[Any], None] | None = None
    on_done: Callable[[StepCall, StepRecord], None] | None = None


@dataclass(frozen=True)
class Engine:
    name: str
    doc: str
    #: ``module:function`` — ``run(pipeline, cfg, run_dir, hooks) -> report``
    run_ref: str
    #: whether the pipeline runs in this process and so calls the hooks (live progress)
    in_process: bool = True

    def run(self, pipeline: Any, cfg: RunConfig, run_dir: Path, hooks: Hooks | None = None) -> Any:
        module, _, attr = self.run_ref.partition(":")
        return getattr(importlib.import_module(module), attr)(pipeline, cfg, Path(run_dir), hooks or Hooks())


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("prefect", "Prefect, embedded (no server needed; PREFECT_API_URL sends it to a server)",
           "lamflow.flows.engines.prefect.flows:run_pipeline"),
    Engine("dflow", "dflow's debug mode: the Argo workflow's steps as local processes",
           "lamflow.flows.engines.dflow.engine:run_pipeline", in_process=False),
    Engine("local", "no engine: a thread pool, for debugging", "lamflow.flows.engines.local:run_pipeline"),
)}
