"""One run per run directory at a time.

Two processes driving the same run directory would write the same step outputs and records
under each other. Every entry point that drives a run (``lamflow distill``/``lam`` on any
engine, the Prefect deployments' flows) holds an exclusive ``flock`` on ``RUN/.lamflow.lock``
while it runs; a second one is refused with one line saying who holds it. The kernel releases
the lock when its holder exits — also by SIGKILL or a node's crash of the process — so a stale
lock file never blocks a resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from lamflow.steps.errors import InputError

LOCK_NAME = ".lamflow.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the run directory's lock for the duration of the block."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(str(run_dir), f"is in use by another lamflow run ({_holder(path)}); wait for it to "
                                           "finish or stop it, or give another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(sys.argv)}).encode())
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']} since {started}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
