"""No engine at all: a thread pool in this process. For debugging and for tests of the loop."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from lamflow.flows.core.policy import attempts, retryable
from lamflow.flows.core.records import StepCall, StepRecord
from lamflow.flows.executors import run_step, submitted

log = logging.getLogger(__name__)


def run_with_retries(call: StepCall) -> StepRecord:
    """The step (here, or as its batch job) with the core's retry policy, as Prefect and Argo apply it."""
    n = attempts(call.resources.retries_for(call.step))
    for attempt in range(1, n + 1):
        try:
            return run_step(call.step, call.params, call.resources, call.label)
        except BaseException as exc:
            if attempt == n or not retryable(exc):
                raise
            log.warning("%s failed (%s); attempt %d of %d in %g s", call.label, exc, attempt + 1, n,
                        call.resources.retry_delay)
            time.sleep(call.resources.retry_delay)
    raise AssertionError("unreachable")


class LocalRunner:
    def __init__(self, max_workers: int = 1, on_done: Callable[[StepCall, StepRecord], None] | None = None):
        self.max_workers = max_workers
        self.on_done = on_done

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        def one(call: StepCall) -> StepRecord:
            record = run_with_retries(call)
            record.label = call.label
            if self.on_done:
                self.on_done(call, record)
            return record

        # steps that run here share this machine's cores; batch jobs wait on their scheduler
        width = len(calls) if calls and all(submitted(c.resources) for c in calls) else self.max_workers
        with ThreadPoolExecutor(max_workers=width) as pool:
            return list(pool.map(one, calls))


def run_pipeline(pipeline: Any, cfg: Any, run_dir: Path, hooks: Any) -> Any:
    return pipeline.run(cfg, run_dir, LocalRunner(cfg.max_workers, hooks.on_done), hooks.on_batch,
                        hooks.on_iteration)
