"""Running a pipeline's batches through an engine's runner while keeping its time accounts."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from .records import StepCall, StepRecord
from .runner import Runner


class Book:
    """Runs batches and counts: seconds per step kind (in the dict each batch names) and in all,
    steps read back from their records, and seconds spent in steps that ran in this session.

    A step read back from its record still counts its compute time (the record keeps it): a run
    retried from the Prefect UI or resumed on Argo reports what the whole run cost, every attempt
    included, and not only what its last session did."""

    def __init__(self, runner: Runner, on_batch: Callable[[str], None] | None = None):
        self.runner, self.on_batch = runner, on_batch
        self.cached_steps = 0
        self.step_seconds = 0.0  # this session's
        self.compute_seconds = 0.0  # every attempt's
        #: (start, finish) epoch seconds of the steps this session ran: a planner's replay takes
        #: its wall times from them, its own clock having run for a second
        self.intervals: list[tuple[float, float]] = []

    def span(self, since: int = 0) -> float:
        """Seconds from the first start to the last finish of the steps run since ``since``
        (a length of :attr:`intervals`)."""
        recent = self.intervals[since:]
        return max(f for _, f in recent) - min(s for s, _ in recent) if recent else 0.0

    def run(self, calls: list[StepCall], seconds: dict[str, float]) -> list[StepRecord]:
        if not calls:
            return []
        if self.on_batch:
            self.on_batch(calls[0].label.rsplit("/", 1)[0] if len(calls) > 1 else calls[0].label)
        records = self.runner.map(calls)
        for call, rec in zip(calls, records):
            seconds[call.step] = seconds.get(call.step, 0.0) + rec.seconds
            self.compute_seconds += rec.seconds
            if rec.cached:
                self.cached_steps += 1
            else:
                self.step_seconds += rec.seconds
                if rec.finished:
                    self.intervals.append((rec.finished - rec.seconds, rec.finished))
        return records

    def together(self, batches: list[list[StepCall]], seconds: dict[str, float]) -> list[list[StepRecord]]:
        """Independent batches run as one: their steps at once on an in-process engine, one
        fan-out (one planning level) on a static one. The records, batch by batch."""
        records = self.run([c for batch in batches for c in batch], seconds)
        out, start = [], 0
        for batch in batches:
            out.append(records[start:start + len(batch)])
            start += len(batch)
        return out

    def one(self, call: StepCall, seconds: dict[str, float]) -> BaseModel:
        """The typed result of one step."""
        return self.run([call], seconds)[0].result

    def systems(self, calls: list[StepCall], seconds: dict[str, float]) -> list[Path]:
        """Run a batch of data-producing steps; the deepmd/npy systems they wrote, in order."""
        return [Path(p) for r in self.run(calls, seconds) for p in r.result.systems]
