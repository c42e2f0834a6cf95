"""Running a step from any engine: validated parameters in, result out, cached by input hash.

Every engine (Prefect task, dflow OP, plain loop) calls :func:`execute`. A step whose result
record exists with the same key — the hash of the step name, its parameters and the content of
its input files — is not run again. That is what makes *retry* cheap on every engine: a failed
iteration re-runs from the failed step, nothing finished is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from pydantic import BaseModel

from lamflow.steps.artifacts import write_json
from lamflow.steps.registry import STEPS

from .artifact_store import ArtifactStore
from .faults import inject
from .resources import Resources

log = logging.getLogger(__name__)

#: written next to a step's output; its presence (with a matching key) means "done".
RECORD_SUFFIX = ".result.json"


@dataclass
class StepCall:
    """One step to run: which, with what, how it is shown (``iter-001/explore/task-003``) and
    with which resources."""

    step: str
    params: BaseModel
    label: str
    resources: Resources = field(default_factory=Resources)

    @property
    def threads(self) -> int:
        return self.resources.threads


@dataclass
class StepRecord:
    step: str
    label: str
    seconds: float
    cached: bool
    result: dict[str, Any] = field(default_factory=dict)
    finished: float = 0.0  # epoch seconds when the step finished


def _hash_path(h, path: Path) -> None:
    if path.is_file():
        h.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not child.name.endswith(RECORD_SUFFIX):
                h.update(str(child.relative_to(path)).encode())
                _hash_path(h, child)


def _input_paths(params: BaseModel) -> list[Path]:
    data = params.model_dump()
    out: list[Path] = []
    for key, value in data.items():
        if key == "output":
            continue
        values = value if isinstance(value, list) else [value]
        out += [Path(v) for v in values if isinstance(v, Path)]
    return out


def cache_key(step: str, params: BaseModel) -> str:
    """Step name + parameters + content of every existing input file or folder."""
    h = hashlib.sha256(step.encode())
    h.update(params.model_dump_json().encode())
    for path in _input_paths(params):
        if path.exists():
            _hash_path(h, path)
    return h.hexdigest()


def record_path(params: BaseModel) -> Path:
    output = getattr(params, "output", None)
    if output is None:
        raise ValueError("a cached step needs an 'output' parameter")
    return Path(str(output) + RECORD_SUFFIX)


def lookup(step: str, params: dict[str, Any] | BaseModel, threads: int | None = None) -> StepRecord | None:
    """The finished record of this exact step (same parameters, same input content), if any."""
    return _prepare(step, params, threads)[3]


def _prepare(step: str, params: dict[str, Any] | BaseModel, threads: int | None):
    """Validated parameters, artifact store, cache key and, if the step already ran, its record.

    With an artifact store, inputs another pod or machine produced are fetched first: the key
    hashes their content."""
    model = _validated(step, params, threads)
    store = ArtifactStore.from_env()
    if store is not None:
        for path in _input_paths(model):
            store.pull(path)
    key = cache_key(step, model)
    return model, store, key, _read_record(step, model, key, store)


def _validated(step: str, params: dict[str, Any] | BaseModel, threads: int | None) -> BaseModel:
    spec = STEPS[step]
    model = spec.params.model_validate(params if isinstance(params, dict) else params.model_dump())
    if threads and "threads" in spec.params.model_fields and getattr(model, "threads") is None:
        model = model.model_copy(update={"threads": threads})
    return model


def output_manifest(output: Path) -> dict[str, int]:
    """Every file of a step's output and its size: what its record promises is there."""
    output = Path(output)
    if output.is_file():
        return {".": output.stat().st_size}
    return {str(p.relative_to(output)): p.stat().st_size for p in sorted(output.rglob("*")) if p.is_file()}


def _read_record(step: str, model: BaseModel, key: str, store: ArtifactStore | None) -> StepRecord | None:
    rec_file = record_path(model)
    if store is not None and not rec_file.is_file() and store.pull(rec_file):
        if json.loads(rec_file.read_text()).get("key") == key:
            store.pull(Path(model.output))  # the step finished elsewhere: fetch its output too
        else:
            rec_file.unlink()  # a record of other inputs: the step runs again here
    if not rec_file.is_file():
        return None
    saved = json.loads(rec_file.read_text())
    if saved.get("key") != key:
        return None
    if "outputs" in saved and output_manifest(model.output) != saved["outputs"]:
        log.warning("%s: output differs from its record (missing or truncated files): running the step again",
                    model.output)
        return None
    return StepRecord(step, saved["label"], saved["seconds"], True, saved["result"], saved.get("finished", 0.0))


def execute(step: str, params: dict[str, Any] | BaseModel, threads: int | None = None) -> StepRecord:
    """Run ``step`` (or return its cached result). Safe to call from any engine or process."""
    model, store, key, done = _prepare(step, params, threads)
    if done is not None:
        return done
    inject(step, model.output)
    t0 = time.perf_counter()
    result = STEPS[step].run(model)
    seconds = time.perf_counter() - t0
    payload = json.loads(result.model_dump_json())
    rec_file = record_path(model)
    finished = time.time()
    write_json(rec_file, {"key": key, "step": step, "label": str(rec_file.name), "seconds": seconds,
                          "finished": finished, "result": payload, "pid": os.getpid(),
                          "outputs": output_manifest(model.output)})
    if store is not None:  # the output first, its record last: a record in the store means complete
        store.push(Path(model.output))
        store.push(rec_file)
    return StepRecord(step, str(rec_file.name), seconds, False, payload, finished)


def result_of(call: StepCall, record: StepRecord) -> BaseModel:
    return STEPS[call.step].result.model_validate(record.result)


class Runner(Protocol):
    """What the distillation loop needs from an engine: run a batch of independent steps."""

    def map(self, calls: list[StepCall]) -> list[StepRecord]: ...


class LocalRunner:
    """No engine at all: a thread pool. For tests of the loop and for debugging."""

    def __init__(self, max_workers: int = 1, on_done: Callable[[StepCall, StepRecord], None] | None = None):
        self.max_workers = max_workers
        self.on_done = on_done

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        def one(call: StepCall) -> StepRecord:
            record = execute(call.step, call.params, call.threads)
            record.label = call.label
            if self.on_done:
                self.on_done(call, record)
            return record

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(one, calls))


class Pending(Exception):
    """Raised by :class:`PlanningRunner`: the loop needs these steps run before it can go on."""

    def __init__(self, calls: list[StepCall]):
        super().__init__(f"{len(calls)} step(s) to run: {calls[0].label} ...")
        self.calls = calls


class PlanningRunner:
    """Replays the loop from the step records and stops at the first batch that has not run.

    This is how a static workflow engine (dflow/Argo) runs a loop whose shape depends on its
    results: a planner step replays :func:`run_distill` (or the LAM pipeline) with this runner;
    finished batches come back from their records, the first unfinished one is returned as
    :class:`Pending` and fanned out by the engine, then the planner runs again. The loop is
    still written once, in Python, for every engine.
    """

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        records = [lookup(c.step, c.params, c.threads) for c in calls]
        missing = [c for c, r in zip(calls, records) if r is None]
        if missing:
            raise Pending(missing)
        for call, rec in zip(calls, records):
            # run by the engine, not read back from an earlier run: count its time in the report
            rec.label, rec.cached = call.label, False
        return records
