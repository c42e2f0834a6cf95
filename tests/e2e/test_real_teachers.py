"""Real large atomic models as labellers and as distillation teachers.

SevenNet-0 and CHGNet are universal potentials trained on DFT (MPtrj) whose weights ship inside
their wheels. Tiny 8-atom silicon cells keep each end-to-end loop within a minute or two on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_SE_E2_A, write_cu_frames

from lamflow.steps import calculators, label
from lamflow.steps.calculators import make_calculator
from lamflow.steps.errors import InputError
from lamflow.steps.speed import SpeedParams
from lamflow.steps.speed import run as speed_run

UNIVERSAL = ["sevenn", "chgnet"]


def si_frames(path: Path, n: int, seed: int = 0, rattle: float = 0.05) -> Path:
    """``n`` rattled, slightly strained 8-atom diamond Si cells."""
    import ase.io
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Si", "diamond", a=5.43 * (1 + rng.uniform(-0.02, 0.02)), cubic=True)
        atoms.rattle(rattle, seed=seed * 100 + i)
        frames.append(atoms)
    ase.io.write(path, frames)
    return path


@pytest.mark.parametrize("name", UNIVERSAL)
def test_universal_potential_labels_are_its_own_numbers(tmp_path, name, capfd):
    frames = si_frames(tmp_path / "si.extxyz", 3)
    r = label.run(label.LabelParams(structures=[frames], type_map=["Si"], calculator=name,
                                    output=tmp_path / "lab"))
    assert not capfd.readouterr().out  # CHGNet's "initialized with … parameters" stays out of the terminal
    assert r.n_frames == 3 and r.n_dropped == 0
    import ase.io
    import dpdata

    got = dpdata.LabeledSystem(str(r.systems[0]), fmt="deepmd/npy")
    atoms = ase.io.read(frames, index=2)
    atoms.calc = make_calculator(name)
    assert got["energies"][2] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(got["forces"][2], atoms.get_forces(), atol=1e-4)
    assert "virials" in got.data and np.all(np.isfinite(got["virials"]))
    # real physics, not a stub: a rattled crystal has forces that sum to ~zero but are not zero
    assert np.abs(got["forces"]).max() > 0.05 and np.abs(got["forces"][2].sum(axis=0)).max() < 1e-3


def test_missing_calculator_package_is_one_line(monkeypatch):
    real = calculators.importlib.util.find_spec
    monkeypatch.setattr(calculators.importlib.util, "find_spec",
                        lambda mod, *a: None if mod == "chgnet" else real(mod, *a))
    with pytest.raises(InputError, match=r"calculator 'chgnet' needs the chgnet package.*lamflow\[lam\]"):
        calculators.check_calculator("chgnet", "teacher.calculator")
    with pytest.raises(InputError, match="no module named 'nowhere'"):
        calculators.check_calculator("nowhere.calc:Calc")


def test_teacher_speed_in_ase_is_per_atom_step(tmp_path):
    r = speed_run(SpeedParams(calculator="emt", structure=write_cu_frames(tmp_path / "cu.extxyz", 1),
                              type_map=["Cu"], output=tmp_path / "speed", nsteps=100))
    assert r.engine == "ase" and r.natoms == 32 and r.timesteps_per_second > 0
    assert r.us_per_atom_step == pytest.approx(1e6 / (r.timesteps_per_second * 32))
    assert json.loads((tmp_path / "speed/speed.json").read_text())["nsteps"] == 10
    # min_atoms times the teacher on the supercell LAMMPS times the student on
    big = speed_run(SpeedParams(calculator="emt", structure=tmp_path / "cu.extxyz", type_map=["Cu"],
                                output=tmp_path / "speed-big", nsteps=100, min_atoms=100))
    assert big.natoms == 32 * 4


def calculator_teacher_config(base: Path, name: str) -> dict:
    si_frames(base / "start.extxyz", 1, seed=7, rattle=0.02)
    return {
        "name": f"si-{name}",
        "type_map": ["Si"],
        "teacher": {"calculator": name},
        "student": {"template": "se_e2_a", "numb_steps": 40, "numb_steps_next": 20, "compress": False,
                    "overrides": TINY_SE_E2_A},
        "configurations": {"files": ["start.extxyz"]},
        "initial_data": {"perturbed_frames": 6, "teacher_md": {"temps": [300, 900], "nsteps": 40, "trj_freq": 20}},
        "iterations": [{"temps": [300], "nsteps": 60, "trj_freq": 10}],
        "selection": {"trust_lo": 0.0001, "trust_hi": 50.0, "max_candidates": 4, "validation_frames": 3},
        "convergence": {"accurate_ratio": 1.0, "consecutive": 1},
        "max_iterations": 1,
        "label_chunk_size": 3,
    }


@pytest.mark.slow(seconds=120)
@pytest.mark.parametrize("name", UNIVERSAL)
def test_universal_potential_is_distilled_by_the_loop(tmp_path, name):
    """``teacher: {calculator: NAME}``: two students drive the MD, their deviation selects, the
    universal potential labels the initial data, the candidates and the validation frames."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(calculator_teacher_config(tmp_path, name)))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(tmp_path / "config.yaml"),
                          "--engine", "local", "--workdir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode in (0, 3), out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["teacher"] == name and report["teacher_engine"] == "ase" and report["teacher_speed"] > 0
    (it,) = report["iterations"]
    assert it["n_frames"] == 6  # 60 steps dumped every 10, the starting cell not counted
    assert it["labels_added"] == 4 and it["n_eval_frames"] == 3 and it["rmse_f"] > 0
    assert it["n_train_frames"] == 6 + 2 * 2 + 4  # rattled copies, teacher MD (2 temps × 2 frames), labels
    assert it["speed_ratio"] > 0 and it["student_us_per_atom_step"] > 0
    # two students (the ensemble a calculator teacher needs), their deviation in LAMMPS
    assert (run / "init/train-01").is_dir()
    assert "model_devi.out" in {p.name for p in (run / "iter-000/explore/task-000/task.000").iterdir()}
    # the teacher's labels are the universal potential's own numbers
    import dpdata

    (system,) = [p.parent for p in (run / "iter-000/label").rglob("type.raw")][:1]
    got = dpdata.LabeledSystem(str(system), fmt="deepmd/npy")
    atoms = got.to("ase/structure")[0]
    atoms.calc = make_calculator(name)
    np.testing.assert_allclose(got["forces"][0], atoms.get_forces(), atol=1e-4)
    assert "teacher in ASE" in " ".join(out.stdout.split())  # rich wraps lines


