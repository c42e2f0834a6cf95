"""The view of a running distillation: what runs now, and the per-iteration table.

On a terminal, a live view (rich). Anywhere else — a Slurm job's output file, CI, ``nohup``, a
pipe — one plain, timestamped line per started batch and per finished step (ran or read back,
its time and figures), and the iteration table as text after each iteration, flushed at once:
a live view there would write nothing until the run ends."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from lamflow.flows.core.records import StepCall, StepRecord
from lamflow.flows.pipelines.distill.records import DistillReport

from .distill import notes, table


class Progress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.report: DistillReport | None = None
        self.current = "starting"
        self.done = 0
        self.cached = 0
        self.t0 = time.perf_counter()
        self.live = Live(self._render(), console=self.console, refresh_per_second=2,
                         transient=False) if self.console.is_terminal else None

    def _say(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def _render(self):
        elapsed = time.perf_counter() - self.t0
        line = Text.assemble(("● ", "cyan"), (self.current, "bold"),
                             f"   steps done {self.done} (cached {self.cached})   {elapsed:,.0f} s")
        if self.report and self.report.iterations:
            return Group(table(self.report), *(Text(f"note: {why}", style="yellow") for why in notes(self.report)),
                         line)
        return line

    def __enter__(self) -> "Progress":
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.__exit__(*exc)
        else:
            self._say(f"steps done {self.done} (read back {self.cached}) in {time.perf_counter() - self.t0:,.0f} s")

    def on_batch(self, label: str) -> None:
        self.current = label
        if self.live:
            self.live.update(self._render())
        else:
            self._say(f"start {label}")

    def on_done(self, call: StepCall, record: StepRecord) -> None:
        self.done += 1
        self.cached += int(record.cached)
        if self.live:
            self.live.update(self._render())
        else:
            self._say(record.summary())

    def on_iteration(self, report: DistillReport) -> None:
        self.report = report
        if self.live:
            self.live.update(self._render())
        else:
            self._say(f"iteration {len(report.iterations) - 1} done")
            self.console.print(table(report))
            for why in notes(report):
                self._say(f"note: {why}")
            self.console.file.flush()
