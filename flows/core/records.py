"""Calls and records: what a pipeline asks an engine to run, and the typed trace a step leaves.

A step's record (``OUTPUT.result.json``, next to its output) holds its cache key, its result and
the manifest of its output files. Its presence with a matching key means "done": that is how
every engine resumes. Results are the step's own pydantic result model, never a bare dict, so a
pipeline reads ``record.result.n_selected`` and a misspelt field fails where it is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from lamflow.steps.artifacts import write_json
from lamflow.steps.registry import STEPS

from .resources import Resources

log = logging.getLogger(__name__)

#: a run (or a dataset) whose labeller leaves out at least this share of the frames it is given
#: says why, under its table and in its report
DROPPING_RATIO = 0.1


@dataclass
class Labelling:
    """Frames a labeller (the teacher, a dataset's calculator) was given and those it left out,
    counted by reason (the calculator's own words for a failure such as an SCF that did not
    converge, a non-finite label, a force above max_force), summed over its labelling steps.
    Left-out frames are never learnt; when they are many, the run says why."""

    given: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, results: list) -> None:
        """Count labelling results (``LabelResult``, ``TeacherLabelResult``)."""
        for r in results:
            self.given += r.n_frames + r.n_dropped
            for why, n in r.drop_reasons.items():
                self.dropped[why] = self.dropped.get(why, 0) + n

    @property
    def lost(self) -> int:
        return sum(self.dropped.values())

    def many_lost(self) -> bool:
        return self.given > 0 and self.lost >= DROPPING_RATIO * self.given

    def reasons(self) -> str:
        """The reasons, most frequent first: ``SCF not converged in 250 cycles: 4; …``."""
        return "; ".join(f"{why}: {n}" for why, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]))


#: written next to a step's output; its presence (with a matching key) means "done".
RECORD_SUFFIX = ".result.json"


@dataclass
class StepCall:
    """One step to run: which, with what, how it is shown (``iter-001/explore/task-003``) and
    with which resources. Resources never enter the cache key."""

    step: str
    params: BaseModel
    label: str
    resources: Resources = field(default_factory=Resources)


@dataclass
class StepRecord:
    step: str
    label: str
    seconds: float
    cached: bool
    result: BaseModel
    finished: float = 0.0  # epoch seconds when the step finished
    key: str = ""
    job_id: str = ""  # the batch job that ran it (``resources.<step>.executor``), e.g. a Slurm job id

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data: what crosses a process boundary (Prefect task, dflow OP)."""
        return {"step": self.step, "label": self.label, "seconds": self.seconds, "cached": self.cached,
                "result": json.loads(self.result.model_dump_json()), "finished": self.finished, "key": self.key,
                "job_id": self.job_id}

    def summary(self) -> str:
        """One line for a log: whether the step ran or was read back, and its scalar results.

        What a user scanning the Prefect UI's logs (or a pod's) needs to see that a retried run
        recomputed nothing it had, and what each step produced."""
        how = (f"read back from its record (computed in {self.seconds:.1f} s)" if self.cached
               else f"ran in {self.seconds:.1f} s")
        figures = []
        for name, value in self.result:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            figures.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
        job = f" [job {self.job_id}]" if self.job_id else ""
        return f"{self.label or self.step}: {how}{job}" + (f"; {', '.join(figures[:8])}" if figures else "")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StepRecord":
        return cls(step=data["step"], label=data["label"], seconds=data["seconds"], cached=data["cached"],
                   result=STEPS[data["step"]].result.model_validate(data["result"]),
                   finished=data.get("finished", 0.0), key=data.get("key", ""), job_id=data.get("job_id", ""))


# --- the cache key ------------------------------------------------------------------------------

#: content hashes of files outside any step's output, by (path, size, mtime): a teacher of
#: hundreds of MB is read once per process, not once per lookup
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content (hex), computed once per process for a given size and mtime."""
    path = Path(path)
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[memo] = h.hexdigest()
    return _FILE_DIGESTS[memo]


def producer_candidates(path: Path) -> Iterator[tuple[Path, Path]]:
    """``(output, its record file)`` for ``path`` and each folder above it: where the record of
    the step that wrote ``path`` would be."""
    for candidate in dict.fromkeys((path, *path.parents)):
        yield candidate, Path(str(candidate) + RECORD_SUFFIX)


def _producer(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The output folder (or file) that contains ``path`` and the record of the step that wrote
    it, if its files are the ones the record lists."""
    for output, rec in producer_candidates(path):
        if rec.is_file():
            try:
                saved = json.loads(rec.read_text())
            except (OSError, ValueError):
                return None
            if "outputs" in saved and output_manifest(output) == saved["outputs"]:
                return output, saved
            return None
    return None


def _hash_input(h, path: Path) -> None:
    """An input's identity. The output of a finished step is identified by that step's key (its
    inputs, transitively) and the path inside it: no need to read the bytes of every MD
    trajectory again at every lookup. Anything else is hashed by content."""
    found = _producer(path)
    if found is not None:
        output, saved = found
        h.update(f"step:{saved['key']}:{path.relative_to(output)}".encode())
        return
    if path.is_file():
        h.update(path.name.encode())
        h.update(file_digest(path).encode())
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not child.name.endswith(RECORD_SUFFIX):
                h.update(str(child.relative_to(path)).encode())
                h.update(file_digest(child).encode())


def _inputs(params: BaseModel) -> Iterator[tuple[str, int | None, Path]]:
    """Every input a step declares, as (field, index in its list or None, path): a top-level
    ``Path`` or list of them, other than its output."""
    for key in type(params).model_fields:
        if key == "output":
            continue
        value = getattr(params, key)
        if isinstance(value, Path):
            yield key, None, value
        elif isinstance(value, list):
            yield from ((key, i, v) for i, v in enumerate(value) if isinstance(v, Path))


def input_paths(params: BaseModel) -> list[Path]:
    return [path for _, _, path in _inputs(params)]


def cache_key(step: str, params: BaseModel) -> str:
    """Step name + parameters + identity of every existing input file or folder.

    The parameters are hashed with sorted keys: the order in which a user wrote a mapping (say
    ``student.overrides``) means nothing to the step and must not rerun it. An existing input
    enters them by its name, not its absolute path: its identity (content, or its producer's key)
    is hashed beside them, so the folder it lies in adds nothing but a dependence on where the
    project sits (the config's cells are absolute paths, and a second checkout of the project
    would otherwise recompute every step of a finished run). The output stays whole: the
    results name files under it."""
    dump = params.model_dump(mode="json")
    existing = []
    for key, index, path in _inputs(params):
        if path.exists():
            existing.append(path)
            if index is None:
                dump[key] = path.name
            else:
                dump[key][index] = path.name
    h = hashlib.sha256(step.encode())
    h.update(json.dumps(dump, sort_keys=True).encode())
    for path in existing:
        _hash_input(h, path)
    return h.hexdigest()


# --- records on disk ----------------------------------------------------------------------------


def record_path(params: BaseModel) -> Path:
    output = getattr(params, "output", None)
    if output is None:
        raise ValueError("a cached step needs an 'output' parameter")
    return Path(str(output) + RECORD_SUFFIX)


def output_manifest(output: Path) -> dict[str, int]:
    """Every file of a step's output and its size: what its record promises is there."""
    output = Path(output)
    if output.is_file():
        return {".": output.stat().st_size}
    return {str(p.relative_to(output)): p.stat().st_size for p in sorted(output.rglob("*")) if p.is_file()}


def read_record(step: str, params: BaseModel, key: str) -> StepRecord | None:
    """The record of this exact step, if its key matches and its output is complete."""
    rec_file = record_path(params)
    if not rec_file.is_file():
        return None
    saved = json.loads(rec_file.read_text())
    if saved.get("key") != key:
        return None
    if "outputs" in saved and output_manifest(params.output) != saved["outputs"]:
        log.warning(
            "%s: output differs from its record (missing or truncated files): running the step again", params.output)
        return None
    try:
        result = STEPS[step].result.model_validate(saved["result"])
    except ValidationError:  # written by a lamflow whose result had other fields: not this step's record
        log.warning("%s: its record's result is not what this lamflow's %s returns: running the step again",
                    params.output, step)
        return None
    return StepRecord(step, saved["label"], saved["seconds"], True, result, saved.get("finished", 0.0), key,
                      saved.get("job_id", ""))


def write_record(step: str, params: BaseModel, key: str, result: BaseModel, seconds: float) -> StepRecord:
    rec_file = record_path(params)
    record = StepRecord(step, rec_file.name, seconds, False, result, time.time(), key)
    write_json(rec_file, {"key": key, "step": step, "label": rec_file.name, "seconds": seconds,
                          "finished": record.finished, "result": json.loads(result.model_dump_json()),
                          "pid": os.getpid(),
                          "outputs": output_manifest(params.output)})
    return record


def set_job_id(params: BaseModel, job_id: str) -> None:
    """Name the batch job that ran a step in its record (written by the job, which cannot know
    the id its scheduler gave it as portably as the submitter can)."""
    rec_file = record_path(params)
    saved = json.loads(rec_file.read_text())
    write_json(rec_file, {**saved, "job_id": job_id})
