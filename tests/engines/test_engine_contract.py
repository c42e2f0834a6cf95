"""The engine contract: every engine's runner, given the same calls, leaves the same records,
retries per the core policy, resumes from the records and never retries bad input. Adding an
engine means adding its runner here and passing these tests. (dflow runs steps through its OPs,
checked in test_core.py, and whole pipelines in test_dflow.py.)"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from conftest import write_cu_frames
from lamflow.flows.core.faults import ENV as FAULTS_ENV
from lamflow.flows.core.records import StepCall
from lamflow.flows.core.resources import Resources
from lamflow.steps.errors import InputError
from lamflow.steps.label import LabelParams, LabelResult
from lamflow.steps.perturb import PerturbParams


def _local():
    from lamflow.flows.engines.local import LocalRunner

    return LocalRunner(max_workers=2)


def _prefect():
    from lamflow.flows.engines.prefect.flows import PrefectRunner

    return PrefectRunner(max_workers=2)


RUNNERS = {"local": _local, "prefect": _prefect}


def _in_engine(name: str, fn):
    """Prefect's runner submits tasks, which need a flow around them."""
    if name != "prefect":
        return fn()
    from prefect import flow

    return flow(name="contract", persist_result=False)(fn)()


def _calls(tmp_path, frames, retries=0) -> list[StepCall]:
    res = Resources(retries=retries, retry_delay=0, threads=1)
    return [StepCall("label", LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / f"emt-{c}",
                                          chunk=c, n_chunks=2), f"emt/chunk-{c}", res) for c in range(2)]


@pytest.mark.parametrize("engine", sorted(RUNNERS))
def test_same_calls_same_records_and_a_second_run_reads_them_back(tmp_path, engine):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 3, seed=11)
    first = _in_engine(engine, lambda: RUNNERS[engine]().map(_calls(tmp_path, frames)))
    assert [r.label for r in first] == ["emt/chunk-0", "emt/chunk-1"] and not any(r.cached for r in first)
    assert all(isinstance(r.result, LabelResult) for r in first)
    assert sum(r.result.n_frames for r in first) == 3
    saved = {c: json.loads((tmp_path / f"emt-{c}.result.json").read_text()) for c in range(2)}
    again = _in_engine(engine, lambda: RUNNERS[engine]().map(_calls(tmp_path, frames)))
    assert all(r.cached for r in again) and [r.result for r in again] == [r.result for r in first]
    assert {c: json.loads((tmp_path / f"emt-{c}.result.json").read_text()) for c in range(2)} == saved


@pytest.mark.parametrize("engine", sorted(RUNNERS))
def test_a_failed_step_is_retried_and_bad_input_is_not(tmp_path, engine, monkeypatch):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 2, seed=12)
    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump([{"step": "label", "where": "emt-1", "times": 1, "kind": "error"}]))
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    records = _in_engine(engine, lambda: RUNNERS[engine]().map(_calls(tmp_path, frames, retries=1)))
    assert yaml.safe_load(faults.read_text())[0]["times"] == 0 and len(records) == 2

    bad = [StepCall("perturb", PerturbParams(structures=[tmp_path / "missing.extxyz"], type_map=["Cu"],
                                             output=tmp_path / "p"), "p", Resources(retries=3, retry_delay=60))]
    t0 = time.monotonic()
    with pytest.raises(Exception) as caught:
        _in_engine(engine, lambda: RUNNERS[engine]().map(bad))
    assert isinstance(caught.value, InputError) or "file not found" in str(caught.value)
    assert time.monotonic() - t0 < 30  # not retried: a retry would first wait 60 s
