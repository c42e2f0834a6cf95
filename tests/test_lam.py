"""The full LAM pipeline: datasets (EMT labels, imported extxyz) → multi-task pretrain →
finetune (+ change-bias) → distill, end to end on tiny Cu/Au systems; and its config errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import TINY_DPA3, tiny_config, write_cu_frames
from lamflow.flows.lam_config import parse_lam_config
from lamflow.steps.errors import InputError


def _labelled_extxyz(path, n: int, seed: int):
    """Cu/Au frames with EMT energies and forces, as a DFT code's extxyz export would hold them."""
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = ase.io.read(write_cu_frames(path, n, seed=seed, symbols_every="Au"), ":")
    for atoms in frames:
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    ase.io.write(path, frames)
    return path


def lam_config(tmp_path) -> dict:
    distill = {k: v for k, v in tiny_config(tmp_path).items() if k not in ("name", "type_map", "teacher")}
    distill["max_iterations"] = 1
    distill["convergence"] = {"accurate_ratio": 1.0, "consecutive": 1}
    write_cu_frames(tmp_path / "cu.extxyz", 1, seed=3)
    write_cu_frames(tmp_path / "cuau.extxyz", 1, seed=4, symbols_every="Au")
    _labelled_extxyz(tmp_path / "alloy-dft.extxyz", 12, seed=5)
    return {
        "name": "tiny-lam",
        "type_map": ["Cu", "Au"],
        "datasets": [
            {"name": "cu_bulk", "label": {"structures": ["cu.extxyz"], "perturbed_frames": 10}, "weight": 2.0},
            {"name": "cuau", "label": {"structures": ["cuau.extxyz"], "perturbed_frames": 10}},
            {"name": "alloy", "import": {"files": ["alloy-dft.extxyz"]}},
        ],
        "pretrain": {"template": "dpa3", "overrides": TINY_DPA3, "numb_steps": 40},
        "finetune": {"dataset": "alloy", "branch": "cuau", "change_bias": True, "numb_steps": 20},
        "distill": distill,
    }


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    (tmp_path / "lam.yaml").write_text(yaml.safe_dump(lam_config(tmp_path)))
    cmd = [sys.executable, "-m", "lamflow.flows.cli", "lam", str(tmp_path / "lam.yaml"), "--workdir", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
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
    assert "pretrained branch cu_bulk" in out.stdout


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
        parse_lam_config(raw, tmp_path)
    assert message in str(err.value)
