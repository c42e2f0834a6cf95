"""`lamflow report RUN_DIR`: the terminal summary and a self-contained HTML page of a real run."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest

from conftest import run_in_use

CLI = [sys.executable, "-m", "lamflow.flows.cli"]


@pytest.mark.slow(seconds=15)
def test_report_of_a_real_run_is_one_self_contained_page(prefect_cli_run):
    with run_in_use(prefect_cli_run) as run:
        out = subprocess.run([*CLI, "report", str(run)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads((run / "report.json").read_text())
        page = (run / "report.html").read_text()
    last = report["iterations"][-1]
    assert f"{last['rmse_f']:.4f}" in out.stdout and "html:" in out.stdout

    assert "<script" not in page and 'src="http' not in page and "<link" not in page  # nothing fetched
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    rows = re.findall(r"<tr(?: class=\"ok\")?><td>(\d+)</td>", page)
    assert rows == [str(it["iteration"]) for it in report["iterations"]]
    assert f"<td>{last['rmse_f']:.4f}</td>" in page and report["status"] in page
    assert report["speed_atoms"] == 32 and "32 atoms)" in page  # the timed cell: the 32-atom starting cell


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    out = subprocess.run([*CLI, "report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"lamflow: error: {tmp_path}: no report.json (nor distill/report.json): not a lamflow run directory"
    (tmp_path / "report.json").write_text('{"name": "x", "nope": 1}')
    out = subprocess.run([*CLI, "report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not a lamflow report" in out.stderr


@pytest.mark.slow(seconds=5)
def test_status_tells_where_a_run_stands(prefect_cli_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    with run_in_use(prefect_cli_run) as shared:
        shutil.copytree(shared, run, symlinks=True)
    (run / "iter-001" / "train-00.partial").mkdir()  # as a training killed mid-way leaves it
    out = subprocess.run([*CLI, "status", str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = len(list(run.rglob("*.result.json")))
    assert f"finished steps: {records} (" in out.stdout and records > 20
    assert "status: max_iterations" in out.stdout and "lamflow distill · tiny" in out.stdout
    assert "running or interrupted: iter-001/train-00.partial" in out.stdout
    bad = subprocess.run([*CLI, "status", str(tmp_path / "nope")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such run directory" in bad.stderr
