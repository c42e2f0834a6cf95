"""Inputs staged at submission (``lamflow submit --stage``, ``lamflow export --stage``).

A config written on a laptop names files on the laptop: the starting structures, datasets, the
teacher model, a DeePMD-kit template. A pod on the cluster sees none of them, and a manifest
that embeds the laptop's paths only works if someone rebuilds those paths on the shared volume
by hand. Staging uploads every file and folder the config names to Argo's artifact repository
(dflow's ``upload_artifact``: S3/MinIO, with the submitter's keys, which never enter the
Workflow) and rewrites the config so that each path points into ``RUN_DIR/inputs``. The
Workflow's first step, ``stage``, downloads them there (Argo fetches the artifact with the
repository's own credentials), so the manifest holds pod paths and an artifact key only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lamflow.flows.core.config import map_paths

#: the folder of the run directory that staged inputs land in
INPUTS = "inputs"


def stage_config(cfg: Any, run_dir: Path) -> tuple[Any, dict[str, Path]]:
    """``cfg`` with every existing local path it names moved to ``run_dir/inputs/NN-NAME``,
    and those names mapped to the local files. Names that are not local paths (a template's
    name, a path already in the run directory) are left as they are."""
    files: dict[str, Path] = {}
    placed: dict[Path, str] = {}

    def place(key: str, value: str) -> str:
        if key == "workdir" or not Path(value).is_absolute() or not Path(value).exists():
            return value
        local = Path(value).resolve()
        if local not in placed:
            name = f"{len(files):02d}-{local.name}"
            files[name] = local
            placed[local] = str(Path(run_dir) / INPUTS / name)
        return placed[local]

    raw = map_paths(cfg.model_dump(mode="json", by_alias=True), place)
    return type(cfg).model_validate(raw), files


def upload_inputs(files: dict[str, Path]) -> Any:
    """The files as one artifact in Argo's artifact repository (an ``inputs`` folder in it)."""
    from dflow import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / INPUTS
        folder.mkdir()
        for name, local in files.items():
            (folder / name).symlink_to(local)  # dflow's tar follows links: the content is uploaded
        cwd = os.getcwd()
        os.chdir(tmp)  # the artifact keeps paths relative to here: inputs/NN-NAME
        try:
            return upload_artifact(INPUTS)
        finally:
            os.chdir(cwd)
