"""The full LAM pipeline: datasets (EMT labels, imported extxyz) → multi-task pretrain →
finetune (+ change-bias) → distill, end to end on tiny Cu/Au systems; and its config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import lam_config
from lamflow.flows.pipelines.lam.config import LamConfig
from lamflow.steps.errors import InputError


@pytest.mark.slow(seconds=10)
def test_pipeline_end_to_end(prefect_lam_run):
    run = prefect_lam_run.run
    report = json.loads((run / "lam-report.json").read_text())
    assert report["datasets"] == {"cu_bulk": 10, "cuau": 10, "alloy": 12}
    assert set(report["branch_rmse_f"]) == {"cu_bulk", "cuau"} and all(v > 0 for v in report["branch_rmse_f"].values())
    pretrain_input = json.loads((run / "lam/pretrain/input.json").read_text())
    assert pretrain_input["training"]["model_prob"] == {"cu_bulk": 2.0, "cuau": 1.0}
    assert "pretrained branch 'cuau'" in (run / "lam/finetune/train.log").read_text()
    assert report["finetuned"].endswith("lam/change-bias/model.pth")
    before, after = report["downstream_before_bias"], report["downstream"]
    assert after["n_frames"] == 12 and before["rmse_f"] > 0
    # change-bias refits the energy shift by least squares on these frames; forces are untouched
    assert after["rmse_e_per_atom"] <= before["rmse_e_per_atom"]
    assert after["rmse_f"] == pytest.approx(before["rmse_f"], rel=1e-6)
    assert report["distill"]["status"] in ("converged", "max_iterations")
    distill = json.loads((run / "distill/report.json").read_text())
    assert distill["teacher"] == report["finetuned"] and distill["final_student"]
    assert "pretrained branch cu_bulk" in prefect_lam_run.stdout


@pytest.mark.slow(seconds=10)
def test_a_multitask_checkpoint_teaches_through_its_head(tmp_path, prefect_lam_run):
    """``teacher: {model: pretrain.pt, head: cuau}``: the checkpoint labels through the branch
    itself (``DeepPot(head=...)``), the same numbers as that branch frozen."""
    import numpy as np

    from lamflow.steps.structures import deepmd_systems
    from lamflow.steps.teacher_label import TeacherLabelParams
    from lamflow.steps.teacher_label import run as teacher_label

    run = prefect_lam_run.run
    checkpoint = json.loads((run / "lam-report.json").read_text())["pretrained"]
    frozen = run / "lam/pretrain-heads/cuau/model.pth"
    data = deepmd_systems(run / "lam/data")[:1]
    labels = [teacher_label(TeacherLabelParams(output=tmp_path / name, model=model, head=head, systems=data,
                                               type_map=["Cu", "Au"]))
              for name, model, head in (("ckpt", checkpoint, "cuau"), ("frozen", frozen, None))]
    import dpdata

    a, b = (dpdata.LabeledSystem(str(r.systems[0]), fmt="deepmd/npy") for r in labels)
    assert labels[0].n_frames == labels[1].n_frames > 0
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-5)
    np.testing.assert_allclose(a["energies"], b["energies"], atol=1e-4)


@pytest.mark.slow(seconds=10)
def test_finetuning_a_given_multitask_checkpoint_starts_from_its_first_branch(tmp_path, prefect_lam_run):
    """``pretrain.model`` given, no ``finetune.branch``: the first branch, as documented (without
    --model-branch DeePMD-kit would re-initialise the fitting net)."""
    from lamflow.steps.errors import InputError
    from lamflow.steps.train import finetune_branch, model_branches

    checkpoint = Path(json.loads((prefect_lam_run.run / "lam-report.json").read_text())["pretrained"])
    assert list(model_branches(checkpoint)) == ["cu_bulk", "cuau"]
    assert finetune_branch(checkpoint, None) == "cu_bulk"
    assert finetune_branch(checkpoint, "cuau") == "cuau" and finetune_branch(checkpoint, "RANDOM") == "RANDOM"
    with pytest.raises(InputError, match=r"'alloy' is not a branch of model.ckpt.pt \(\['cu_bulk', 'cuau'\]\) nor RANDOM"):
        finetune_branch(checkpoint, "alloy")
    frozen = prefect_lam_run.run / "lam/pretrain-heads/cuau/model.pth"
    assert finetune_branch(frozen, None) is None  # a single-task model has no branch to pick
    # a config naming a branch the checkpoint lacks fails at load time, exit 2
    raw = lam_config(tmp_path)
    raw["pretrain"] = {"model": str(checkpoint)}
    raw["finetune"] = {**raw.get("finetune", {}), "branch": "alloy"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "lam", str(tmp_path / "c.yaml"),
                          "--workdir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "finetune.branch: 'alloy' is not a branch" in out.stderr, out.stderr[-1500:]


@pytest.mark.parametrize("change, message", [
    ({"finetune": {"dataset": "nope"}}, "finetune.dataset: no dataset named 'nope'"),
    ({"finetune": {"dataset": "alloy", "branch": "alloy"}}, "finetune.branch: 'alloy' is not a pretraining branch"),
    ({"datasets": [{"name": "a", "systems": ["x"], "import": {"files": ["y"]}}]}, "give exactly one of systems, label, import"),
    ({"distill": {"teacher": {"model": "t.pth"}}}, "distill.teacher: set by the pipeline"),
    ({"distill": {"iterations": [{"temps": ["300K"]}]}}, "distill.iterations[0].temps[0]"),
    ({"pretrain": {"numb_stepz": 3}}, "pretrain.numb_stepz"),
])
def test_config_errors_name_the_field(tmp_path, change, message):
    raw = lam_config(tmp_path)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key != "datasets" else value
    with pytest.raises(InputError) as err:
        LamConfig.parse(raw, tmp_path)
    assert message in str(err.value)


def test_the_summary_says_which_frames_measured_the_finetuned_model(tmp_path):
    """Without ``finetune.validation`` the finetuned model is measured on its own training frames,
    which says little about unseen ones: the summary says so, instead of a bare RMSE."""
    from rich.console import Console

    from lamflow.flows.pipelines.lam.pipeline import LamReport, summarize

    raw = lam_config(tmp_path)
    report = LamReport(name="x", run_dir=str(tmp_path), downstream={"rmse_f": 0.1, "rmse_e_per_atom": 0.002})
    for validation, says in ((None, "on its own training frames (finetune.validation names a held-out dataset)"),
                             ("cu_bulk", "2.00 meV/atom, on cu_bulk")):
        raw["finetune"]["validation"] = validation
        cfg = LamConfig.parse(raw, tmp_path)
        console = Console(record=True, width=400)
        summarize(console, cfg, report)
        assert says in console.export_text()
