"""What a pipeline needs from an engine: run a batch of independent steps, get their records.

Pipelines are written once against :class:`Runner`; each engine brings its own (a thread pool,
Prefect tasks, dflow's planner). :class:`PlanningRunner` is how a static workflow engine runs
a loop whose shape depends on its results.
"""

from __future__ import annotations

from typing import Protocol

from lamflow.steps.errors import StepFailed

from .execute import lookup
from .records import StepCall, StepRecord


class Runner(Protocol):
    def map(self, calls: list[StepCall]) -> list[StepRecord]: ...


class Pending(Exception):
    """Raised by :class:`PlanningRunner`: the pipeline needs these steps run before it can go on."""

    def __init__(self, calls: list[StepCall]):
        super().__init__(f"{len(calls)} step(s) to run: {calls[0].label} ...")
        self.calls = calls


class PlanningRunner:
    """Replays the pipeline from the step records and stops at the first batch that has not run.

    A planner step (dflow/Argo) replays the pipeline with this runner: finished batches come
    back from their records, the first unfinished one is raised as :class:`Pending` and fanned
    out by the engine, then the planner runs again. The pipeline stays written once, in Python.
    """

    #: a replay: pipelines skip work that only a finished run needs (plots)
    replay = True

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        records = [lookup(c.step, c.params) for c in calls]
        missing = [c for c, r in zip(calls, records) if r is None]
        if missing:
            ran = iter(self.run_missing(missing))
            records = [next(ran) if r is None else r for r in records]
        for call, rec in zip(calls, records):
            # run by the engine, not read back from an earlier run: count its time in the report
            rec.label, rec.cached = call.label, False
        return records

    def run_missing(self, calls: list[StepCall]) -> list[StepRecord]:
        """The steps of a batch that have no record yet: a planner stops at them (a subclass may
        run some itself, and return their records in order)."""
        raise Pending(calls)


class FailedReplay(PlanningRunner):
    """A replay after a static workflow stopped on a failed step: the batch it stopped at is
    raised as that failure, so the pipeline records it as it does under an in-process engine
    (a failed version in ``versions.json``, a run marked failed) instead of "still running"."""

    def __init__(self, error: str):
        self.error = error

    def run_missing(self, calls: list[StepCall]) -> list[StepRecord]:
        raise StepFailed(self.error)
