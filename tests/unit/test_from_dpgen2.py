"""``lamflow config --from-dpgen2``: a dpgen2 distillation input translated into a distill config.

The reference translation is bench/vs_dpgen2.py's: from one set of settings it writes the
dpgen2 input that dpgen2 runs (tests/e2e/test_vs_dpgen2.py) and the lamflow config of the same
distillation, aligned by hand (the factor of two in the trust levels, dpgen2's MD defaults).
The converter must find that lamflow config again from the dpgen2 input alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import pytest
import yaml

from conftest import REPO, write_cu_frames
from lamflow.flows.pipelines.distill.config import DistillConfig
from lamflow.flows.pipelines.distill.from_dpgen2 import translate
from lamflow.steps.errors import InputError

sys.path.insert(0, str(REPO / "bench"))
from vs_dpgen2 import Task, dpgen2_input, lamflow_config  # noqa: E402

CLI = [sys.executable, "-m", "lamflow.flows.cli"]


@pytest.fixture
def bench_task(tmp_path) -> Task:
    structures = write_cu_frames(tmp_path / "cu.extxyz", 3, seed=2)
    for name in ("teacher.pt", "teacher.pth"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "init").mkdir()
    return Task(type_map=["Cu"], structures=[structures], teacher_name="t", teacher_checkpoint=tmp_path / "teacher.pt",
                teacher=tmp_path / "teacher.pth", init_data=[tmp_path / "init"], student_template="se_e2_a",
                student_overrides={}, numb_steps=300, numb_steps_next=150,
                grid={"ensemble": "npt", "temps": [300.0, 600.0], "pressures": [1.0, 100.0], "nsteps": 400,
                      "trj_freq": 20, "dt": 0.002, "tau_t": 0.1, "tau_p": 0.5},
                trust_lo=0.3, trust_hi=1.0, max_candidates=12, accurate_ratio=0.85, max_iterations=4)


def test_the_benchs_dpgen2_input_translates_into_the_benchs_lamflow_config(tmp_path, bench_task):
    work = tmp_path / "work"
    work.mkdir()
    source = dpgen2_input(bench_task, work)
    ours = yaml.safe_load(lamflow_config(bench_task, work).read_text())
    t = translate(json.loads(source.read_text()), source, work)
    got = t.config
    assert got["type_map"] == ours["type_map"]
    assert (work / got["teacher"]["model"]).resolve() == Path(ours["teacher"]["model"]).resolve()
    assert got["student"]["numb_steps"] == ours["student"]["numb_steps"]
    assert got["student"]["numb_steps_next"] == ours["student"]["numb_steps_next"]
    assert got["student"]["init_from_previous"] is True
    assert got["iterations"] == [{k: v for k, v in ours["iterations"][0].items()}]
    for key in ("trust_lo", "trust_hi", "max_candidates"):
        assert got["selection"][key] == pytest.approx(ours["selection"][key]), key
    assert got["convergence"] == {"consecutive": ours["convergence"]["consecutive"],
                                  "accurate_ratio": ours["convergence"]["accurate_ratio"]}
    assert got["max_iterations"] == ours["max_iterations"]
    assert [(work / s).resolve() for s in got["initial_data"]["systems"]] == \
        [Path(s).resolve() for s in ours["initial_data"]["systems"]]
    assert any("trust levels doubled" in n for n in t.notes)
    # the starting cells: the bench wrote each frame as a POSCAR, which the pattern finds again
    (work / "config.yaml").write_text(yaml.safe_dump(got))
    cfg = DistillConfig.load(work / "config.yaml")
    assert len(cfg.configurations.files) == 3 and cfg.configurations.fmt == "vasp/poscar"


def test_the_cli_writes_the_config_and_names_what_did_not_translate(tmp_path):
    write_cu_frames(tmp_path / "cu.extxyz", 1, seed=3)
    (tmp_path / "train.json").write_text(json.dumps({"model": {}, "training": {"numb_steps": 1234}}))
    source = {
        "inputs": {"type_map": ["Cu"], "init_data_sys": []},
        "train": {"type": "dp-dist", "template_script": "train.json", "config": {"init_model_policy": "no"}},
        "explore": {"convergence": {"type": "adaptive-lower", "numb_candi_f": 30, "level_f_hi": 0.4,
                                    "n_checked_steps": 3, "conv_tolerance": 0.01},
                    "configurations": [{"type": "file", "files": ["cu.extxyz"]},
                                       {"type": "alloy", "lattice": ["fcc", 3.6]}],
                    "stages": [[{"type": "lmp-md", "Ts": [500]}, {"type": "lmp-md", "temps": [900], "ens": "nvt"}]]},
        "fp": {"type": "vasp", "task_max": 10},
    }
    (tmp_path / "input.json").write_text(json.dumps(source))
    out = subprocess.run([*CLI, "config", "--from-dpgen2", "input.json", "-o", "lam/config.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr  # -o names a folder that is not there
    (tmp_path / "lam").mkdir()
    out = subprocess.run([*CLI, "config", "--from-dpgen2", "input.json", "-o", "lam/config.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    written = (tmp_path / "lam" / "config.yaml").read_text()
    cfg = yaml.safe_load(written)
    # dpgen2's own defaults where lamflow's differ: nve, 100 steps, tau_t 0.05
    assert cfg["iterations"] == [{"ensemble": "nve", "temps": [500], "nsteps": 100, "trj_freq": 10, "dt": 0.001,
                                  "tau_t": 0.05}]
    # adaptive-lower: its levels on lamflow's scale (×2 for one student), its candidates, dpgen2's cap
    assert cfg["selection"] == {"trust_lo": "adaptive", "trust_hi": 0.8, "max_candidates": 30}
    assert cfg["convergence"] == {"consecutive": 2, "level_tolerance": 0.02} and cfg["max_iterations"] == 10
    assert cfg["student"] == {"template": "../train.json", "numb_steps": 1234, "init_from_previous": False}
    # the alloy configuration: its one cell (fcc, no replicate) made here, as dpgen2 makes it at submit
    assert cfg["configurations"] == {"files": ["../cu.extxyz", "confs/alloy-1/*.extxyz"]} and "teacher" not in cfg
    assert [p.name for p in (tmp_path / "lam" / "confs" / "alloy-1").iterdir()] == ["000.extxyz"]
    assert cfg["initial_data"] == {"systems": [], "perturbed_frames": 40}
    for said in ("fp.type 'vasp': lamflow's teacher is a DeePMD-kit model or an ASE calculator",
                 "explore.configurations[1] (type 'alloy'): 1 random 4-atom cells on fcc a = 3.6 Å written to "
                 "confs/alloy-1/*.extxyz",
                 "explore.stages[0][1] (type 'lmp-md'): an iteration explores one ensemble and MD length",
                 "explore.convergence.numb_candi_f 30 above fp.task_max 10: dpgen2 labels 10 of its candidates"):
        assert f"note: {said}" in out.stderr and said in written
    assert "check it with: lamflow config --check lam/config.yaml" in out.stderr


def test_an_input_that_is_not_dpgen2s_is_one_line(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"type_map": ["Cu"]}))
    with pytest.raises(InputError, match="is not a dpgen2 input: no inputs.type_map"):
        translate(json.loads((tmp_path / "x.json").read_text()), tmp_path / "x.json", tmp_path)


def test_dpgen2s_own_distillation_example_translates(tmp_path):
    """dpgen2's examples/ch4/input_dist.json (its executors left out): an lmp-md and an lmp-template
    task group in one stage, a TensorFlow teacher, a student that starts from a model."""
    source = {
        "inputs": {"type_map": ["H", "C"], "mass_map": [4, 12], "init_data_prefix": None,
                   "init_data_sys": ["CH4.POSCAR.01x01x01/02.md/sys-0004-0001/deepmd"], "_comment": "all"},
        "train": {"student_model_path": "student_model.pb", "type": "dp-dist",
                  "config": {"init_model_policy": "yes", "init_model_old_ratio": 0.5, "init_model_numb_steps": 200000,
                             "init_model_start_lr": 1e-4, "init_model_start_pref_e": 0.25,
                             "init_model_start_pref_f": 100, "_comment": "all"},
                  "template_script": "train.json", "_comment": "all"},
        "fp": {"type": "deepmd", "task_max": 2,
               "run_config": {"teacher_model_path": "teacher_model.pb", "type_map": ["H", "C"]}, "inputs_config": {}},
        "explore": {"type": "lmp", "config": {"teacher_model_path": "teacher_model.pb", "command": "lmp -var restart 0"},
                    "convergence": {"type": "fixed-levels", "conv_accuracy": 0.9, "level_f_lo": 0.05, "level_f_hi": 0.5},
                    "max_numb_iter": 2, "fatal_at_max": False, "output_nopbc": False, "configuration_prefix": None,
                    "configurations": [{"type": "file", "files": ["CH4.POSCAR.01x01x01/02.md/sys-0004-0001/deepmd"],
                                        "fmt": "deepmd/npy"}],
                    "stages": [[{"type": "lmp-md", "ensemble": "nvt", "nsteps": 50, "press": [1e0], "temps": [50],
                                 "trj_freq": 10, "conf_idx": [0], "n_sample": 3},
                                {"type": "lmp-template", "lmp": "template.lammps", "trj_freq": 10,
                                 "revisions": {"V_NSTEPS": [40], "V_TEMP": [100, 200]}, "conf_idx": [0], "n_sample": 3}]]},
    }
    t = translate(source, tmp_path / "input_dist.json", tmp_path)
    assert t.config["iterations"] == [{"ensemble": "nvt", "temps": [50], "nsteps": 50, "trj_freq": 10, "dt": 0.001,
                                       "tau_t": 0.05, "n_sample": 3}]
    assert t.config["selection"] == {"trust_lo": 0.1, "trust_hi": 1.0, "max_candidates": 2}
    assert t.config["student"] == {"template": "train.json", "init_from_previous": True, "numb_steps_next": 200000}
    assert t.config["configurations"] == {"files": ["CH4.POSCAR.01x01x01/02.md/sys-0004-0001/deepmd"],
                                          "fmt": "deepmd/npy"}
    assert t.config["max_iterations"] == 2
    assert sum("lmp-template" in n for n in t.notes) == 1
    assert any("dp convert-backend teacher_model.pb teacher_model.pth" in n for n in t.notes)
    assert any("student_model_path" in n for n in t.notes)


#: an lmp-template input as dpgen2's examples/chno has one: LAMMPS variables set from revision keys,
#: masses of its own, a bare 'pair_style deepmd' and 'dump dpgen_dump' for dpgen2 to fill in
DPGEN2_TEMPLATE = """variable        NSTEPS          equal V_NSTEPS
variable        TEMP            equal V_TEMP
variable        THERMO_FREQ     equal V_DUMPFREQ
units           metal
atom_style      atomic
boundary        p p p
read_data       conf.lmp
mass            1 63.546
pair_style      deepmd
pair_coeff      * *
timestep        0.001
velocity        all create ${TEMP} 1815191 mom yes rot yes dist gaussian
fix             1 all nve
fix             2 all temp/csvr ${TEMP} ${TEMP} 0.1 1305191
thermo          ${THERMO_FREQ}
dump            dpgen_dump
run             ${NSTEPS}
"""


def test_an_lmp_template_task_group_becomes_an_iteration_on_the_users_lammps_input(tmp_path):
    """dpgen2's lmp-template (its own LAMMPS input, the revisions, the dump interval) is an
    iteration of lamflow's that runs that input, revised by the same rules; a PLUMED one is left
    out with a note (DeePMD-kit's LAMMPS has no PLUMED); the written config loads."""
    write_cu_frames(tmp_path / "cu.extxyz", 2, seed=4)
    (tmp_path / "template.lammps").write_text(DPGEN2_TEMPLATE)
    group = {"type": "lmp-template", "sys_idx": [0], "n_sample": 2, "lmp": "template.lammps", "trj_freq": 50,
             "revisions": {"V_NSTEPS": [200], "V_TEMP": [300, 750], "V_DUMPFREQ": 100}}
    source = {"inputs": {"type_map": ["Cu"]},
              "explore": {"configurations": [{"type": "file", "files": ["cu.extxyz"]}],
                          "stages": [[group], [{**group, "plm": "plumed.dat"}]]}}
    (tmp_path / "out").mkdir()
    t = translate(source, tmp_path / "input.json", tmp_path / "out")
    assert t.config["iterations"] == [{"lammps_template": "../template.lammps", "trj_freq": 50, "n_sample": 2,
                                       "revisions": {"V_NSTEPS": [200], "V_TEMP": [300, 750], "V_DUMPFREQ": [100]}}]
    assert any("explore.stages[1][0] (type 'lmp-template') is left out: its PLUMED input (plumed.dat)" in n
               for n in t.notes)
    (tmp_path / "out" / "config.yaml").write_text(yaml.safe_dump({**t.config, "teacher": {"calculator": "emt"}}))
    cfg = DistillConfig.load(tmp_path / "out" / "config.yaml")
    assert cfg.iterations[0].lammps_template.resolve() == tmp_path / "template.lammps"
    assert [p["revisions"]["V_TEMP"] for p in cfg.iterations[0].task_points()] == [[300], [750]]
    from lamflow.flows.pipelines.distill.preflight import preflight

    preflight(cfg)  # the template passes the checks a run makes before any work
    (tmp_path / "template.lammps").write_text(DPGEN2_TEMPLATE.replace("read_data       conf.lmp", "read_data data.in"))
    with pytest.raises(InputError, match="has no 'read_data conf.lmp' line"):
        preflight(cfg)


def test_alloy_configurations_become_the_cells_dpgen2_would_have_made(tmp_path):
    """dpgen2's alloy configurations (its examples/almg's, written before configurations had a
    type; a diamond one; one on a lattice read from a file): the cells are made once, seeded, and
    listed as extxyz; dpgen2's diamond constant is half the cubic one; a bad lattice is one line."""
    ase.io.write(tmp_path / "POSCAR", ase.build.bulk("Cu", "bcc", a=2.9, cubic=True), format="vasp")
    source = {
        "inputs": {"type_map": ["Al", "Mg"]},
        "explore": {"configurations": [
            {"lattice": ["fcc", 4.57], "replicate": [2, 2, 2], "numb_confs": 30,
             "concentration": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]},
            {"type": "alloy", "lattice": ["diamond", 2.8], "replicate": [2, 2, 2], "numb_confs": 2,
             "cell_pert_frac": 0.02, "atom_pert_dist": 0.05},
            {"type": "alloy", "lattice": ["POSCAR", "vasp/poscar"], "replicate": 2},
        ], "stages": [[{"type": "lmp-md", "temps": [300]}]]},
    }
    (tmp_path / "out").mkdir()
    t = translate(source, tmp_path / "input.json", tmp_path / "out")
    files = t.config["configurations"]["files"]
    assert files == ["confs/alloy-0/*.extxyz", "confs/alloy-1/*.extxyz", "confs/alloy-2/*.extxyz"]
    fcc, diamond, bcc = ([ase.io.read(p) for p in sorted((tmp_path / "out").glob(f))] for f in files)
    assert len(fcc) == 30 and {len(c) for c in fcc} == {32}
    assert {"Al32", "Mg32"} < {c.get_chemical_formula() for c in fcc}
    assert np.allclose(fcc[0].cell.lengths(), 9.14)
    # dpgen2's ["diamond", 2.8]: its cell vectors 2.8 × (0, 1, 1), a = 5.6 Å, bonds 5.6·√3/4 = 2.42 Å
    d = diamond[0].get_all_distances(mic=True)
    assert len(diamond) == 2 and abs(np.sort(d[0])[1] - 5.6 * np.sqrt(3) / 4) < 0.3
    assert any("half the cubic one" in n for n in t.notes)
    assert len(bcc) == 1 and len(bcc[0]) == 16 and np.allclose(bcc[0].cell.lengths(), 5.8)
    # the same input writes the same cells
    again = translate(source, tmp_path / "input.json", tmp_path / "out")
    assert again.config == t.config
    assert np.array_equal(ase.io.read(tmp_path / "out" / "confs" / "alloy-0" / "007.extxyz").positions,
                          fcc[7].positions)
    # the config the translation wrote loads, every cell one starting file
    (tmp_path / "out" / "config.yaml").write_text(yaml.safe_dump({**t.config, "teacher": {"calculator": "emt"}}))
    assert len(DistillConfig.load(tmp_path / "out" / "config.yaml").configurations.files) == 33
    for lattice, message in ((["fcc"], r"explore.configurations\[0\].lattice: expected \[lattice type, constant\]"),
                             (["bcx", 3.0], "lattice 'bcx' is not one of fcc, bcc, hcp, sc, diamond"),
                             (["nothere", "vasp/poscar"], "lattice file .*nothere not found")):
        bad = {**source, "explore": {**source["explore"], "configurations": [{"type": "alloy", "lattice": lattice}]}}
        with pytest.raises(InputError, match=message):
            translate(bad, tmp_path / "input.json", tmp_path / "out")


