"""The run directory mirrored in object storage (S3, MinIO, any fsspec URL), for both engines.

Steps run real programs (``dp``, LAMMPS) that read and write local files, so a step always works
in a local run directory. With an artifact store configured, the step runner (``execute.py``)
makes that directory a cache of the store:

* before a step: inputs missing here (another pod produced them) are fetched from the store;
* a step whose record is in the store (same key: same parameters, same input content) is not
  run — its record and output are fetched instead; that is how a resumed run on a fresh pod or
  machine skips finished work;
* after a step: its output, then its record, are uploaded. The record goes last, so a store
  never holds a record whose output is incomplete.

Configured from the environment, so it reaches every engine's pods unchanged::

    LAMFLOW_ARTIFACTS=s3://bucket/prefix      # where the mirror lives
    LAMFLOW_ARTIFACTS_ROOT=/runs              # local folder mirrored (default: $LAMFLOW_RUNS or ./runs)
    LAMFLOW_S3_ENDPOINT=http://minio:9000     # S3-compatible endpoint (MinIO); AWS needs none
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY # or LAMFLOW_S3_ACCESS_KEY / LAMFLOW_S3_SECRET_KEY

Paths outside the root (a teacher model in a home folder, say) are left alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamflow.steps.errors import InputError

ENV_URL, ENV_ROOT = "LAMFLOW_ARTIFACTS", "LAMFLOW_ARTIFACTS_ROOT"


@dataclass(frozen=True)
class ArtifactStore:
    url: str  # e.g. s3://bucket/prefix
    root: Path  # the local folder it mirrors
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ArtifactStore | None":
        env = dict(os.environ if env is None else env)
        url = env.get(ENV_URL)
        if not url:
            return None
        root = Path(env.get(ENV_ROOT) or env.get("LAMFLOW_RUNS") or "runs").resolve()
        options: dict[str, Any] = {}
        if url.startswith("s3://"):
            if env.get("LAMFLOW_S3_ENDPOINT"):
                endpoint = env["LAMFLOW_S3_ENDPOINT"]
                if "://" not in endpoint:
                    endpoint = "http://" + endpoint
                options["client_kwargs"] = {"endpoint_url": endpoint}
            if env.get("LAMFLOW_S3_ACCESS_KEY"):
                options.update(key=env["LAMFLOW_S3_ACCESS_KEY"], secret=env.get("LAMFLOW_S3_SECRET_KEY"))
        return cls(url.rstrip("/"), root, tuple(sorted(options.items(), key=lambda kv: kv[0])))

    @property
    def fs(self):
        import fsspec

        try:
            fs, _ = fsspec.core.url_to_fs(self.url, **dict(self.options))
        except ImportError as exc:
            raise InputError(ENV_URL, f"{self.url}: needs {exc.name or 'an fsspec backend'} "
                                      "(pip install 'lamflow[s3]')") from None
        return fs

    def remote(self, path: Path) -> str | None:
        """The store URL of a local path, or None for a path outside the mirrored root."""
        try:
            rel = Path(path).resolve().relative_to(self.root)
        except ValueError:
            return None
        return f"{self.url}/{rel.as_posix()}" if str(rel) != "." else self.url

    def push(self, path: Path) -> None:
        """Upload a file or a folder (recursively) to its place in the store."""
        target = self.remote(path)
        if target is None or not Path(path).exists():
            return
        if Path(path).is_dir():
            self._put_folder(Path(path), target)
        else:
            self.fs.put_file(str(path), target)

    def upload(self, folder: Path, key: str) -> str:
        """A folder that is not part of a run (a package for production) to ``URL/key``; its URL."""
        target = f"{self.url}/{key.strip('/')}"
        self._put_folder(Path(folder), target)
        return target

    def _put_folder(self, folder: Path, target: str) -> None:
        fs = self.fs
        if fs.exists(target):
            fs.rm(target, recursive=True)  # a rerun's output replaces the old one whole
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        fs.put([str(p) for p in files], [f"{target}/{p.relative_to(folder).as_posix()}" for p in files])

    def pull(self, path: Path) -> bool:
        """Fetch a file or folder from the store if it is missing here; True if it is here now."""
        path = Path(path)
        if path.exists():
            return True
        source = self.remote(path)
        if source is None:
            return False
        fs = self.fs
        if not fs.exists(source):
            return False
        if fs.isdir(source):
            scratch = path.with_name(path.name + ".partial")  # nobody reads a half-fetched folder
            shutil.rmtree(scratch, ignore_errors=True)
            for remote in fs.find(source):
                local = scratch / Path(remote[len(fs._strip_protocol(source)) + 1:])
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            os.replace(scratch, path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            fs.get_file(source, str(tmp))
            os.replace(tmp, path)
        return True
