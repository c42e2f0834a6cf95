"""label: real EMT and GFN2-xTB labels written as deepmd/npy."""

from __future__ import annotations

import ase.io
import dpdata
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from lamflow.steps import label


def test_emt_labels_match_ase(cu_frames, cu_data):
    assert cu_data.n_frames == 24 and cu_data.n_dropped == 0
    system = dpdata.LabeledSystem(str(cu_data.systems[0]), fmt="deepmd/npy")
    assert system.get_natoms() == 32 and len(system) == 24
    atoms = ase.io.read(cu_frames, index=3)
    atoms.calc = EMT()
    assert system["energies"][3] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(system["forces"][3], atoms.get_forces(), atol=1e-6)
    virial = -atoms.get_volume() * atoms.get_stress(voigt=False)
    np.testing.assert_allclose(system["virials"][3], virial, atol=1e-5)


def test_xtb_water_molecule(tmp_path):
    from tblite.ase import TBLite

    water = molecule("H2O")
    ase.io.write(tmp_path / "h2o.xyz", water)
    result = label.run(label.LabelParams(structures=[tmp_path / "h2o.xyz"], type_map=["O", "H"],
                                         output=tmp_path / "out", calculator="xtb"))
    system = dpdata.LabeledSystem(str(result.systems[0]), fmt="deepmd/npy")
    ref = water.copy()
    ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert system.nopbc
    assert system["energies"][0] == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    assert system["energies"][0] < -130  # GFN2-xTB total energy of water, about -137.97 eV
    np.testing.assert_allclose(system["forces"][0], ref.get_forces(), atol=1e-5)


def test_chunks_partition_the_frames(tmp_path, cu_frames):
    counts = []
    for chunk in range(3):
        r = label.run(label.LabelParams(structures=[cu_frames], type_map=["Cu"], calculator="emt",
                                        output=tmp_path / f"c{chunk}", chunk=chunk, n_chunks=3))
        counts.append(r.n_frames)
    assert counts == [8, 8, 8]
    first = dpdata.LabeledSystem(str(tmp_path / "c1" / "Cu32"), fmt="deepmd/npy")
    whole = ase.io.read(cu_frames, index=8)
    np.testing.assert_allclose(first["coords"][0], whole.positions, atol=1e-8)


def test_max_force_drops_frames(tmp_path, cu_frames):
    r = label.run(label.LabelParams(structures=[cu_frames], type_map=["Cu"], calculator="emt",
                                    output=tmp_path / "o", max_force=1e-6))
    assert r.n_frames == 0 and r.n_dropped == 24 and r.systems == []
    assert r.drop_reasons == {"a force above max_force (1e-06 eV/Å)": 24}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"calculator": "nonsense"}, "unknown calculator 'nonsense'"),
        ({"structures": ["missing.xyz"]}, "missing.xyz: file not found"),
        ({"type_map": ["O", "H"]}, "not in type_map"),
        ({"chunk": 3, "n_chunks": 2}, "chunk: must be < n_chunks"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, cu_frames, change, message):
    params = {"structures": [cu_frames], "type_map": ["Cu"], "output": tmp_path / "o", **change}
    with pytest.raises(ValueError, match=message):  # InputError, or a ValidationError naming the field
        label.run(label.LabelParams(**params))


@pytest.mark.parametrize("step", ["label", "label_md", "speed"])
def test_a_stopping_run_interrupts_a_calculators_frames_and_md_steps(tmp_path, cu_frames, step):
    """Steps that compute in lamflow's own process (in an engine's thread, which the stop handler
    cannot end) check between frames and MD steps: once the run is stopping they raise
    StepInterrupted and write nothing, instead of running to their end."""
    from lamflow.steps import label_md, runtime, speed
    from lamflow.steps.errors import StepInterrupted

    out = tmp_path / step
    call = {
        "label": lambda: label.run(label.LabelParams(structures=[cu_frames], type_map=["Cu"], output=out)),
        "label_md": lambda: label_md.run(label_md.LabelMDParams(structures=[cu_frames], type_map=["Cu"], output=out,
                                                                calculator="emt", temps=[300], nsteps=2000)),
        "speed": lambda: speed.run(speed.SpeedParams(calculator="emt", structure=cu_frames, type_map=["Cu"],
                                                     output=out, nsteps=20000)),
    }[step]
    runtime.stop_children()  # what the SIGINT/SIGTERM handler does first
    try:
        with pytest.raises(StepInterrupted, match=f"{step}: the run is stopping"):
            call()
    finally:
        runtime.allow_children()
    assert not out.exists()


