"""Inputs staged at submission: `lamflow export --stage` uploads every file a config names to
the artifact repository (an S3 server, moto, on 127.0.0.1), and the manifest it writes holds
pod paths and the artifact's key, no path of the submitting machine. The workflow's first
step, ``stage``, puts the files where the rewritten config points."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import tiny_config
from lamflow.flows.engines.dflow.engine import StageOP
from lamflow.flows.engines.dflow.staging import stage_config
from lamflow.flows.pipelines.distill.config import DistillConfig

SCHEMA = Path(__file__).parents[1] / "data" / "argo-workflows.schema.json"  # Argo's api/jsonschema/schema.json
CLI = [sys.executable, "-m", "lamflow.flows.cli"]
BUCKET = "argo-artifacts"
ACCESS, SECRET = "stage-access-marker", "stage-secret-marker"


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    env = {**os.environ, "LAMFLOW_S3_ENDPOINT": s3_endpoint, "LAMFLOW_S3_ACCESS_KEY": ACCESS,
           "LAMFLOW_S3_SECRET_KEY": SECRET, "LAMFLOW_S3_BUCKET_NAME": BUCKET}
    return client, env


def test_export_stage_uploads_the_inputs_and_the_manifest_names_no_local_path(s3, tmp_path):
    client, env = s3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    out = subprocess.run([*CLI, "export", str(tmp_path / "config.yaml"), "--engine", "argo", "--stage",
                          "-o", str(tmp_path / "wf.yaml")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = (tmp_path / "wf.yaml").read_text()
    assert str(tmp_path) not in text and "pytest-of" not in text  # nothing of this machine...
    assert ACCESS not in text and SECRET not in text  # ...and none of its keys
    assert "/runs/tiny/inputs/00-" in text
    wf = yaml.safe_load(text)
    schema = json.loads(SCHEMA.read_text())
    schema = {**{k: v for k, v in schema.items() if k != "oneOf"},
              "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"}
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(wf))
    assert not errors, [f"{list(e.path)}: {e.message[:150]}" for e in errors[:5]]
    first = wf["spec"]["templates"][0]["steps"][0][0]
    assert first["name"] == "stage" and first["template"].startswith("stageop")
    key = first["arguments"]["artifacts"][0]["s3"]["key"]

    # the artifact holds each named file under inputs/, with its content
    blob = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]): m for m in tar.getmembers() if m.isfile()}
        staged = {p.parts[1]: tar.extractfile(m).read() for p, m in members.items() if p.parts[0] == "inputs"}
    assert staged["00-start.extxyz"] == (tmp_path / "start.extxyz").read_bytes()


def test_stage_step_puts_the_inputs_where_the_staged_config_points(tmp_path):
    cfg = DistillConfig.parse(tiny_config(tmp_path), tmp_path)
    staged_cfg, files = stage_config(cfg, Path("/runs/tiny"))
    assert list(files) == ["00-start.extxyz"] and files["00-start.extxyz"] == (tmp_path / "start.extxyz").resolve()
    dumped = staged_cfg.model_dump_json()
    assert str(tmp_path) not in dumped and "/runs/tiny/inputs/00-start.extxyz" in dumped

    # what the pod receives (the artifact's inputs/ folder), put into the run directory
    received = tmp_path / "artifact" / "inputs"
    received.mkdir(parents=True)
    (received / "00-start.extxyz").write_bytes((tmp_path / "start.extxyz").read_bytes())
    out = StageOP().execute({"inputs": received, "run_dir": str(tmp_path / "run")})
    assert out["files"] == ["00-start.extxyz"]
    assert (tmp_path / "run" / "inputs" / "00-start.extxyz").read_bytes() == (tmp_path / "start.extxyz").read_bytes()


def test_stage_without_an_artifact_repository_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMFLOW_S3_")}
    out = subprocess.run([*CLI, "export", str(tmp_path / "config.yaml"), "--engine", "argo", "--stage"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--stage" in out.stderr
    assert "LAMFLOW_S3_ENDPOINT" in out.stderr
    # `submit` stages by default: the same line, before any request, naming the way out
    out = subprocess.run([*CLI, "submit", str(tmp_path / "config.yaml"), "--engine", "argo", "--host",
                          "http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--no-stage" in out.stderr
