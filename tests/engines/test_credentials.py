"""No credential leaves the submitting machine inside a Workflow or a job.

``lamflow submit`` runs against a stand-in Argo server on 127.0.0.1 that records every request,
with marker values for the Argo token and the S3 keys. The token must reach the server as the
request's bearer header (what authenticates the submission) and nowhere in the body; the S3
keys nowhere at all. The same for ``lamflow export`` and for a workflow built while dflow's
settings hold credentials (how ``resume`` builds it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

TOKEN, ACCESS, SECRET = "MARKER-ARGO-TOKEN-5521", "MARKERACCESSKEY9037", "MARKER-S3-SECRET-7714"


class _Recorder(BaseHTTPRequestHandler):
    """Answers a workflow creation the way Argo does (the created Workflow's metadata)."""

    def _record(self) -> str:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": body})
        return body

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self._record()
        answer = json.dumps({"metadata": {"name": "lamflow-distill-tiny-x7k2p", "namespace": "lamflow",
                                          "uid": "0000-1111"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):  # noqa: N802
        self._record()
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def argo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _env() -> dict[str, str]:
    return {**os.environ, "LAMFLOW_S3_ACCESS_KEY": ACCESS, "LAMFLOW_S3_SECRET_KEY": SECRET,
            "LAMFLOW_S3_ENDPOINT": "127.0.0.1:9", "LAMFLOW_S3_BUCKET_NAME": "runs"}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    return path


def test_submit_sends_the_token_as_its_header_and_no_credential_in_the_workflow(tmp_path, argo_server,
                                                                                s3_endpoint):
    """The marker S3 keys are used for real (the inputs are staged to an S3 server) and still
    reach no request to Argo; nor does any path of this machine."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                 region_name="us-east-1").create_bucket(Bucket="runs")
    host = f"http://127.0.0.1:{argo_server.server_address[1]}"
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "submit", str(_config(tmp_path)),
                          "--engine", "argo", "--host", host, "--token", f"Bearer {TOKEN}",
                          "--namespace", "lamflow"], capture_output=True, text=True,
                         env={**_env(), "LAMFLOW_S3_ENDPOINT": s3_endpoint}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "staged 1 input(s) as /runs/tiny/inputs: 00-start.extxyz" in out.stderr
    assert "lamflow-distill-tiny-x7k2p" in out.stdout
    [created] = [r for r in argo_server.received if r["method"] == "POST"]
    assert created["path"] == "/api/v1/workflows/lamflow"
    assert created["headers"].get("Authorization") == f"Bearer {TOKEN}"  # the token did its one job
    workflow = json.loads(created["body"])["workflow"]
    assert workflow["spec"]["templates"] and "script" in json.dumps(workflow)  # the step scripts were sent
    assert str(tmp_path) not in created["body"] and "/runs/tiny/inputs/00-start.extxyz" in created["body"]
    for marker in (TOKEN, ACCESS, SECRET):
        assert marker not in created["body"], f"{marker} leaked into the submitted Workflow"
    for request in argo_server.received:  # nor in any other request's body or URL
        assert ACCESS not in request["body"] + request["path"] and SECRET not in request["body"] + request["path"]
    assert "parallelism" not in workflow["spec"]  # a cluster's fan-out is not capped by the local max_workers


def test_export_writes_no_credential_and_caps_fan_out_only_when_asked(tmp_path):
    wf = tmp_path / "wf.yaml"
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "export", str(_config(tmp_path)),
                          "--engine", "argo", "--token", TOKEN, "--parallelism", "7", "-o", str(wf)],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = wf.read_text()
    assert not [m for m in (TOKEN, ACCESS, SECRET) if m in text]
    assert yaml.safe_load(text)["spec"]["parallelism"] == 7

    bad = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "export", str(_config(tmp_path)),
                          "--engine", "argo", "--parallelism", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--parallelism" in bad.stderr and "Traceback" not in bad.stderr


def test_a_workflow_built_while_dflow_holds_credentials_carries_none(tmp_path):
    """``resume`` applies the settings to dflow before it rebuilds the workflow."""
    from dflow import config as dflow_config
    from dflow import s3_config

    from lamflow.flows.engines.dflow.engine import ArgoSettings, build_workflow
    from lamflow.flows.pipelines.distill.config import DistillConfig

    settings = ArgoSettings(host="http://127.0.0.1:9", token=TOKEN, s3={"access_key": ACCESS, "secret_key": SECRET})
    saved = (dict(dflow_config), dict(s3_config))
    try:
        settings.apply()
        cfg = DistillConfig.model_validate(tiny_config(tmp_path))
        manifest = json.dumps(build_workflow("distill", cfg, tmp_path / "run", cluster=True, settings=settings)
                              .to_dict(), default=str)
        assert not [m for m in (TOKEN, ACCESS, SECRET) if m in manifest]
        assert dflow_config["token"] == TOKEN and s3_config["secret_key"] == SECRET  # put back for the submission
    finally:
        dflow_config.clear(), dflow_config.update(saved[0])
        s3_config.clear(), s3_config.update(saved[1])


def test_prefect_kubernetes_jobs_carry_no_credential_of_the_submitting_shell():
    """The job a Prefect kubernetes worker submits for a step: its env comes from prefect.yaml's
    job variables, never from the shell that deployed it."""
    env = {**_env(), "LAMFLOW_ARGO_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": SECRET}
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "prefect", "job", "step/k8s-gpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kind: Job" in out.stdout and "env" in out.stdout
    assert not [m for m in (TOKEN, ACCESS, SECRET) if m in out.stdout]
