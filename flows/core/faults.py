"""Injected failures, to prove on a real engine that a failed run resumes without recomputing.

Point ``LAMFLOW_FAULTS`` at a YAML file listing the failures to inject::

    - step: teacher_label      # registry name of the step
      where: iter-001/label    # a substring of the step's output path
      times: 1                 # fail this many executions, then let it pass
      kind: error              # error: the step raises; kill: its process dies (a lost node, OOM);
                               # disk_full: writing its output fails with ENOSPC

The file is the counter: each injected failure decrements ``times`` in place under a file lock,
so "fail once" holds across processes, retries and pods sharing the file. Without the variable
this module does nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lamflow.steps.errors import StepFailed

ENV = "LAMFLOW_FAULTS"


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str
    where: str = ""
    times: int = Field(1, ge=0)
    kind: Literal["error", "kill", "disk_full"] = "error"

    def matches(self, step: str, output: str) -> bool:
        return self.times > 0 and self.step == step and self.where in output


def inject(step: str, output: Path | str) -> None:
    """Fail here if a fault listed in ``$LAMFLOW_FAULTS`` matches this execution."""
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        faults = [Fault.model_validate(f) for f in (yaml.safe_load(fh) or [])]
        hit = next((f for f in faults if f.matches(step, str(output))), None)
        if hit is None:
            return
        hit.times -= 1
        fh.seek(0)
        fh.truncate()
        yaml.safe_dump([f.model_dump() for f in faults], fh)
        fh.flush()
        os.fsync(fh.fileno())
    if hit.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if hit.kind == "disk_full":  # what a full volume does to the first write of the output
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output))
    raise StepFailed(f"{step} {output}: injected failure ({ENV}={path})")
