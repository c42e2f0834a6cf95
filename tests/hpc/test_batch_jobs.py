"""The batch executor's own rules, with dpdispatcher's Shell batch type (a background process, no
scheduler: fast, and on every machine); Slurm itself is in test_slurm.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from conftest import write_cu_frames
from lamflow.flows.core.faults import ENV as FAULTS_ENV
from lamflow.flows.core.records import StepCall
from lamflow.flows.core.resources import Resources
from lamflow.flows.engines.local import LocalRunner
from lamflow.steps.errors import InputError
from lamflow.steps.label import LabelParams


def _shell(**extra) -> Resources:
    return Resources.model_validate({"threads": 1, "retry_delay": 0,
                                     "executor": {"batch_type": "Shell", "check_interval": 0.2}, **extra})


def test_jobs_leave_the_records_of_in_process_steps_plus_their_job_ids(tmp_path):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 3, seed=11)
    calls = [StepCall("label", LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / f"job-{c}",
                                           chunk=c, n_chunks=2), f"emt/chunk-{c}", _shell()) for c in range(2)]
    jobs = LocalRunner(max_workers=1).map(calls)
    here = LocalRunner(max_workers=1).map([StepCall(c.step, c.params.model_copy(
        update={"output": tmp_path / f"here-{i}"}), c.label, Resources(threads=1)) for i, c in enumerate(calls)])
    assert [r.result.n_frames for r in jobs] == [r.result.n_frames for r in here] == [2, 1]
    assert all(r.job_id and not r.cached for r in jobs) and not any(r.job_id for r in here)
    assert json.loads((tmp_path / "job-0.result.json").read_text())["job_id"] == jobs[0].job_id
    assert (tmp_path / "job-0.job" / "task" / "params.json").is_file()
    again = LocalRunner(max_workers=1).map(calls)  # finished: read back, nothing submitted
    assert all(r.cached for r in again) and [r.job_id for r in again] == [r.job_id for r in jobs]


def test_a_failed_job_is_retried_per_retries_and_bad_input_is_not(tmp_path, monkeypatch):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 2, seed=12)
    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump([{"step": "label", "where": "emt", "times": 1, "kind": "error"}]))
    monkeypatch.setenv(FAULTS_ENV, str(faults))  # the job inherits it
    call = StepCall("label", LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "emt"), "emt",
                    _shell(retries=1))
    (record,) = LocalRunner().map([call])
    assert yaml.safe_load(faults.read_text())[0]["times"] == 0 and record.result.n_frames == 2

    faults.write_text(yaml.safe_dump([{"step": "label", "where": "again", "times": 1, "kind": "error"}]))
    failing = StepCall("label", call.params.model_copy(update={"output": tmp_path / "again"}), "again",
                       _shell(retries=0))
    with pytest.raises(RuntimeError) as caught:  # no retries: one line, its job, its logs
        LocalRunner().map([failing])
    assert "again: Shell job" in str(caught.value) and "failed (exit 1)" in str(caught.value)
    assert "again.job/submit/" in str(caught.value) and "/task/err" in str(caught.value)
    faults.write_text("[]\n")
    (fixed,) = LocalRunner().map([failing])  # the failed submission is forgotten: a new job
    assert fixed.result.n_frames == 2

    bad = StepCall("label", call.params.model_copy(update={"structures": [tmp_path / "missing.extxyz"],
                                                           "output": tmp_path / "bad"}), "bad", _shell(retries=3))
    with pytest.raises(InputError, match="file not found"):
        LocalRunner().map([bad])
    assert len(list((tmp_path / "bad.job" / "submit").iterdir())) == 1  # submitted once, not retried


def test_a_job_left_running_by_a_killed_run_is_adopted_not_submitted_twice(tmp_path, cu_data):
    """lamflow SIGKILLed while its job runs: the job goes on; the same step asked again waits for
    that job (dpdispatcher finds the submission by its hash) and records its id."""
    from conftest import TINY_SE_E2_A

    params = {"output": str(tmp_path / "student"), "type_map": ["Cu"], "template": "se_e2_a",
              "overrides": TINY_SE_E2_A, "train": [str(s) for s in cu_data.systems], "numb_steps": 300,
              "compress": False}
    (tmp_path / "params.json").write_text(json.dumps(params))
    script = (f"import json; from lamflow.flows.executors import run_step; from lamflow.flows.core.resources import "
              f"Resources; run_step('train', json.load(open({str(tmp_path / 'params.json')!r})), "
              f"Resources.model_validate({{'threads': 1, 'executor': {{'batch_type': 'Shell', 'check_interval': 0.2}}}}), "
              f"'train')")
    first = subprocess.Popen([sys.executable, "-c", script])
    submit = tmp_path / "student.job" / "submit"
    for _ in range(200):
        ids = [p for p in submit.glob("*/*_job_id") if p.read_text().strip()]  # created, then written
        if ids:
            break
        time.sleep(0.1)
    assert ids, "no job was submitted"
    job = ids[0].read_text().strip()
    first.kill()
    first.wait()
    assert not (tmp_path / "student.result.json").exists()  # the job is still training

    (record,) = LocalRunner().map([StepCall("train", params, "train", _shell())])
    assert record.job_id == job and not record.cached
    assert [p.read_text().strip() for p in submit.glob("*/*_job_id")] == [job]  # nothing submitted again
