"""The Prefect engine: each step a Prefect task, the loop a Prefect flow.

Without ``PREFECT_API_URL`` Prefect runs in its local ephemeral mode (no server to start), which
is lamflow's embedded default; with it, the same flow reports to a Prefect server and its UI.
Prefect's own result caching is off: steps are cached by lamflow's content hash
(:mod:`lamflow.flows.runner`), so a retried flow run skips finished steps whatever the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from .config import DistillConfig, load_config
from .distill import DistillReport, run_distill
from .runner import StepCall, StepRecord, execute


@task(name="step", cache_policy=NO_CACHE, persist_result=False)
def step_task(step: str, params: dict[str, Any], threads: int | None) -> dict[str, Any]:
    record = execute(step, params, threads)
    return {"seconds": record.seconds, "cached": record.cached, "result": record.result}


class PrefectRunner:
    """Submits each batch as Prefect tasks, ``max_workers`` at a time."""

    def __init__(self, max_workers: int = 1, on_done: Callable[[StepCall, StepRecord], None] | None = None):
        self.max_workers = max_workers
        self.on_done = on_done

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        records: list[StepRecord] = []
        for start in range(0, len(calls), self.max_workers):
            wave = calls[start : start + self.max_workers]
            futures = [
                step_task.with_options(
                    name=call.step, task_run_name=call.label.replace("/", " · "), retries=call.retries,
                    timeout_seconds=call.timeout,
                ).submit(call.step, call.params.model_dump(mode="json"), call.threads)
                for call in wave
            ]
            for call, fut in zip(wave, futures):
                out = fut.result()
                rec = StepRecord(call.step, call.label, out["seconds"], out["cached"], out["result"])
                if self.on_done:
                    self.on_done(call, rec)
                records.append(rec)
        return records


def distill_with_prefect(
    cfg: DistillConfig,
    run_dir: Path,
    on_batch: Callable[[str], None] | None = None,
    on_iteration: Callable[[DistillReport], None] | None = None,
    on_done: Callable[[StepCall, StepRecord], None] | None = None,
) -> DistillReport:
    """Run the loop as a Prefect flow in this process, with progress callbacks for the CLI."""
    out: dict[str, DistillReport] = {}

    @flow(name="distill", flow_run_name=cfg.name, persist_result=False)
    def distill() -> None:
        out["report"] = run_distill(cfg, run_dir, PrefectRunner(cfg.max_workers, on_done), on_batch,
                                    on_iteration)

    distill()
    return out["report"]


@flow(name="distill", persist_result=False)
def distill_flow(config: str, workdir: str | None = None) -> dict[str, Any]:
    """The deployable flow: ``prefect deployment run 'distill/local' -p config=path.yaml``."""
    cfg = load_config(Path(config))
    run_dir = cfg.run_dir(workdir)
    return run_distill(cfg, run_dir, PrefectRunner(cfg.max_workers)).as_dict()
