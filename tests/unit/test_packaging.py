"""The package declares every folder it installs (a fresh install is quiet), and prefect.yaml's
entrypoints are module paths (a file path would import the flows package a second time)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(cfg["packages"])
    found = set()
    for name, folder in cfg["package-dir"].items():
        for sub in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if sub.name == "__pycache__" or not any(f.is_file() and f.name != ".DS_Store" for f in sub.iterdir()):
                continue
            rel = sub.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == declared


def test_prefect_entrypoints_are_module_paths():
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    for dep in deployments:
        module, _, attr = dep["entrypoint"].partition(":")
        assert not module.endswith(".py") and module.startswith("lamflow.flows."), dep["entrypoint"]
        import importlib

        assert callable(getattr(importlib.import_module(module), attr))
