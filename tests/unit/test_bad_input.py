"""Bad input, table-driven: every case ends in one line naming the field or file, exit code 2,
no traceback — before any work starts (`lamflow config --check` runs the same checks as the
first thing `lamflow distill` does)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import write_cu_frames
from lamflow.flows.cli import main

OLD_TORCHSCRIPT = '''
import sys, torch
class Old(torch.nn.Module):
    """A TorchScript .pth of another DeePMD-kit generation: other methods, another forward."""
    @torch.jit.export
    def get_rcut(self) -> float:
        return 4.0
    @torch.jit.export
    def get_type_map(self) -> list[str]:
        return ["Cu"]
    def forward(self, coord: torch.Tensor, atype: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return coord.sum()
torch.jit.script(Old()).save(sys.argv[1])
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory, students, cu_data):
    """The files the cases point at: good ones, and each kind of broken one."""
    d = tmp_path_factory.mktemp("bad-input")
    write_cu_frames(d / "cu.extxyz", 2, seed=5)
    shutil.copy(students[0].model, d / "teacher.pth")
    shutil.copytree(cu_data.systems[0], d / "good-data")
    write_cu_frames(d / "cuau.extxyz", 1, seed=6, symbols_every="Au")
    write_cu_frames(d / "w.extxyz", 1, seed=8, symbols_every="W")  # W on Cu's lattice: EMT has no W
    (d / "garbage.extxyz").write_text("this is not\na structure file\n")
    (d / "garbage.pth").write_bytes(b"\x00not a model" * 10)
    (d / "graph.pb").write_bytes(b"\x0a\x08GraphDef" * 10)  # a DeePMD-kit 2 / dpgen2 teacher's name and kind
    (d / "old_model.py").write_text(OLD_TORCHSCRIPT)  # TorchScript compiles from source files
    subprocess.run([sys.executable, str(d / "old_model.py"), str(d / "old.pth")], check=True)
    (d / "short.lmp").write_text(
        "short\n\n4 atoms\n1 atom types\n\n0 3.6 xlo xhi\n0 3.6 ylo yhi\n0 3.6 zlo zhi\n\nAtoms # atomic\n\n"
        "1 1 0 0 0\n2 1 1.8 1.8 0\n3 1 1.8 0 1.8\n")  # says 4 atoms, lists 3
    import ase.io

    cuau = ase.io.read(d / "cuau.extxyz")  # written in the order Au, Cu: ASE names them in Masses
    ase.io.write(d / "two-alloys.extxyz", [*ase.io.read(d / "cu.extxyz", ":"), ase.io.read(d / "cuau.extxyz")])
    ase.io.write(d / "aucu.data", cuau, format="lammps-data", specorder=["Au", "Cu"], masses=True)
    (d / "aucu-bare.data").write_text(  # the same without the names: the masses tell
        "\n".join(line.split("#")[0] for line in (d / "aucu.data").read_text().splitlines()))
    from ase.build import bulk

    ase.io.write(d / "cu1.extxyz", bulk("Cu", "fcc", a=3.61))  # the primitive cell: one atom
    (d / "disordered.cif").write_text(DISORDERED_CIF)
    nan = write_cu_frames(d / "nan.extxyz", 1, seed=7)
    nan.write_text(nan.read_text().replace(nan.read_text().splitlines()[2].split()[1], "nan", 1))
    (d / "empty-folder").mkdir()
    shutil.copytree(d / "good-data", d / "nan-data")
    force = next((d / "nan-data").glob("set.*/force.npy"))
    arr = np.load(force)
    arr[0, 0] = np.nan
    np.save(force, arr)
    shutil.copytree(d / "good-data", d / "no-sets")
    for s in (d / "no-sets").glob("set.*"):
        shutil.rmtree(s)
    shutil.copytree(d / "good-data", d / "unlabelled")
    for f in (d / "unlabelled").glob("set.*/*.npy"):
        if f.name not in ("coord.npy", "box.npy"):
            f.unlink()
    shutil.copytree(d / "good-data", d / "water-types")
    (d / "water-types" / "type_map.raw").write_text("O\nH\n")
    (d / "not-yaml.yaml").write_text("name: [unclosed\n  - x: : y\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    md = ("units metal\natom_style atomic\nread_data conf.lmp\npair_style deepmd\npair_coeff * *\n"
          "velocity all create V_TEMP 1\nfix 1 all nvt temp V_TEMP V_TEMP 0.1\nrun 100\n")
    (d / "md.lammps").write_text(md)
    (d / "eam.lammps").write_text(md.replace("pair_style deepmd", "pair_style eam"))
    return d


def base() -> dict:
    return {
        "name": "bad", "type_map": ["Cu"],
        "teacher": {"model": "teacher.pth"},
        "student": {"template": "se_e2_a", "numb_steps": 10},
        "configurations": {"files": ["cu.extxyz"]},
        "initial_data": {"perturbed_frames": 2},
        "iterations": [{"temps": [300], "nsteps": 20, "trj_freq": 10}],
        "selection": {"trust_lo": 0.1, "trust_hi": 0.3},
    }


def _set(cfg: dict, dotted: str, value) -> dict:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if value is DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return cfg


#: fcc Cu-Au with one site shared half and half (as ICSD gives a disordered alloy): ASE reads AuCu3
DISORDERED_CIF = """data_cuau
_cell_length_a 3.75
_cell_length_b 3.75
_cell_length_c 3.75
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 0 0 0 0.5
Au1 Au 0 0 0 0.5
Cu2 Cu 0.5 0.5 0 1
Cu3 Cu 0.5 0 0.5 1
Cu4 Cu 0 0.5 0.5 1
"""

DELETE = object()

# (case id, {dotted key: value}, what the one line must say)
CASES = [
    ("unknown top-level key", {"colour": "blue"}, "colour: unknown key"),
    ("misspelt nested key", {"selection.trust_hgh": 0.5}, "selection.trust_hgh: unknown key (did you mean trust_hi?)"),
    ("misspelt key under a step's resources", {"resources": {"train": {"executr": "slurm"}}},
     "resources.train.executr: unknown key (did you mean executor?)"),
    ("dpgen2's pressure key", {"iterations.0.press": [1.0]},
     "iterations[0].press: unknown key (dpgen2's name; lamflow's is pressures)"),
    ("dpgen2's trust level at the top", {"level_f_lo": 0.1},
     "level_f_lo: unknown key (dpgen2's name; lamflow's is selection.trust_lo)"),
    ("temperature with a unit", {"iterations.0.temps": ["300K"]}, "iterations[0].temps[0]: expected a number, got '300K'"),
    ("trust levels reversed", {"selection.trust_lo": 0.5, "selection.trust_hi": 0.1}, "trust_lo (0.5) must be below trust_hi (0.1)"),
    ("trust levels equal", {"selection.trust_lo": 0.2, "selection.trust_hi": 0.2}, "must be below trust_hi"),
    ("empty temperature list", {"iterations.0.temps": []}, "iterations[0].temps: list should have at least 1 item"),
    ("negative temperature", {"iterations.0.temps": [-5]}, "temperatures must be positive kelvin"),
    ("zero MD steps", {"iterations.0.nsteps": 0}, "iterations[0].nsteps: input should be greater than or equal to 1"),
    ("dump interval beyond the MD", {"iterations.0.trj_freq": 5000},
     "iterations[0]: trj_freq (5000) must not exceed nsteps"),
    ("pressures without a barostat", {"iterations.0.pressures": [1000.0]},
     "iterations[0]: pressures given, but ensemble 'nvt' has no barostat (the volume stays fixed)"),
    ("teacher MD pressure without a barostat", {"initial_data.teacher_md": {"temps": [300], "pressure": 5000.0}},
     "initial_data.teacher_md: pressure given, but ensemble 'nvt' has no barostat"),
    ("temperatures beside a LAMMPS template",
     {"iterations.0.lammps_template": "md.lammps", "iterations.0.revisions": {"V_TEMP": [300]}},
     "iterations[0]: temps, nsteps given with lammps_template, whose own MD would ignore them"),
    ("missing LAMMPS template", {"iterations.0": {"lammps_template": "missing.lammps"}},
     "lammps_template: file not found"),
    ("LAMMPS template without the model line", {"iterations.0": {"lammps_template": "eam.lammps",
                                                                 "revisions": {"V_TEMP": [300]}}},
     "eam.lammps: has no 'pair_style deepmd' line"),
    ("revision key not in the LAMMPS template", {"iterations.0": {"lammps_template": "md.lammps",
                                                                  "revisions": {"V_TEMP": [300], "V_PRES": [1]}}},
     "revisions.V_PRES: does not occur in md.lammps"),
    ("unknown ensemble", {"iterations.0.ensemble": "nvx"}, "iterations[0].ensemble: input should be 'nvt', 'npt' or 'nve'"),
    ("no iterations", {"iterations": []}, "iterations: list should have at least 1 item"),
    ("zero max_iterations", {"max_iterations": 0}, "max_iterations: input should be greater than or equal to 1"),
    ("empty type_map", {"type_map": []}, "type_map: list should have at least 1 item"),
    ("duplicate element", {"type_map": ["Cu", "Cu"]}, "type_map"),
    ("element in lower case", {"type_map": ["cu"]}, "type_map: 'cu' is not a chemical element symbol (did you mean Cu?)"),
    ("type that is no element", {"type_map": ["Cu", "Cu1"]},
     "type_map: 'Cu1' is not a chemical element symbol: lamflow's MD needs each type's mass"),
    ("teacher given twice", {"teacher.train": {"label": {"structures": ["cu.extxyz"]}}}, "give exactly one of 'model' (a file), 'train' or 'calculator'"),
    ("teacher missing", {"teacher.model": "nope.pth"}, "teacher.model: file not found"),
    ("teacher not a model", {"teacher.model": "garbage.pth"}, "garbage.pth: is not a DeePMD-kit model that deepmd-kit 3.2 can load"),
    ("teacher a TensorFlow graph", {"teacher.model": "graph.pb"},
     "graph.pb: is a TensorFlow model (DeePMD-kit 2, dpgen2), and lamflow runs DeePMD-kit's PyTorch backend: convert "
     "it where the TensorFlow backend is installed (dp convert-backend graph.pb graph.pth)"),
    ("teacher from another DeePMD-kit version", {"teacher.model": "old.pth"}, "old.pth: is not a DeePMD-kit model that deepmd-kit 3.2 can load"),
    ("element unknown to the teacher", {"type_map": ["Cu", "Au"], "configurations.files": ["cuau.extxyz"]},
     "(teacher.model) does not know elements ['Au']"),
    ("configuration missing", {"configurations.files": ["nope.extxyz"]}, "configurations.files[0]: file not found"),
    ("configuration element not in type_map", {"configurations.files": ["cuau.extxyz"]}, "has elements ['Au'] that are not in type_map ['Cu']"),
    ("configuration unreadable", {"configurations.files": ["garbage.extxyz"]}, "garbage.extxyz: could not be read"),
    ("LAMMPS data written in another type order", {"type_map": ["Cu", "Au"], "configurations.files": ["aucu.data"]},
     "aucu.data: atom type 1 is Au (its Masses comment), but type_map[0] is Cu: a LAMMPS data file's types are "
     "numbered in type_map's order (Cu, Au)"),
    ("LAMMPS data whose masses are another order's", {"type_map": ["Cu", "Au"], "configurations.files": ["aucu-bare.data"]},
     "aucu-bare.data: atom type 1 has mass 196.967, Au's, but type_map[0] is Cu"),
    ("LAMMPS data with more types than type_map", {"configurations.files": ["aucu.data"]},
     "aucu.data: has 2 atom types, type_map names 1"),
    ("frames of two compositions in one file", {"type_map": ["Cu", "Au"], "configurations.files": ["two-alloys.extxyz"]},
     "two-alloys.extxyz: holds frames of 2 compositions (Cu32, Au8Cu24) where one structure or system is read; write "
     "each composition to its own file"),
    ("a CIF with partially occupied sites", {"type_map": ["Cu", "Au"], "configurations.files": ["disordered.cif"]},
     "disordered.cif: has 2 partially occupied site(s) (site 0: Cu 0.5 + Au 0.5), which ASE reads as one species"),
    ("a one-atom cell", {"configurations.files": ["cu1.extxyz"]},
     "cu1.extxyz: (configurations.files[0]) has 1 atom: MD at a temperature needs more"),
    ("LAMMPS data with a wrong atom count", {"configurations.files": ["short.lmp"]}, "short.lmp: could not be read as lammps/lmp"),
    ("configuration with NaN coordinates", {"configurations.files": ["nan.extxyz"]}, "has NaN or infinite coordinates"),
    ("no configurations", {"configurations.files": []}, "configurations.files: list should have at least 1 item"),
    ("dataset folder without data", {"initial_data.systems": ["empty-folder"]}, "empty-folder: (initial_data.systems) is not a deepmd/npy system: no type.raw"),
    ("dataset with NaN forces", {"initial_data.systems": ["nan-data"]}, "(initial_data.systems) contains NaN or infinite values"),
    ("empty dataset", {"initial_data.systems": ["no-sets"]}, "(initial_data.systems) has no set.* folders (empty dataset)"),
    ("dataset of other elements", {"initial_data.systems": ["water-types"]}, "has elements ['O'] not in type_map ['Cu']"),
    ("dataset without labels", {"initial_data.systems": ["unlabelled"]}, "(initial_data.systems) has no labels"),
    ("dataset missing", {"initial_data.systems": ["nope-data"]}, "initial_data.systems[0]: file not found"),
    ("no initial data at all", {"initial_data.perturbed_frames": 0}, "no initial data: give 'systems', perturbed_frames > 0 or 'teacher_md'"),
    ("unknown student template", {"student.template": "se_e9"}, "student.template: unknown template 'se_e9'"),
    ("student template file missing", {"student.template": "my/student.json"}, "template file not found"),
    ("student overrides not a mapping", {"student.overrides": "fast"}, "student.overrides: input should be a valid dictionary"),
    ("misspelt descriptor key in the student overrides", {"student.overrides": {"model": {"descriptor": {"rcutt": 4}}}},
     "student.overrides: model.descriptor.rcutt: unknown key (did you mean rcut?)"),
    ("smoothing start beyond the cut-off", {"student.overrides": {"model": {"descriptor": {"rcut": 3.0, "rcut_smth": 4.0}}}},
     "student.overrides: model.descriptor.rcut_smth: 4.0 must be at least 0 and below rcut (3.0 Å)"),
    ("cut-off inside DeePMD-kit's default smoothing start", {"student.template": "se_e2_a+se_e3", "student.overrides": {
        "model": {"descriptor": {"list": [{"type": "se_e2_a", "rcut": 4.0}, {"type": "se_e3", "rcut": 0.4}]}}}},
     "model.descriptor.list.1.rcut_smth: 0.5 must be at least 0 and below rcut (0.4 Å)"),
    ("a student that cannot be compressed", {"student.template": "dpa3"},
     "student.compress: descriptor 'dpa3' cannot be compressed; use se_e2_a"),
    ("a reference calculator without one of the elements", {"type_map": ["Cu", "W"], "teacher": {"train": {"label": {
        "structures": ["cu.extxyz", "w.extxyz"], "calculator": "emt"}}}},
     "teacher.train.label.calculator: 'emt' could not evaluate w.extxyz: No EMT-potential for W"),
    ("zero students", {"student.count": 0}, "student.count: input should be greater than or equal to 1"),
    ("accurate ratio above 1", {"convergence.accurate_ratio": 1.5}, "convergence.accurate_ratio: input should be less than or equal to 1"),
    ("unknown selection strategy", {"selection.strategy": "best"}, "selection.strategy: input should be 'random' or 'highest'"),
    ("resources for an unknown step", {"resources": {"trian": {"threads": 2}}}, "unknown steps ['trian']"),
    ("negative GPU count", {"resources": {"train": {"gpu": -1}}}, "resources.train.gpu"),
    ("zero label chunk", {"label_chunk_size": 0}, "label_chunk_size: input should be greater than or equal to 1"),
    ("negative timestep", {"iterations.0.dt": -0.001}, "iterations[0].dt: input should be greater than 0"),
]


@pytest.mark.parametrize("case, change, message", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_exit_2(files, tmp_path, capfd, case, change, message):
    cfg = copy.deepcopy(base())
    for key, value in change.items():
        _set(cfg, key, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for f in files.iterdir():  # the config's relative paths point at the shared files
        (tmp_path / f.name).symlink_to(f)
    code = main(["config", "--check", str(path)])
    err = capfd.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lamflow: error: ") and "Traceback" not in err, err
    assert message in err, err


def test_the_good_base_config_passes(files, tmp_path, capfd):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base()))
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    assert main(["config", "--check", str(path)]) == 0, capfd.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("missing.yaml", "missing.yaml: file not found"),
    ("not-yaml.yaml", "not-yaml.yaml: is not valid YAML (line 2)"),
    ("list.yaml", "list.yaml: expected a mapping at the top level"),
])
def test_bad_config_file_is_one_line(files, capfd, name, message):
    assert main(["config", "--check", str(files / name)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_unwritable_run_directory_is_one_line_and_nothing_runs(files, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base()))
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(path), "--engine", "local",
                          "--workdir", str(blocker / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"{blocker / 'run'}: run directory is not writable (Not a directory)" in out.stderr


def test_a_bad_config_stops_distill_before_any_work(files, tmp_path):
    cfg = _set(base(), "configurations.files", ["cu.extxyz", "cuau.extxyz"])  # the second is bad
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(path), "--engine", "local",
                          "--workdir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cuau.extxyz: has elements ['Au']" in out.stderr
    assert not list((tmp_path / "run").rglob("*.result.json"))  # no step ran