def refused_before_any_work(tmp_path: Path, cfg: dict) -> str:
    """``lamflow distill`` of ``cfg`` ends with one line on stderr and exit 2, and starts no work;
    returns that line for the test's own message check."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(tmp_path / "config.yaml"),
                          "--engine", "local", "--workdir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "init").exists()  # no work started
    return out.stderr


def test_overlapping_atoms_in_a_starting_cell_are_bad_input(tmp_path):
    import ase.io

    cfg = calculator_teacher_config(tmp_path, "emt")  # writes start.extxyz
    atoms = ase.io.read(tmp_path / "start.extxyz")
    atoms.positions[1] = atoms.positions[0] + [0.01, 0, 0]
    ase.io.write(tmp_path / "start.extxyz", atoms)
    si_frames(tmp_path / "ok.extxyz", 1)
    cfg["configurations"]["files"] = ["ok.extxyz", "start.extxyz"]
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "start.extxyz (configurations.files[1]): frame 0: atoms 0 (Si) and 1 (Si) are 0.010 Å apart" in stderr


def test_a_molecule_a_thin_slab_and_a_barostat_on_a_turned_slab_are_bad_input(tmp_path):
    """lamflow's MD runs every cell periodic: a frame without a cell cannot run, a slab whose vacuum
    is thinner than the student's cut-off would see its own other side, and a barostat holds a
    slab in its plane only when its vacuum lies along c. Each is one line before any work (it
    used to be found by the teacher's speed step, or not at all)."""
    import ase.io
    from ase.build import fcc111, molecule
    from ase.geometry import permute_axes

    cfg = calculator_teacher_config(tmp_path, "emt")
    cfg["type_map"] = ["C", "H", "O", "Cu"]
    cfg["initial_data"].pop("teacher_md")
    ase.io.write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    cfg["configurations"]["files"] = ["ethanol.xyz"]
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "ethanol.xyz (configurations.files[0]): has no periodic cell (a molecule or a cluster?)" in stderr

    ase.io.write(tmp_path / "slab.extxyz", fcc111("Cu", size=(2, 2, 3), vacuum=2.0))  # 4 Å between the faces
    cfg["configurations"]["files"] = ["slab.extxyz"]
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "slab.extxyz (configurations.files[0]): frame 0: not periodic along c, and only 4.0 Å of vacuum" in stderr
    assert "(cut-off 5 Å)" in stderr and "atoms.center(vacuum=2.5, axis=2)" in stderr  # TINY_SE_E2_A's rcut

    # a barostat holds a slab in its plane (LAMMPS' x and y), so its vacuum must lie along c
    ase.io.write(tmp_path / "slab.extxyz", permute_axes(fcc111("Cu", size=(2, 2, 3), vacuum=3.0), [2, 0, 1]))
    cfg["iterations"] = [{"temps": [300], "nsteps": 60, "trj_freq": 10},
                         {"ensemble": "npt", "temps": [300], "nsteps": 60, "trj_freq": 10}]
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "iterations[1].ensemble: " in stderr and "slab.extxyz (configurations.files[0]): npt: not periodic " \
        "along a: a barostat holds the pressure of a bulk cell, or in the plane of a slab" in stderr


def test_a_calculator_that_cannot_evaluate_a_later_starting_file_is_bad_input(tmp_path):
    """The teacher is probed on every starting file's elements, not only the first's: EMT knows
    Cu and not W, and its label step would drop every W frame (as it drops a failed SCF) while
    the students explored tungsten they had never seen."""
    import ase.io
    from ase.build import bulk

    cfg = calculator_teacher_config(tmp_path, "emt")
    cfg["type_map"] = ["Cu", "W"]
    cfg["initial_data"].pop("teacher_md")
    ase.io.write(tmp_path / "cu.extxyz", bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2))
    ase.io.write(tmp_path / "w.extxyz", bulk("W", "bcc", a=3.16, cubic=True).repeat(2))
    cfg["configurations"]["files"] = ["cu.extxyz", "w.extxyz"]
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "teacher.calculator: 'emt' could not evaluate w.extxyz: No EMT-potential for W" in stderr


