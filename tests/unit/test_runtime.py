"""library_env: the loader settings of LAMMPS / dp child processes."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from lamflow.steps import runtime


def test_mpich_and_cudart_are_found_where_their_wheels_put_them(monkeypatch, tmp_path):
    """Found through each distribution's file list, not ``sys.prefix/lib``: with ``pip --user``,
    ``--prefix`` or ``--target`` (a GPU node's image, a cluster module) the libraries are elsewhere,
    and a LAMMPS without them dies before its first line."""
    expected = {lib: next(Path(f.locate()).resolve() for f in metadata.files(dist) if f.name == lib)
                for dist, lib in (("mpich", "libmpi.so.12"), ("nvidia-cuda-runtime-cu12", "libcudart.so.12"))}
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # nothing under the interpreter's prefix
    env = runtime.library_env()
    preload = env["LD_PRELOAD"].split(":")
    for lib, path in expected.items():
        assert str(path) in preload, lib
        assert str(path.parent) in env["LD_LIBRARY_PATH"].split(":")
    assert len(preload) == len(set(preload))  # deepmd.lmp's own libcudart is not added twice


def test_every_child_gets_deepmds_loader_paths():
    """deepmd.lmp sets its paths (torch's lib/, its op library) when its module runs, which a
    plain import does once per process: the second LAMMPS of a run must get them too."""
    first, second = runtime.library_env(), runtime.library_env()
    assert first["LD_PRELOAD"] == second["LD_PRELOAD"]
    assert first["LD_LIBRARY_PATH"] == second["LD_LIBRARY_PATH"]
    import deepmd.lmp

    assert deepmd.lmp.get_op_dir() in second["LD_LIBRARY_PATH"].split(":")
