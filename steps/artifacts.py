"""Atomic artifacts: a reader never sees a half-written output.

A step writes its output folder under a temporary sibling name and renames it into place only
when complete. A step killed midway (node died, OOM) leaves a ``.partial`` folder behind that no
one reads, and the rerun starts clean — nothing finished is ever overwritten by a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_dir(final: Path, keep: bool = False) -> Iterator[Path]:
    """Yield a scratch folder that becomes ``final`` when the block succeeds. ``keep``: the
    scratch a killed attempt left is handed over as it is (the block decides what of it to
    resume, e.g. a training's checkpoints), not emptied."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(final.name + ".partial")
    if scratch.exists() and not keep:
        shutil.rmtree(scratch)
    scratch.mkdir(exist_ok=True)
    yield scratch
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data) -> Path:
    """Write JSON atomically (temp file + rename)."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))
