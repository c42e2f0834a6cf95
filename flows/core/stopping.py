"""Stopping a run on SIGINT or SIGTERM (Ctrl-C, ``kill``, a scheduler's end of job).

The handler says at once that the run is stopping, ends the running steps' children (dp,
LAMMPS) within seconds through :func:`lamflow.steps.runtime.stop_children` (steps that compute in
this process, an ASE calculator's labels and MD, stop between frames and MD steps:
:func:`lamflow.steps.runtime.interrupt_if_stopping`), and unwinds:
finished steps keep their records, interrupted ones write none, and the same command resumes.
A second signal ends the process at once.

Prefect swaps in its own SIGTERM handler while a flow runs; it raises in the flow's thread
and then waits for the running tasks — a training of hours — before re-sending the signal. A
flow started by the lamflow command therefore takes SIGTERM back (:func:`reclaim`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

from lamflow.steps.runtime import allow_children, stop_children, stopping

_STOPPED_BY: list[int] = []


def on_signal(signum: int, frame: Any) -> None:
    if stopping():
        os._exit(128 + signum)
    _STOPPED_BY.append(signum)
    print(f"lamflow: {signal.Signals(signum).name}: stopping — ending the running steps; every finished step "
          "is kept, run the same command again to go on (a second signal stops at once)", file=sys.stderr, flush=True)
    stop_children()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Handle SIGINT and SIGTERM this way while the block runs (in the main thread only: Python
    delivers signals there), then put the previous handlers back — a caller of the CLI's
    ``main()`` in its own process (a test, a notebook) keeps its own."""
    allow_children()
    _STOPPED_BY.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def reclaim() -> None:
    """Inside a flow: take SIGTERM back from Prefect, if the lamflow command installed the handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is on_signal:
        signal.signal(signal.SIGTERM, on_signal)


def stopped_by() -> int:
    """The signal that stopped the run (SIGINT when none was seen: a KeyboardInterrupt)."""
    return _STOPPED_BY[0] if _STOPPED_BY else signal.SIGINT
