"""import_data: DFT outputs in, deepmd/npy out, the labels unchanged; bad files and formats are one line."""

from __future__ import annotations


import numpy as np
import pytest
from dft_files import write_outcar

from lamflow.steps.errors import InputError
from lamflow.steps.import_data import ImportParams
from lamflow.steps.import_data import run as import_data
from lamflow.steps.structures import guess_format


def cu3au_frames(n: int, seed: int = 0) -> list:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2)
        atoms.symbols[:8] = "Au"  # VASP groups atoms by element: Au first, then Cu
        atoms.rattle(0.05, seed=seed * 100 + i)
        atoms.calc = EMT()
        frames.append(atoms)
    return frames


def test_an_outcar_is_imported_with_its_labels_in_the_config_type_map(tmp_path):
    import dpdata

    frames = cu3au_frames(4)
    outcar = write_outcar(frames, tmp_path / "aimd" / "OUTCAR")
    assert guess_format(outcar) == "vasp/outcar"
    result = import_data(ImportParams(files=[outcar], type_map=["Cu", "Au"], output=tmp_path / "data"))
    assert result.n_frames == 4 and len(result.systems) == 1
    system = dpdata.LabeledSystem(str(result.systems[0]), fmt="deepmd/npy")
    assert system["atom_names"] == ["Cu", "Au"]  # the config's order, not the OUTCAR's (Au first)
    np.testing.assert_allclose(system["energies"], [a.get_potential_energy() for a in frames], atol=1e-6)
    # the atoms keep their order (the OUTCAR's 8 Au first) and get the config's types; forces follow them
    assert list(system["atom_types"][:8]) == [1] * 8 and list(system["atom_types"][8:]) == [0] * 24
    np.testing.assert_allclose(system["forces"][2], frames[2].get_forces(), atol=1e-5)


@pytest.mark.parametrize("name, fmt", [("OUTCAR", "vasp/outcar"), ("OUTCAR.600K", "vasp/outcar"),
                                       ("run1.outcar", "vasp/outcar"), ("vasprun.xml", "vasp/xml"),
                                       ("vasprun-md.xml", "vasp/xml"), ("frames.extxyz", "ase")])
def test_dft_outputs_are_recognised_by_their_names(tmp_path, name, fmt):
    (tmp_path / name).write_text("")
    assert guess_format(tmp_path / name) == fmt


def test_an_abacus_run_folder_is_recognised(tmp_path):
    (tmp_path / "INPUT").write_text("INPUT_PARAMETERS\n")
    (tmp_path / "OUT.ABACUS").mkdir()
    assert guess_format(tmp_path) == "abacus/scf"
    with pytest.raises(InputError, match="neither a deepmd/npy system"):
        guess_format(tmp_path / "OUT.ABACUS")


def test_a_misspelt_format_is_named_with_the_nearest_dpdata_formats(tmp_path):
    with pytest.raises(ValueError, match=r"'vasp/outcr' is not a dpdata format \(did you mean vasp/outcar"):
        ImportParams(files=[tmp_path / "OUTCAR"], fmt="vasp/outcr", type_map=["Cu"], output=tmp_path / "d")


@pytest.mark.parametrize("case, message", [
    ("elements", r"has elements \['Au'\] that are not in type_map \['Cu'\]"),
    ("not-cp2k", r"(could not be read as|holds no frame readable as) cp2k/output"),
])
def test_a_file_that_does_not_fit_is_one_line_naming_it(tmp_path, case, message):
    outcar = write_outcar(cu3au_frames(2), tmp_path / "OUTCAR")
    params = (ImportParams(files=[outcar], type_map=["Cu"], output=tmp_path / "d") if case == "elements" else
              ImportParams(files=[outcar], fmt="cp2k/output", type_map=["Cu", "Au"], output=tmp_path / "d"))
    with pytest.raises(InputError, match=message) as err:
        import_data(params)
    assert str(outcar) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "d").exists()
