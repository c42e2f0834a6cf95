"""A calculator that fails on a frame must not pass its failure on to the next frames.

tests/data/lif-gfn2-scf.extxyz: five 16-atom LiF frames that a first student's MD explored (the
LiF trial of session 23: GFN2-xTB teacher, 300–600 K, candidates of iteration 0), kept as written.
GFN2-xTB (tblite) labels the first with forces of 577 eV/Å, cannot converge the second and third
from a fresh start, and labels the last two (2.3 and 12.1 eV/Å). One calculator reused after the
failure "converged" the third to 1.5e4 eV/Å and failed on the last two.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import dpdata
import numpy as np
import pytest

from lamflow.steps import label

FRAMES = Path(__file__).resolve().parents[1] / "data" / "lif-gfn2-scf.extxyz"


def test_after_a_failed_scf_the_next_frames_are_labelled_as_a_fresh_calculator_labels_them(tmp_path):
    from tblite.ase import TBLite

    r = label.run(label.LabelParams(structures=[FRAMES], type_map=["Li", "F"], output=tmp_path / "out",
                                    calculator="xtb", max_force=None))
    assert r.drop_reasons == {"SCF not converged in 250 cycles": 2}
    got = dpdata.LabeledSystem(str(r.systems[0]), fmt="deepmd/npy")
    assert len(got) == 3
    fresh = []
    for atoms in [a for i, a in enumerate(ase.io.read(FRAMES, ":")) if i in (0, 3, 4)]:
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        fresh.append(atoms.get_forces())
    np.testing.assert_allclose(got["forces"], np.array(fresh), atol=1e-3)  # SCF from another start density
    assert np.abs(got["forces"][1:]).max() == pytest.approx(12.06, abs=0.01)


class StuckAfterFailure:
    """EMT that fails on its third calculation, once in the whole test (a marker file says it has),
    and then keeps failing, its state being the failure's, as tblite's did; a new one is sound.
    ``calculator: test_label_failures:StuckAfterFailure`` builds it by name, as a user's would."""

    def __new__(cls, marker: str):
        from ase.calculators.emt import EMT

        class Stuck(EMT):
            def calculate(self, *args, **kwargs):
                self.calls = getattr(self, "calls", 0) + 1
                if getattr(self, "stuck", False) or (self.calls == 3 and not Path(marker).exists()):
                    Path(marker).touch()
                    self.stuck = True
                    raise RuntimeError("SCF not converged in 250 cycles")
                super().calculate(*args, **kwargs)

        return Stuck()


def test_the_teachers_md_goes_on_with_a_fresh_calculator_after_one_failed(tmp_path):
    """label_md: a trajectory whose calculator fails stops there; the next trajectory (another
    temperature) runs with a new calculator instead of the failed one."""
    from conftest import write_cu_frames

    from lamflow.steps.label_md import LabelMDParams
    from lamflow.steps.label_md import run as label_md_run

    r = label_md_run(LabelMDParams(
        structures=[write_cu_frames(tmp_path / "cu.extxyz", 1)], type_map=["Cu"], output=tmp_path / "md",
        calculator="test_label_failures:StuckAfterFailure", calculator_kwargs={"marker": str(tmp_path / "failed")},
        temps=[300, 600], nsteps=20, trj_freq=5))
    assert (tmp_path / "failed").exists() and r.n_trajectories == 2 and r.n_stopped == 1
    assert r.n_frames == 4  # the second trajectory's every frame


def test_a_dataset_whose_calculator_drops_many_frames_says_why(tmp_path):
    """`lamflow lam` builds its datasets through the engine; a dataset labelled by a calculator that
    fails on two of its five frames says so in the terminal (and lam-report.json keeps the counts)."""
    import shutil

    from conftest import lam_config

    from lamflow.flows.core.book import Book
    from lamflow.flows.engines.local import LocalRunner
    from lamflow.flows.pipelines.datasets import build, drop_notes
    from lamflow.flows.pipelines.lam.config import LamConfig

    shutil.copy(FRAMES, tmp_path / "lif.extxyz")
    raw = {**lam_config(tmp_path), "type_map": ["Li", "F"],
           "datasets": [{"name": "lif", "label": {"structures": ["lif.extxyz"], "calculator": "xtb"}},
                        {"name": "other", "label": {"structures": ["lif.extxyz"], "calculator": "xtb"}}]}
    raw["finetune"] = {**raw["finetune"], "dataset": "lif", "branch": "other"}
    cfg = LamConfig.parse(raw, tmp_path)
    labelling: dict = {}
    data = build(cfg, tmp_path / "run", ["lif"], Book(LocalRunner()), {}, labelling)
    assert len(data["lif"]) == 1 and list(labelling) == ["lif"]
    done = labelling["lif"]
    assert (done.given, done.lost) == (5, 2)  # two SCFs did not converge
    assert drop_notes(labelling) == [
        "dataset lif: its calculator left out 2 of the 5 frames it was given (SCF not converged in 250 cycles: 2); "
        "they are not in the dataset (datasets[].label.calculator_kwargs, or another method, may label them)"]