def test_every_lamflow_name_given_for_a_dpgen2_key_is_a_config_key():
    """An unknown dpgen2 key names lamflow's (flows/core/errors.DPGEN_NAMES), a table kept apart
    from the converter's (core may not import a pipeline): a lamflow key renamed without it would
    send a dpgen2 user to a key that is not there. Each name is a path of the distill config, or
    a key of an iterations entry; each dpgen2 key is also in docs/trust-levels.md's table."""
    import typing

    from pydantic import BaseModel

    from lamflow.flows.core.errors import DPGEN_NAMES

    def _models_in(annotation) -> list:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]

    docs = (REPO / "docs" / "trust-levels.md").read_text()
    iteration = _models_in(DistillConfig.model_fields["iterations"].annotation)
    for dpgen2_key, ours in DPGEN_NAMES.items():
        models = [DistillConfig]
        for part in ours.split("."):
            found = [m.model_fields[part].annotation for m in models if part in m.model_fields]
            if not found and models == [DistillConfig]:  # a bare key of an iterations entry
                found = [m.model_fields[part].annotation for m in iteration if part in m.model_fields]
            assert found, f"DPGEN_NAMES[{dpgen2_key!r}] = {ours!r}: no such config key"
            models = [m for f in found for m in _models_in(f)]
        assert dpgen2_key in docs, f"docs/trust-levels.md does not mention dpgen2's {dpgen2_key}"