def test_teacher_md_frames_carry_the_teachers_own_labels(tmp_path, students, cu_frames):
    """A DeePMD-kit teacher drives the MD through its ASE calculator; each kept frame holds the
    model's energy and forces at that geometry, and the trajectory moved away from the start."""
    import dpdata

    from lamflow.steps.inference import eval_frames, load_model, model_type_indices
    from lamflow.steps.label_md import LabelMDParams
    from lamflow.steps.label_md import run as label_md_run

    model = students[1].model
    r = label_md_run(LabelMDParams(structures=[write_cu_frames(tmp_path / "one.extxyz", 1)], type_map=["Cu"],
                                   output=tmp_path / "md", calculator="deepmd",
                                   calculator_kwargs={"model": str(model)}, temps=[300, 600], nsteps=20,
                                   trj_freq=5, ensemble="npt"))
    assert r.n_frames == 8 and r.n_trajectories == 2 and r.n_stopped == 0
    got = dpdata.LabeledSystem(str(r.systems[0]), fmt="deepmd/npy")
    dp = load_model(model)
    types = model_type_indices(dp, list(got["atom_names"]), got["atom_types"], "md")
    e, f, _ = eval_frames(dp, got["coords"].reshape(8, -1), got["cells"].reshape(8, 9), types, [7])
    assert got["energies"][7] == pytest.approx(e[0], abs=1e-5)
    np.testing.assert_allclose(got["forces"][7], f[0], atol=1e-5)
    assert not np.allclose(got["cells"][0], got["cells"][7])  # the barostat moved the cell


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with a GPU accepts device: cuda")
def test_a_gpu_teacher_on_a_machine_without_one(tmp_path):
    """``device: cuda`` where torch sees no GPU: one line and exit 2 before any work for a run on
    this machine; the same config sending its labelling elsewhere (a batch job, a deployment, a
    GPU pod) is probed on this machine's CPU and accepted (a login node submits to GPU nodes)."""
    cfg = calculator_teacher_config(tmp_path, "sevenn")
    cfg["teacher"]["calculator_kwargs"] = {"device": "cuda"}
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "teacher.calculator_kwargs: device 'cuda' asked, but torch finds no CUDA GPU" in stderr

    for where in ({"deployment": "step/k8s-gpu"}, {"gpu": 1}):
        cfg["resources"] = {"label": where}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        check = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "config", "--check",
                                str(tmp_path / "config.yaml")], capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, (where, check.stderr[-2000:])
    with pytest.raises(InputError, match="calculator_kwargs: device 'cuda:1' asked"):
        make_calculator("sevenn", {"device": "cuda:1"})


def test_calculator_kwargs_the_calculator_refuses_are_one_line_before_any_work(tmp_path, monkeypatch):
    """A device torch does not know, a model name the package does not ship: the calculator's
    constructor raises its own error (RuntimeError, ValueError), which is the user's kwargs to fix,
    not a traceback; running out of memory while building stays an error that a retry may cure."""
    cfg = calculator_teacher_config(tmp_path, "sevenn")
    cfg["teacher"]["calculator_kwargs"] = {"device": "gpu"}
    stderr = refused_before_any_work(tmp_path, cfg)
    assert "teacher.calculator_kwargs: 'sevenn' could not be built with {'device': 'gpu'" in stderr
    with pytest.raises(InputError, match=r"label.calculator_kwargs: 'sevenn' could not be built .*7net-nope"):
        make_calculator("sevenn", {"model": "7net-nope"}, field="label.calculator")
    (tmp_path / "greedy_calc.py").write_text(
        "class OutOfMemoryError(RuntimeError):\n    pass\n\n"
        "class Greedy:\n    def __init__(self, how='torch'):\n"
        "        raise OutOfMemoryError('CUDA out of memory') if how == 'torch' else MemoryError()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for how, kind in (("torch", RuntimeError), ("python", MemoryError)):
        with pytest.raises(kind) as caught:
            make_calculator("greedy_calc:Greedy", {"how": how})
        assert not isinstance(caught.value, InputError)
