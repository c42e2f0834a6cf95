"""Artifacts in S3: steps write their outputs and records to an S3-compatible server (moto, on
127.0.0.1), and a resumed run on a fresh machine — an empty local run directory — reads them
back instead of recomputing, fetching the inputs it needs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import write_cu_frames
from lamflow.flows.core.artifact_store import ArtifactStore
from lamflow.flows.core.execute import execute
from lamflow.steps.label import LabelParams
from lamflow.steps.perturb import PerturbParams

BUCKET = "lamflow-test"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "LAMFLOW_ARTIFACTS": f"s3://{BUCKET}/runs",
                       "LAMFLOW_ARTIFACTS_ROOT": str(tmp_path / "runs"), "LAMFLOW_S3_ENDPOINT": endpoint}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def _keys(client) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_a_run_writes_to_s3_and_a_resumed_run_on_a_fresh_machine_reads_back(s3, tmp_path):
    root = tmp_path / "runs"
    structure = write_cu_frames(tmp_path / "cu.extxyz", 1, seed=2)  # outside the root: stays local
    perturb = PerturbParams(structures=[structure], type_map=["Cu"], output=root / "run/structures",
                            n_per_structure=4, seed=3)
    first_p = execute("perturb", perturb)
    label = LabelParams(structures=first_p.result.systems, type_map=["Cu"], output=root / "run/emt")
    first = execute("label", label)
    assert not first.cached and first.result.n_frames == 4
    forces = np.load(next((root / "run/emt").rglob("force.npy")))

    keys = _keys(s3)
    assert {"runs/run/structures.result.json", "runs/run/emt.result.json"} <= keys
    assert any(k.startswith("runs/run/emt/") and k.endswith("force.npy") for k in keys)
    assert not any("cu.extxyz" in k for k in keys)

    shutil.rmtree(root)  # a fresh pod: nothing local
    again = execute("label", label)
    assert again.cached and again.result == first.result  # read back, not recomputed
    assert (root / "run/structures/Cu32/type.raw").is_file()  # its input was fetched to compute the key
    np.testing.assert_array_equal(np.load(next((root / "run/emt").rglob("force.npy"))), forces)
    assert not list(root.rglob("*.partial"))
    assert execute("perturb", perturb).cached and first_p.result.n_frames == 4

    # a changed input is a different step: it runs here and replaces the stored output
    changed = label.model_copy(update={"calculator_kwargs": {"asap_cutoff": True}})
    assert not execute("label", changed).cached


def test_no_store_without_the_variable_and_paths_outside_the_root_are_left_alone(tmp_path):
    assert ArtifactStore.from_env({}) is None
    store = ArtifactStore.from_env({"LAMFLOW_ARTIFACTS": "s3://b/p/", "LAMFLOW_ARTIFACTS_ROOT": str(tmp_path),
                                    "LAMFLOW_S3_ENDPOINT": "minio:9000"})
    assert store.url == "s3://b/p" and dict(store.options)["client_kwargs"] == {"endpoint_url": "http://minio:9000"}
    assert store.remote(tmp_path / "run" / "x.json") == "s3://b/p/run/x.json"
    assert store.remote(tmp_path.parent / "elsewhere") is None
