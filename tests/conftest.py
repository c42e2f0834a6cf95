"""Shared fixtures: tiny but real data and models, built once per test session.

Everything here runs the real libraries (ASE EMT labels, ``dp --pt train``, LAMMPS) on a
32-atom copper cell so that the whole suite stays within minutes on two CPU cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, TypeVar

import numpy as np
import pytest
import yaml


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
# Two xdist workers each run 2-thread steps on 2 cores: OpenMP threads that spin while they
# wait (libgomp's default) then burn the CPU the other worker needs — measured: twice the CPU
# time for the same suite. Passive waiting hands the core over at once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

T = TypeVar("T")

#: key → cap, applied wherever the key appears in a config (examples and docs scaled down to CPU
#: seconds: step counts, MD lengths, frame counts and iterations; nothing else changed)
CAPS = {"numb_steps": 20, "numb_steps_next": 10, "numb_steps_final": 10, "nsteps": 40, "trj_freq": 10, "perturbed_frames": 3,
        "max_candidates": 4, "validation_frames": 3, "max_iterations": 1, "consecutive": 1, "atoms": 100}


def shrink(node):
    """The config with every size capped (and one temperature per MD), nothing else changed."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in CAPS and isinstance(value, int):
                value = min(value, CAPS[key])
            elif key == "temps" and isinstance(value, list):
                value = value[:1]
            out[key] = shrink(value)
        return out
    if isinstance(node, list):
        return [shrink(v) for v in node]
    return node


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


def _labelled_extxyz(path: Path, n: int, seed: int) -> Path:
    """Cu/Au frames with EMT energies and forces, as a DFT code's extxyz export would hold them."""
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = ase.io.read(write_cu_frames(path, n, seed=seed, symbols_every="Au"), ":")
    for atoms in frames:
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    ase.io.write(path, frames)
    return path


def lam_config(tmp_path: Path) -> dict:
    """The whole LAM pipeline on Cu/Au: two EMT-labelled datasets and one imported "DFT" export →
    multi-task DPA-3 → finetune (+ change-bias) on the import → a 1-iteration distillation."""
    distill = {k: v for k, v in tiny_config(tmp_path).items() if k not in ("name", "type_map", "teacher")}
    distill["max_iterations"] = 1
    distill["convergence"] = {"accurate_ratio": 1.0, "consecutive": 1}
    write_cu_frames(tmp_path / "cu.extxyz", 1, seed=3)
    write_cu_frames(tmp_path / "cuau.extxyz", 1, seed=4, symbols_every="Au")
    _labelled_extxyz(tmp_path / "alloy-dft.extxyz", 12, seed=5)
    return {
        "name": "tiny-lam",
        "type_map": ["Cu", "Au"],
        "datasets": [
            {"name": "cu_bulk", "label": {"structures": ["cu.extxyz"], "perturbed_frames": 10}, "weight": 2.0},
            {"name": "cuau", "label": {"structures": ["cuau.extxyz"], "perturbed_frames": 10}},
            {"name": "alloy", "import": {"files": ["alloy-dft.extxyz"]}},
        ],
        "pretrain": {"template": "dpa3", "overrides": TINY_DPA3, "numb_steps": 40},
        "finetune": {"dataset": "alloy", "branch": "cuau", "change_bias": True, "numb_steps": 20},
        "distill": distill,
    }


def version_config(tmp_path: Path) -> dict:
    """Model versions on Cu/Au: version 1 from two EMT-labelled datasets, then an imported
    "DFT" export; between them a dataset with a NaN force, which verification must refuse.
    Two standard datasets, one scored through a branch that only exists from version 2 on."""
    from lamflow.steps.structures import read_labelled

    write_cu_frames(tmp_path / "cu.extxyz", 1, seed=3)
    write_cu_frames(tmp_path / "cuau.extxyz", 1, seed=4, symbols_every="Au")
    _labelled_extxyz(tmp_path / "alloy-dft.extxyz", 8, seed=5)
    bad = read_labelled(_labelled_extxyz(tmp_path / "bad.extxyz", 4, seed=6), ["Cu", "Au"])[0]
    bad.data["forces"][2, 5, 0] = np.nan
    bad.to("deepmd/npy", str(tmp_path / "bad"))
    label = {"perturbed_frames": 6}
    return {
        "name": "tiny-versions",
        "type_map": ["Cu", "Au"],
        "datasets": [
            {"name": "cu_bulk", "label": {"structures": ["cu.extxyz"], **label}, "weight": 2.0},
            {"name": "cuau", "label": {"structures": ["cuau.extxyz"], **label}},
            {"name": "broken", "systems": ["bad"]},
            {"name": "alloy", "import": {"files": ["alloy-dft.extxyz"]}},
            {"name": "cu_test", "label": {"structures": ["cu.extxyz"], "perturbed_frames": 4}},
            {"name": "cuau_test", "label": {"structures": ["cuau.extxyz"], "perturbed_frames": 4}},
        ],
        "pretrain": {"datasets": ["cu_bulk", "cuau"], "template": "dpa3", "overrides": TINY_DPA3, "numb_steps": 20},
        "versions": [{"dataset": "broken", "numb_steps": 10},
                     {"dataset": "alloy", "start_from": "cuau", "replay": 0.4, "numb_steps": 20}],
        "benchmarks": [{"dataset": "cu_test"}, {"dataset": "cuau_test", "head": "alloy"}],
        "stability": {"nsteps": 100},
        "efficiency": {"atoms": 100, "nsteps": 10},
        "resources": {"train": {"retries": 0}},
    }