def test_a_slab_runs_periodic_in_the_teachers_md_and_speed(tmp_path):
    """A slab as ASE writes it (periodic along a and b only) runs periodic across its vacuum in the
    teacher's MD and its speed MD, as LAMMPS runs the students on it; the vacuum is measured
    normal to the surface, whatever the cell's shape."""
    from ase.build import fcc111

    from lamflow.steps import label_md, speed
    from lamflow.steps.errors import InputError
    from lamflow.steps.structures import check_periodic, periodic, vacuum_gap

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=4.0)
    assert list(slab.pbc) == [True, True, False]
    assert vacuum_gap(slab, 2) == pytest.approx(8.0)
    assert vacuum_gap(slab, 0) < 0.5 * slab.cell.lengths()[0]  # along a the atoms fill the cell
    assert check_periodic([slab], "slab", reach=6.0) == ["c"]
    with pytest.raises(InputError, match="only 8.0 Å of vacuum"):
        check_periodic([slab], "slab", reach=9.0)
    assert periodic(slab, "slab").pbc.all() and not slab.pbc.all()  # a copy; the caller's frame is left as it was
    ase.io.write(tmp_path / "slab.extxyz", slab)

    md = label_md.run(label_md.LabelMDParams(structures=[tmp_path / "slab.extxyz"], type_map=["Cu"],
                                             output=tmp_path / "md", calculator="emt", temps=[300], nsteps=20,
                                             trj_freq=10))
    got = dpdata.LabeledSystem(str(md.systems[0]), fmt="deepmd/npy")
    assert md.n_frames == 2 and np.allclose(got["cells"][0], slab.cell[:])
    timed = speed.run(speed.SpeedParams(calculator="emt", structure=tmp_path / "slab.extxyz", type_map=["Cu"],
                                        output=tmp_path / "speed", nsteps=20))
    assert timed.engine == "ase" and timed.natoms == 12 and timed.timesteps_per_second > 0


def test_the_teachers_npt_on_a_slab_holds_the_pressure_in_its_plane(tmp_path):
    """A slab's Berendsen barostat scales a and b and leaves its vacuum along c as it was; a bulk
    cell's scales all three."""
    from ase.build import bulk, fcc111

    from lamflow.steps import label_md

    ase.io.write(tmp_path / "slab.extxyz", fcc111("Cu", size=(2, 2, 3), vacuum=4.0))
    ase.io.write(tmp_path / "bulk.extxyz", bulk("Cu", "fcc", a=3.61, cubic=True))
    md = label_md.run(label_md.LabelMDParams(
        structures=[tmp_path / "slab.extxyz", tmp_path / "bulk.extxyz"], type_map=["Cu"], output=tmp_path / "md",
        calculator="emt", ensemble="npt", pressure=50000.0, tau_p=0.02, temps=[300], nsteps=20, trj_freq=10))
    slab, cube = (dpdata.LabeledSystem(str(s), fmt="deepmd/npy") for s in md.systems)
    slab, cube = sorted([slab, cube], key=lambda s: -s.get_natoms())
    start = fcc111("Cu", size=(2, 2, 3), vacuum=4.0).cell[:]
    assert np.allclose(slab["cells"][:, 2], start[2]) and not np.allclose(slab["cells"][-1, 0], start[0])
    assert not np.isclose(cube["cells"][-1, 2, 2], 3.61)


def test_a_calculator_out_of_memory_fails_the_step_where_a_failed_scf_drops_the_frame(tmp_path, cu_frames,
                                                                                      monkeypatch):
    """A frame whose SCF does not converge is dropped and the chunk goes on; a GPU (or host) out of
    memory is the machine's failure, not the frame's: the step fails, to be retried, instead of
    recording the frame as dropped for good."""
    from ase.calculators.emt import EMT

    from lamflow.steps.errors import StepFailed

    class Flaky(EMT):
        def __init__(self, failure):
            super().__init__()
            self.failure, self.calls = failure, 0

        def calculate(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise self.failure
            super().calculate(*args, **kwargs)

    params = {"structures": [cu_frames], "type_map": ["Cu"], "calculator": "emt"}
    monkeypatch.setattr(label, "make_calculator", lambda *_: Flaky(RuntimeError("SCF did not converge")))
    r = label.run(label.LabelParams(**params, output=tmp_path / "scf"))
    assert (r.n_frames, r.n_dropped) == (23, 1)
    assert r.drop_reasons == {"SCF did not converge": 1}  # the calculator's own words, counted
    monkeypatch.setattr(label, "make_calculator",
                        lambda *_: Flaky(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    with pytest.raises(StepFailed, match="frame 1: the calculator ran out of memory .CUDA out of memory"):
        label.run(label.LabelParams(**params, output=tmp_path / "oom"))
    assert not (tmp_path / "oom").exists()
