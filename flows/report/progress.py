"""The terminal view of a running distillation: what runs now, and the per-iteration table."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from lamflow.flows.core.records import StepCall, StepRecord
from lamflow.flows.pipelines.distill.records import DistillReport

from .distill import table


class Progress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.report: DistillReport | None = None
        self.current = "starting"
        self.done = 0
        self.cached = 0
        self.t0 = time.perf_counter()
        self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)

    def _render(self):
        elapsed = time.perf_counter() - self.t0
        line = Text.assemble(("● ", "cyan"), (self.current, "bold"),
                             f"   steps done {self.done} (cached {self.cached})   {elapsed:,.0f} s")
        if self.report and self.report.iterations:
            return Group(table(self.report), line)
        return line

    def __enter__(self) -> "Progress":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def on_batch(self, label: str) -> None:
        self.current = label
        self.live.update(self._render())

    def on_done(self, call: StepCall, record: StepRecord) -> None:
        self.done += 1
        self.cached += int(record.cached)
        self.live.update(self._render())

    def on_iteration(self, report: DistillReport) -> None:
        self.report = report
        self.live.update(self._render())