def _shared(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """``make(folder)`` once per test session, shared by every pytest-xdist worker.

    The first worker to take the lock makes it in ``<session tmp>/<name>`` and pickles what
    ``make`` returned; the others wait and read that. Only the session's own temporary root is
    shared (xdist gives each worker a folder inside it), so nothing leaks between sessions.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, saved = root / name, root / f"{name}.pickle"
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not saved.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            value = make(folder)
            saved.with_suffix(".tmp").write_bytes(pickle.dumps(value))
            saved.with_suffix(".tmp").replace(saved)
        return pickle.loads(saved.read_bytes())


@pytest.fixture
def s3_endpoint():
    """An S3 server (moto) on 127.0.0.1 for the test: its ``http://host:port``. It takes any keys,
    so tests pass marker credentials and check where they end up."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@contextlib.contextmanager
def run_in_use(shared: SimpleNamespace, exclusive: bool = False):
    """Hold a shared run (from :func:`_cli_run`) while reading it, or, ``exclusive``, while
    running it again: a resume rewrites its report.json iteration by iteration, and a test on
    the other xdist worker must not read it half-way (CI once compared a half-written report
    with the CLI's). Yields the run directory."""
    with open(shared.base / "in-use.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield shared.run


def _cli_run(command: str, config_of: Callable[[Path], dict]) -> Callable[[Path], SimpleNamespace]:
    """``lamflow COMMAND config.yaml`` on the embedded Prefect engine, in a folder: a reference
    run that other engines must reproduce number for number."""
    def make(base: Path) -> SimpleNamespace:
        (base / "config.yaml").write_text(yaml.safe_dump(config_of(base)))
        cmd = [sys.executable, "-m", "lamflow.flows.cli", command, str(base / "config.yaml"),
               "--workdir", str(base / "run")]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert out.returncode in (0, 3), out.stdout[-3000:] + out.stderr[-3000:]  # 3: max_iterations reached
        return SimpleNamespace(base=base, cmd=cmd, stdout=out.stdout, run=base / "run", returncode=out.returncode)
    return make


@pytest.fixture(scope="session")
def prefect_cli_run(tmp_path_factory) -> SimpleNamespace:
    """`lamflow distill` of :func:`tiny_config` (2 iterations) on the embedded Prefect engine."""
    return _shared(tmp_path_factory, "prefect-cli", _cli_run("distill", tiny_config))


@pytest.fixture(scope="session")
def prefect_lam_run(tmp_path_factory) -> SimpleNamespace:
    """`lamflow lam` of :func:`lam_config` on the embedded Prefect engine."""
    return _shared(tmp_path_factory, "prefect-lam", _cli_run("lam", lam_config))


@pytest.fixture(scope="session")
def cu_frames(tmp_path_factory) -> Path:
    return _shared(tmp_path_factory, "cu-frames", lambda d: write_cu_frames(d / "cu.extxyz", 24))


@pytest.fixture(scope="session")
def cu_data(tmp_path_factory, cu_frames):
    from lamflow.steps import label

    return _shared(tmp_path_factory, "cu-emt", lambda d: label.run(label.LabelParams(
        structures=[cu_frames], type_map=["Cu"], output=d / "data", calculator="emt")))


@pytest.fixture(scope="session")
def students(tmp_path_factory, cu_data):
    """Two tiny se_e2_a models of different seeds; the first also compressed."""
    from lamflow.steps import train

    def make(d: Path) -> list:
        out = []
        for i, seed in enumerate((1, 2)):
            overrides = {"model": {**TINY_SE_E2_A["model"],
                                   "descriptor": {**TINY_SE_E2_A["model"]["descriptor"], "seed": seed},
                                   "fitting_net": {**TINY_SE_E2_A["model"]["fitting_net"], "seed": seed}}}
            out.append(train.run(train.TrainParams(
                output=d / f"student-{i}", type_map=["Cu"], template="se_e2_a", overrides=overrides,
                train=cu_data.systems, numb_steps=40, seed=seed, compress=(i == 0),
            )))
        return out

    return _shared(tmp_path_factory, "students", make)


@pytest.fixture(scope="session")
def explored(tmp_path_factory, students, cu_frames):
    from lamflow.steps import explore

    return _shared(tmp_path_factory, "explore", lambda d: explore.run(explore.ExploreParams(
        output=d / "md", models=[students[0].model, students[1].model], type_map=["Cu"],
        structure=cu_frames, temps=[300, 900], nsteps=200, trj_freq=10,
    )))


def assert_same_distillation(ours: dict, reference: dict) -> None:
    """Two distillation reports of one config (another engine, a resumed run) agree: the same
    outcome and counts in every iteration, the same force RMSE to 1e-6 (same seeds)."""
    assert ours["status"] == reference["status"]
    for a, b in zip(ours["iterations"], reference["iterations"], strict=True):
        for key in ("n_frames", "n_selected", "labels_added", "n_train_frames", "accurate_ratio", "failed_tasks"):
            assert a[key] == b[key], key
        assert a["rmse_f"] == pytest.approx(b["rmse_f"], rel=1e-6)


def assert_same_lam(run: Path, reference: Path) -> dict:
    """Two LAM pipeline runs of one config agree stage by stage; returns ``run``'s lam report."""
    ours, theirs = (json.loads((r / "lam-report.json").read_text()) for r in (run, reference))
    assert ours["datasets"] == theirs["datasets"]
    assert ours["branch_rmse_f"] == pytest.approx(theirs["branch_rmse_f"], rel=1e-6)
    for key in ("rmse_f", "rmse_e_per_atom", "n_frames"):
        assert ours["downstream"][key] == pytest.approx(theirs["downstream"][key], rel=1e-6), key
    mine, ref = (json.loads((r / "distill/report.json").read_text()) for r in (run, reference))
    assert mine["teacher"] == ours["finetuned"]
    assert_same_distillation(mine, ref)
    return ours


def _slow_seconds(item) -> float:
    mark = item.get_closest_marker("slow")
    return -1.0 if mark is None else float(mark.kwargs.get("seconds", 60))


def pytest_collection_modifyitems(config, items) -> None:
    """Slow end-to-end tests first, longest first, so that under pytest-xdist they run side by
    side on both workers while the many short tests fill the gaps (instead of one long test
    running alone at the end). ``@pytest.mark.slow(seconds=…)`` is a rough estimate, reference
    runs included, that orders them; nothing asserts on it.

    xdist starts each worker with two consecutive tests (``--maxschedchunk 1`` then hands out
    one at a time), so the shortest slow test is moved to second place: the longest test shares
    its worker with it, not with the second longest.
    """
    items.sort(key=_slow_seconds, reverse=True)  # stable: file order within equal estimates
    slow = [i for i, item in enumerate(items) if _slow_seconds(item) >= 0]
    if len(slow) > 2:
        items.insert(1, items.pop(slow[-1]))


def _version_run(base: Path) -> SimpleNamespace:
    """`lamflow version` of :func:`version_config`: version 2's training is made to fail once on
    the dflow engine (an Argo workflow in dflow's debug mode, each step a process; the run stops,
    version 1 stays current), then the same command on the embedded Prefect engine (the default)
    reads back what dflow's steps finished and trains only what is missing."""
    (base / "config.yaml").write_text(yaml.safe_dump(version_config(base)))
    faults = base / "faults.yaml"
    faults.write_text(yaml.safe_dump([{"step": "train", "where": "v002/train", "times": 1}]))
    cmd = [sys.executable, "-m", "lamflow.flows.cli", "version", str(base / "config.yaml"), "--workdir",
           str(base / "run")]
    failed = subprocess.run([*cmd, "--engine", "dflow"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "LAMFLOW_FAULTS": str(faults)})
    after_failure = json.loads((base / "run" / "versions.json").read_text())
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return SimpleNamespace(base=base, run=base / "run", failed=failed, after_failure=after_failure, resumed=resumed,
                           history=json.loads((base / "run" / "versions.json").read_text()))


@pytest.fixture(scope="session")
def version_run(tmp_path_factory) -> SimpleNamespace:
    """The model-versions run every test of tests/e2e/test_versions.py reads (made once per session)."""
    return _shared(tmp_path_factory, "version-run", _version_run)
