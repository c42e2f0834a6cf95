"""Where a step runs: in the engine's own process, or as a batch job on a scheduler.

Engines call :func:`run_step` instead of ``execute``; a step whose resources name an
``executor`` is then submitted as a job (:mod:`.batch`) whose script calls ``lamflow step``,
which is ``execute`` again on the compute node. Every engine therefore gets Slurm, PBS and LSF
the same way, and a job leaves the same record (plus its job id) as a step run in place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from lamflow.flows.core.execute import execute
from lamflow.flows.core.records import StepRecord
from lamflow.flows.core.resources import Resources


def run_step(step: str, params: dict[str, Any] | BaseModel, resources: Resources | None = None,
             label: str = "") -> StepRecord:
    """Run ``step`` here, or as a batch job when ``resources.executor`` says so; its record either way."""
    if resources is not None and resources.executor is not None:
        from .batch import run_as_job

        return run_as_job(step, params, resources, label or step)
    return execute(step, params, resources)


def submitted(resources: Resources) -> bool:
    """Whether a step with these resources waits on a scheduler rather than on this machine's
    cores: a batch of such steps goes out whole, the scheduler paces it."""
    return resources.executor is not None


def check_executors(cfg: Any) -> None:
    """Preflight of a run's batch executors (scheduler reachable, queue and GPUs there); nothing
    to do, and dpdispatcher not imported, when no step names one."""
    if any(res.executor is not None for res in cfg.resources.values()):
        from lamflow.steps.registry import STEPS

        from .batch import check_schedulers

        check_schedulers(cfg, STEPS)
