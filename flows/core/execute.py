"""Running a step from any engine: validated parameters in, typed record out, cached by key.

Every engine (Prefect task, dflow OP, Slurm job, plain loop, ``lamflow step``) calls
:func:`execute`. A step whose record exists with the same key — the hash of the step name, its
parameters and the identity of its input files, never its resources — is not run again. That
is what makes *retry* cheap on every engine: a failed iteration re-runs from the failed step,
nothing finished is recomputed. The step runs with the threads of its resources, which its
``dp`` and LAMMPS children inherit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lamflow.steps.errors import InputError
from lamflow.steps.registry import STEPS
from lamflow.steps.runtime import step_threads

from .artifact_store import ArtifactStore
from .errors import one_line
from .faults import inject
from .records import (StepRecord, cache_key, input_paths, producer_candidates, read_record, record_path,
                      write_record)
from .resources import Resources


def validated(step: str, params: dict[str, Any] | BaseModel) -> BaseModel:
    """The step's parameter model, or one line naming the field (exit 2 in the CLI)."""
    if step not in STEPS:
        raise InputError("step", f"unknown step '{step}'; expected one of {sorted(STEPS)}")
    spec = STEPS[step]
    if isinstance(params, spec.params):
        return params
    try:
        return spec.params.model_validate(params if isinstance(params, dict) else params.model_dump())
    except ValidationError as exc:
        raise InputError(f"step {step}", one_line(exc, model=spec.params)) from None


def _prepare(step: str, params: dict[str, Any] | BaseModel):
    """Validated parameters, artifact store, cache key and, if the step already ran, its record.

    With an artifact store, inputs another pod or machine produced are fetched first: the key
    covers them."""
    model = validated(step, params)
    store = ArtifactStore.from_env()
    if store is not None:
        for path in input_paths(model):
            _pull_input(store, path)
    key = cache_key(step, model)
    if store is not None:
        rec_file = record_path(model)
        if not rec_file.is_file() and store.pull(rec_file):
            if json.loads(rec_file.read_text()).get("key") == key:
                store.pull(Path(model.output))  # the step finished elsewhere: fetch its output too
            else:
                rec_file.unlink()  # a record of other inputs: the step runs again here
    return model, store, key, read_record(step, model, key)


def _pull_input(store: ArtifactStore, path: Path) -> None:
    """An input and the record of the step that produced it: the cache key names a produced
    input by its producer's key, so the record must be here for the key to be the same."""
    for output, record in producer_candidates(Path(path).resolve()):
        if store.remote(output) is None:
            break
        if store.pull(record):
            store.pull(output)
            return
    store.pull(path)


def lookup(step: str, params: dict[str, Any] | BaseModel) -> StepRecord | None:
    """The finished record of this exact step (same parameters, same inputs), if any."""
    return _prepare(step, params)[3]


def execute(step: str, params: dict[str, Any] | BaseModel, resources: Resources | None = None) -> StepRecord:
    """Run ``step`` (or return its record). Safe to call from any engine or process.

    ``resources``: the engine's (its threads apply); ``None`` for a direct call, which keeps the
    environment's thread settings.
    """
    model, store, key, done = _prepare(step, params)
    if done is not None:
        return done
    inject(step, model.output)
    t0 = time.perf_counter()
    with step_threads(resources.threads if resources else None):  # none given: the environment's
        result = STEPS[step].run(model)
    record = write_record(step, model, key, result, time.perf_counter() - t0)
    if store is not None:  # the output first, its record last: a record in the store means complete
        store.push(Path(model.output))
        store.push(record_path(model))
    return record
