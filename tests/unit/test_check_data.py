"""`lamflow dataset check`: what would spoil a training is an error (exit 2), what deserves a look a
warning; each names the file, how many frames and the first; a run's preflight stops on the errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import lam_config

from lamflow.steps.check_data import CheckDataParams, run
from lamflow.steps.errors import InputError

CLI = [sys.executable, "-m", "lamflow.flows.cli"]


def emt_system(n: int = 12, seed: int = 0):
    """``n`` rattled 32-atom Cu3Au cells with EMT energies and forces, as a dpdata LabeledSystem."""
    import dpdata
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    system = None
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.75 * (1 + rng.uniform(-0.01, 0.01)), cubic=True).repeat(2)
        atoms.symbols[::4] = "Au"
        atoms.rattle(0.05, seed=seed * 100 + i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frame = dpdata.LabeledSystem(atoms, fmt="ase/structure")
        system = frame if system is None else system + frame
    return system


def write(system, path: Path) -> Path:
    system.to("deepmd/npy", str(path))
    return path


def test_clean_data_has_no_problem_and_the_cli_says_so(tmp_path):
    data = write(emt_system(), tmp_path / "clean")
    result = run(CheckDataParams(paths=[data], type_map=["Cu", "Au"]))
    assert result.problems == [] and [(d.formula, d.n_frames) for d in result.datasets] == [("Au8Cu24", 12)]
    out = subprocess.run([*CLI, "dataset", "check", str(tmp_path), "--type-map", "Cu", "Au", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["datasets"][0]["n_frames"] == 12 and report["problems"] == []


def test_a_system_without_type_map_raw_is_read_in_type_maps_order_as_deepmd_kit_does(tmp_path):
    from lamflow.steps.structures import read_system

    data = write(emt_system(2), tmp_path / "old")  # dpdata orders its elements Au, Cu
    order = (data / "type_map.raw").read_text().split()
    (data / "type_map.raw").unlink()
    system = read_system(data, order)
    assert system["atom_names"] == order and list(system["atom_numbs"]) == [8, 24]
    assert run(CheckDataParams(paths=[data], type_map=order)).problems == []
    with pytest.raises(InputError, match="has 2 atom types and no type_map.raw: DeePMD-kit reads them in "
                                         "type_map's order, which names 1"):
        read_system(data, ["Cu"])


def test_a_mixed_type_system_is_read_by_its_real_types_not_its_placeholder_type_raw(tmp_path):
    """dpgen2 and ``dp`` write frames of several compositions in one folder: its ``type.raw`` is
    all zeros and each frame's types are in ``real_atom_types.npy``. Read as deepmd/npy, every atom
    was the first element (water as O192), silently."""
    import dpdata

    from lamflow.steps.structures import check_systems, guess_format, load_labeled, read_system

    cu3au, other = emt_system(3), emt_system(2, seed=1)
    other.data["atom_types"] = np.where(np.arange(32) % 2 == 0, 1, 0)  # Au16Cu16: another composition
    other.data["atom_numbs"] = [16, 16]
    dpdata.MultiSystems(cu3au, other).to("deepmd/npy/mixed", str(tmp_path / "mixed"))
    (folder,) = {p.parent for p in (tmp_path / "mixed").rglob("type.raw")}
    assert guess_format(folder) == "deepmd/npy/mixed"
    result = run(CheckDataParams(paths=[tmp_path / "mixed"], type_map=["Cu", "Au"]))
    assert sorted((d.formula, d.n_frames) for d in result.datasets) == [("Au16Cu16", 2), ("Au8Cu24", 3)]
    assert result.problems == []
    multi = load_labeled([folder], ["Cu", "Au"])
    assert sorted(s.formula for s in multi) == ["Cu16Au16", "Cu24Au8"] and multi.get_nframes() == 5
    with pytest.raises(InputError, match="has elements \\['Au'\\] not in type_map"):
        check_systems([folder], ["Cu"], "initial_data.systems")
    with pytest.raises(InputError, match="holds 2 compositions \\(DeePMD-kit's mixed-type system\\)"):
        read_system(folder, ["Cu", "Au"])
    dpdata.MultiSystems(cu3au).to("deepmd/npy/mixed", str(tmp_path / "one"))
    (one,) = {p.parent for p in (tmp_path / "one").rglob("type.raw")}
    assert list(read_system(one, ["Cu", "Au"])["atom_numbs"]) == [24, 8]


def test_what_would_spoil_a_training_is_an_error_naming_frames(tmp_path):
    system = emt_system()
    system.data["forces"][3, 5, 1] = np.nan
    system.data["coords"][5, 1] = system.data["coords"][5, 0] + [0.3, 0, 0]  # two atoms 0.3 Å apart
    system.data["cells"][7] = -system.data["cells"][7]  # negative volume
    bad = write(system, tmp_path / "bad")
    result = run(CheckDataParams(paths=[bad], type_map=["Cu"]))
    lines = {p.check: p.line() for p in result.errors}
    assert set(lines) == {"finite", "overlap", "cell", "type_map"}, lines
    assert lines["finite"] == f"error: {bad}: NaN or infinite forces in 1 frame (first: frame 3)"
    assert "overlapping atoms: atoms 0 (Au) and 1 (Cu) are 0.300 Å apart" in lines["overlap"]
    assert "(first: frame 5)" in lines["overlap"]
    assert lines["cell"].startswith(f"error: {bad}: cell volume -") and "(first: frame 7)" in lines["cell"]
    assert lines["type_map"] == f"error: {bad}: elements ['Au'] are not in type_map ['Cu']"
    # the CLI: one line per problem, exit 2
    out = subprocess.run([*CLI, "dataset", "check", str(bad), "--type-map", "Cu"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 4 and "Traceback" not in out.stderr, out.stderr


def test_a_labelled_extxyz_of_molecules_is_checked_like_any_data(tmp_path):
    """No cell (a molecule): no volume check; its element names are plain in every message."""
    import ase.io
    from ase.build import molecule
    from ase.calculators.emt import EMT

    frames = []
    for i in range(4):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.02, seed=i)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    ase.io.write(tmp_path / "ethanol.extxyz", frames)
    result = run(CheckDataParams(paths=[tmp_path / "ethanol.extxyz"], type_map=["C", "H"]))
    assert [p.line() for p in result.errors] == [
        f"error: {tmp_path / 'ethanol.extxyz'}: elements ['O'] are not in type_map ['C', 'H']"]
    assert [(d.formula, d.n_frames) for d in result.datasets] == [("C2H6O1", 4)]


def test_unlabelled_or_unreadable_data_is_an_error(tmp_path):
    unlabelled = tmp_path / "unlabelled"
    emt_system(2).to("deepmd/npy", str(unlabelled))
    for f in unlabelled.glob("set.*/energy.npy"):
        f.unlink()
    garbage = tmp_path / "OUTCAR"
    garbage.write_text("not an OUTCAR\n")
    result = run(CheckDataParams(paths=[unlabelled, garbage]))
    assert [(p.path, p.check) for p in result.errors] == [(str(unlabelled), "labels"), (str(garbage), "read")]
    assert "no energies" in result.errors[0].message


def test_what_deserves_a_look_is_a_warning(tmp_path):
    system = emt_system(40)
    system.data["energies"][9] += 5.0 * 32  # 5 eV/atom off its composition
    system.data["coords"][20] = system.data["coords"][19]  # a duplicate frame
    system.data["cells"][20] = system.data["cells"][19]
    odd = write(system, tmp_path / "odd")
    hartree = emt_system(6, seed=1)
    hartree.data["forces"] /= 51.42208619083232  # forces in Hartree/Bohr
    result = run(CheckDataParams(paths=[odd, write(hartree, tmp_path / "hartree")], type_map=["Cu", "Au"]))
    assert result.errors == []
    lines = {(p.path, p.check): p.line() for p in result.warnings}
    assert "(first: frame 9)" in lines[(str(odd), "outlier")] and "energy per atom" in lines[(str(odd), "outlier")]
    assert lines[(str(odd), "duplicates")].endswith("in 1 frame (first: frame 20)")
    assert "Hartree/Bohr?" in lines[(str(tmp_path / "hartree"), "units")]


def test_a_run_stops_in_preflight_on_a_dataset_error(tmp_path):
    from lamflow.flows.pipelines.lam.config import LamConfig, preflight

    raw = lam_config(tmp_path)
    system = emt_system(4)
    system.data["energies"][2] = np.inf
    raw["datasets"].append({"name": "broken", "systems": [str(write(system, tmp_path / "broken"))]})
    raw["pretrain"]["datasets"] = ["cu_bulk", "cuau", "broken"]
    (tmp_path / "lam.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as err:
        preflight(LamConfig.parse(raw, tmp_path))
    assert str(err.value) == (f"{tmp_path / 'broken'} (datasets.broken.systems): NaN or infinite energies in 1 frame(s), "
                              "first: frame 2")


def test_a_dataset_labeller_without_one_of_its_elements_stops_the_run_in_preflight(tmp_path):
    """A dataset labelled here by a calculator that cannot evaluate one of its structure files
    (EMT knows Cu and Au, not W): its label step would drop every W frame, as it drops a failed
    SCF, and pretraining would start on what is left. The LAM and version pipelines probe each
    labeller before any work, as a distillation probes its teacher."""
    import ase.io
    from ase.build import bulk

    from lamflow.flows.pipelines.lam.config import LamConfig, preflight

    raw = lam_config(tmp_path)
    ase.io.write(tmp_path / "w.extxyz", bulk("W", "bcc", a=3.16, cubic=True).repeat(2))
    raw["type_map"] = ["Cu", "Au", "W"]
    raw["datasets"][1]["label"]["structures"] = ["cuau.extxyz", "w.extxyz"]
    with pytest.raises(InputError) as err:
        preflight(LamConfig.parse(raw, tmp_path))
    assert str(err.value) == "datasets.cuau.label.calculator: 'emt' could not evaluate w.extxyz: No EMT-potential for W"
    raw["datasets"][1]["label"]["structures"] = ["cuau.extxyz"]
    preflight(LamConfig.parse(raw, tmp_path))  # the datasets as the tests' LAM runs have them
