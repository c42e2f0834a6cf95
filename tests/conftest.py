"""Shared fixtures: tiny but real data and models, built once per test session.

Everything here runs the real libraries (ASE EMT labels, ``dp --pt train``, LAMMPS) on a
32-atom copper cell so that the whole suite stays within minutes on two CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WATER = SHARED / "data" / "water"
DPA4_TEACHER = SHARED / "data" / "models" / "water-dpa4-demo.pt"

#: small enough to train in seconds, big enough to be a real se_e2_a.
TINY_SE_E2_A = {
    "model": {
        "descriptor": {"neuron": [8, 16], "axis_neuron": 4, "rcut": 5.0, "rcut_smth": 0.5},
        "fitting_net": {"neuron": [16, 16]},
    }
}
TINY_DPA3 = {
    "model": {
        "descriptor": {"repflow": {"n_dim": 16, "e_dim": 8, "a_dim": 8, "nlayers": 2,
                                   "e_rcut": 5.0, "e_rcut_smth": 4.5, "e_sel": 60, "a_sel": 20,
                                   "axis_neuron": 4}},
        "fitting_net": {"neuron": [16, 16]},
    }
}

os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_cu_frames(path: Path, n: int, seed: int = 0, symbols_every: str | None = None) -> Path:
    """``n`` rattled, slightly strained 32-atom fcc Cu cells (optionally every 4th atom Au)."""
    import ase.io
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.02, 0.02)), cubic=True).repeat(2)
        if symbols_every:
            atoms.symbols[::4] = symbols_every
        atoms.rattle(0.06, seed=seed * 1000 + i)
        frames.append(atoms)
    ase.io.write(path, frames)
    return path


def tiny_config(tmp_path) -> dict:
    """A 2-iteration distillation of a tiny EMT-trained teacher: ~1 min end to end."""
    write_cu_frames(tmp_path / "start.extxyz", 1, seed=11)
    return {
        "name": "tiny",
        "type_map": ["Cu"],
        "teacher": {"train": {
            "label": {"structures": ["start.extxyz"], "calculator": "emt", "perturbed_frames": 10},
            "template": "se_e2_a", "overrides": TINY_SE_E2_A, "numb_steps": 60}},
        "student": {"template": "se_e2_a", "numb_steps": 40, "numb_steps_next": 20, "compress": True,
                    "overrides": {"model": {"descriptor": {"neuron": [6, 12], "axis_neuron": 4, "rcut": 4.5},
                                            "fitting_net": {"neuron": [12, 12]}}}},
        "configurations": {"files": ["start.extxyz"]},
        "initial_data": {"perturbed_frames": 8},
        "iterations": [{"temps": [300], "nsteps": 100, "trj_freq": 10},
                       {"temps": [300, 600], "nsteps": 100, "trj_freq": 10}],
        "selection": {"trust_lo": 0.0001, "trust_hi": 50.0, "max_candidates": 8, "validation_frames": 5},
        "convergence": {"accurate_ratio": 1.0, "consecutive": 2},
        "max_iterations": 2,
        "label_chunk_size": 5,
    }


@pytest.fixture(scope="session")
def prefect_cli_run(tmp_path_factory):
    """`lamflow distill` of :func:`tiny_config` on the embedded Prefect engine, run once: the
    reference other engines must reproduce (same seeds, same steps, same numbers)."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import yaml

    base = tmp_path_factory.mktemp("prefect-cli")
    (base / "config.yaml").write_text(yaml.safe_dump(tiny_config(base)))
    cmd = [sys.executable, "-m", "lamflow.flows.cli", "distill", str(base / "config.yaml"), "--workdir", str(base / "run")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return SimpleNamespace(base=base, cmd=cmd, first=first, run=base / "run")


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lamflow")


@pytest.fixture(scope="session")
def cu_frames(work) -> Path:
    return write_cu_frames(work / "cu.extxyz", 24)


@pytest.fixture(scope="session")
def cu_data(work, cu_frames):
    from lamflow.steps import label

    return label.run(label.LabelParams(structures=[cu_frames], type_map=["Cu"],
                                       output=work / "cu-emt", calculator="emt"))


@pytest.fixture(scope="session")
def students(work, cu_data):
    """Two tiny se_e2_a models of different seeds; the first also compressed."""
    from lamflow.steps import train

    out = []
    for i, seed in enumerate((1, 2)):
        overrides = {"model": {**TINY_SE_E2_A["model"],
                               "descriptor": {**TINY_SE_E2_A["model"]["descriptor"], "seed": seed},
                               "fitting_net": {**TINY_SE_E2_A["model"]["fitting_net"], "seed": seed}}}
        out.append(train.run(train.TrainParams(
            output=work / f"student-{i}", type_map=["Cu"], template="se_e2_a", overrides=overrides,
            train=cu_data.systems, numb_steps=40, seed=seed, compress=(i == 0), threads=2,
        )))
    return out


@pytest.fixture(scope="session")
def explored(work, students, cu_frames):
    from lamflow.steps import explore

    return explore.run(explore.ExploreParams(
        output=work / "explore", models=[students[0].model, students[1].model], type_map=["Cu"],
        structure=cu_frames, temps=[300, 900], nsteps=200, trj_freq=10, threads=2,
    ))
