"""Model versions without training: the config's rules, LAMBench's scores, the NVE drift, the
multi-task fine-tuning input, and the engines' entry points."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import version_config
from lamflow.flows.pipelines import load_any
from lamflow.flows.pipelines.version.config import VersionConfig
from lamflow.flows.pipelines.version.history import Score, Version, log_average
from lamflow.steps.errors import InputError
from lamflow.steps.evaluate import normalized, shifted_rmse_per_atom
from lamflow.steps.stability import ASE_TIME_UNIT_FS, score, thermo


def test_the_energy_shift_is_lambench_least_squares_per_element():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 30, size=(40, 2)).astype(float)
    noise = rng.normal(0, 0.05, 40)
    error = counts @ np.array([0.3, -1.2]) + noise  # a constant per element is no error after the shift
    direct, *_ = np.linalg.lstsq(counts, error, rcond=1e-10)
    expected = np.sqrt(np.mean(((error - counts @ direct) / counts.sum(1)) ** 2))
    assert shifted_rmse_per_atom(counts, error) == pytest.approx(expected)
    assert shifted_rmse_per_atom(counts, error) < np.sqrt(np.mean((noise / counts.sum(1)) ** 2)) * 1.01
    # an element absent from the set (a zero column) changes nothing; a NaN frame is left out
    wider = np.hstack([counts, np.zeros((40, 1))])
    assert shifted_rmse_per_atom(wider, error) == pytest.approx(expected)
    assert shifted_rmse_per_atom(counts, np.append(error[:-1], np.nan)) == pytest.approx(
        shifted_rmse_per_atom(counts[:-1], error[:-1]))
    assert normalized(0.02, 0.1) == pytest.approx(0.2) and normalized(0.3, 0.1) == 1.0 and normalized(0.1, 0) == 1.0


def test_a_versions_score_is_lambench_geometric_mean_half_energy_half_force():
    scores = [Score(dataset=d, head="a", n_frames=1, rmse_e_per_atom=1, rmse_e_per_atom_shifted=1, rmse_f=1,
                    normalized_e=e, normalized_f=f) for d, e, f in (("x", 0.1, 0.4), ("y", 0.4, 0.1))]
    v = Version(version=1, status="trained", parent=None, added=["a"], branches={"a": 1}, numb_steps=1,
                scores=scores)
    assert v.score == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
    assert log_average([]) is None and Version(**{**v.model_dump(), "scores": []}).score is None


def test_nve_drift_is_fitted_after_the_warmup_and_scored_in_lambench_units():
    log = "\n".join(["Step Temp PotEng KinEng TotEng Press Volume"] +
                    [f"{s} 300 -100 1 {-99 + (5.0 if s < 20 else 0.0) + 1e-3 * s} 0 1000" for s in range(0, 101, 10)] +
                    ["Loop time of 1.0 on 1 procs for 100 steps with 32 atoms"])
    rows = thermo("LAMMPS\n" + log)
    assert rows.shape == (11, 7) and rows[-1, 0] == 100
    assert ASE_TIME_UNIT_FS == pytest.approx(1 / __import__("ase").units.fs, rel=1e-4)
    assert score(None) == 5 and score(float("nan")) == 5 and score(5e-4) == 0 and score(5e-3) == pytest.approx(1)
    assert score(1e9) == 5 and math.isclose(score(0.0), 0)


def test_the_config_names_what_is_wrong(tmp_path):
    raw = version_config(tmp_path)
    cfg = VersionConfig.parse(raw, tmp_path)
    assert cfg.benchmark_head(cfg.benchmarks[0]) == "cu_bulk" and cfg.versions[1].start_from == "cuau"
    assert [cfg.benchmark_name(b) for b in cfg.benchmarks] == ["cu_test", "cuau_test"]
    twice = VersionConfig.parse({**raw, "benchmarks": [{"dataset": "cu_test"}, {"dataset": "cu_test", "head": "cuau"}]},
                                tmp_path)  # one standard dataset through two heads: files of their own
    assert [twice.benchmark_name(b) for b in twice.benchmarks] == ["cu_test.cu_bulk", "cu_test.cuau"]
    cases = [
        ({"benchmarks": [{"dataset": "cuau"}]}, "benchmarks[0].dataset: 'cuau' is trained on; a benchmark must be held out"),
        ({"versions": [{"dataset": "cuau"}]}, "versions[0].dataset: 'cuau' is already a branch of an earlier version"),
        ({"versions": [{"dataset": "alloy", "start_from": "broken"}]},
         "versions[0].start_from: 'broken' is not a branch of the previous versions ['cu_bulk', 'cuau'] nor RANDOM"),
        ({"versions": [{"dataset": "nope"}]}, "versions[0].dataset: no dataset named 'nope'"),
        ({"benchmarks": [{"dataset": "cu_test", "head": "cu_test"}]}, "benchmarks[0].head: 'cu_test' is not a branch"),
        ({"versions": [{"dataset": "alloy", "replay": 0}]}, "versions[0].replay: input should be greater than 0, got 0"),
        ({"benchmarks": [{"dataset": "cu_test"}, {"dataset": "cu_test", "head": "cu_bulk"}]},
         "benchmarks[1]: 'cu_test' through head 'cu_bulk' is listed twice"),
    ]
    for change, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            VersionConfig.parse({**raw, **change}, tmp_path)


def test_a_version_config_is_recognised_checked_and_planned_by_dflow(tmp_path):
    from lamflow.flows.engines.dflow.engine import PlanOP, export

    (tmp_path / "v.yaml").write_text(yaml.safe_dump(version_config(tmp_path)))
    pipeline, cfg = load_any(tmp_path / "v.yaml")
    assert pipeline.name == "version"
    check = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "config", "--check", str(tmp_path / "v.yaml")],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "valid version config" in check.stdout, check.stderr
    ip = {"flow": "version", "config": cfg.model_dump(mode="json", by_alias=True), "run_dir": str(tmp_path / "run"),
          "level": 1}
    first = PlanOP().execute(ip)
    # the perturbed structures (a light step) were made by the planner itself; their labelling fans out
    assert (tmp_path / "run" / "versions" / "data" / "cu_test-structures.result.json").is_file()
    assert first["step"] == "label" and first["calls"][0]["label"] == "data/cu_test/chunk-000"
    assert export("version", cfg, Path("/runs/v"))["kind"] == "Workflow"


def test_prefect_deploys_versions_locally_and_on_kubernetes():
    from lamflow.flows.engines.prefect.k8s import deployment_job_variables

    spec = yaml.safe_load(Path("prefect.yaml").read_text())
    names = {(d["entrypoint"].rsplit(":", 1)[1], d["name"]) for d in spec["deployments"]}
    assert {("version_flow", "local"), ("version_flow", "k8s-gpu")} <= names
    assert deployment_job_variables(Path("prefect.yaml"), "version/k8s-gpu")["runs_claim"] == "lamflow-runs"


def test_multitask_finetuning_refuses_branches_that_would_start_from_the_wrong_place(tmp_path):
    from lamflow.steps.train import Branch, TrainParams

    with pytest.raises(ValueError, match="'finetune_head' needs 'finetune_from'"):
        TrainParams(output=tmp_path / "t", type_map=["Cu"], template="dpa3", numb_steps=1, compress=False,
                    branches={"a": Branch(train=[tmp_path], finetune_head="b")})



