"""teacher_label (batched DeepPot) and evaluate, including type-map remapping and NaN frames."""

from __future__ import annotations

import dpdata
import numpy as np
import pytest

from conftest import DPA4_TEACHER, WATER
from lamflow.steps import evaluate, teacher_label
from lamflow.steps.errors import InputError
from lamflow.steps.inference import load_model


def test_teacher_labels_equal_direct_inference(tmp_path, students, cu_data):
    teacher = students[1].model
    result = teacher_label.run(teacher_label.TeacherLabelParams(
        output=tmp_path / "tl", model=teacher, systems=cu_data.systems, type_map=["Cu"], batch_size=5))
    assert result.n_frames == 24 and result.n_dropped == 0
    labeled = dpdata.LabeledSystem(str(result.systems[0]), fmt="deepmd/npy")
    dp = load_model(teacher)
    e, f, v = dp.eval(labeled["coords"][:2].reshape(2, -1), labeled["cells"][:2].reshape(2, 9),
                      [0] * 32)[:3]
    np.testing.assert_allclose(labeled["energies"][:2], e.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(labeled["forces"][:2], f.reshape(2, 32, 3), atol=1e-6)
    # a model evaluated on its own labels has zero error
    self_err = evaluate.run(evaluate.EvaluateParams(model=teacher, systems=result.systems, type_map=["Cu"]))
    assert self_err.rmse_f < 1e-5 and self_err.rmse_e_per_atom < 1e-5
    other = evaluate.run(evaluate.EvaluateParams(model=students[0].model, systems=result.systems,
                                                 type_map=["Cu"], output=tmp_path / "m.json"))
    assert other.rmse_f > 1e-4 and (tmp_path / "m.json").is_file()


def test_chunks_and_nan_frames_dropped(tmp_path, students, cu_data):
    bad = tmp_path / "bad"
    system = dpdata.LabeledSystem(str(cu_data.systems[0]), fmt="deepmd/npy")
    system.data["coords"][2, 0, 0] = np.nan  # a corrupted frame
    dpdata.System(data={k: system.data[k] for k in ("atom_names", "atom_numbs", "atom_types",
                                                     "orig", "cells", "coords")}
                  ).to("deepmd/npy", str(bad))
    total = dropped = 0
    for chunk in range(2):
        r = teacher_label.run(teacher_label.TeacherLabelParams(
            output=tmp_path / f"c{chunk}", model=students[1].model, systems=[bad], type_map=["Cu"],
            chunk=chunk, n_chunks=2))
        total += r.n_frames
        dropped += r.n_dropped
    assert (total, dropped) == (23, 1)


def test_type_map_order_is_remapped(tmp_path, students, cu_data):
    """Data listing elements as [Au, Cu] still maps Cu to the model's type 0."""
    system = dpdata.LabeledSystem(str(cu_data.systems[0]), fmt="deepmd/npy")
    system.apply_type_map(["Au", "Cu"])
    system.to("deepmd/npy", str(tmp_path / "aucu"))
    a = evaluate.run(evaluate.EvaluateParams(model=students[0].model, systems=[tmp_path / "aucu"], type_map=["Au", "Cu"]))
    b = evaluate.run(evaluate.EvaluateParams(model=students[0].model, systems=cu_data.systems, type_map=["Cu"]))
    assert a.rmse_f == pytest.approx(b.rmse_f, rel=1e-9)


def test_unknown_element_and_bad_model_are_one_line(tmp_path, students, cu_data):
    water = tmp_path / "w"
    dpdata.System(data={"atom_names": ["O", "H"], "atom_numbs": [1, 2], "atom_types": np.array([0, 1, 1]),
                        "orig": np.zeros(3), "cells": np.eye(3)[None] * 10,
                        "coords": np.array([[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]], float),
                        "nopbc": False}).to("deepmd/npy", str(water))
    with pytest.raises(InputError, match=r"elements \['H', 'O'\] that the model does not know"):
        teacher_label.run(teacher_label.TeacherLabelParams(output=tmp_path / "o", model=students[0].model,
                                                           systems=[water], type_map=["O", "H"]))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.pth: is not a DeePMD-kit model"):
        load_model(junk)


@pytest.mark.skipif(not DPA4_TEACHER.exists(), reason="../shared is not present")
def test_external_dpa4_teacher_labels_water(tmp_path):
    """A DPA-4 checkpoint made by others, as a teacher, on real DFT water frames."""
    frames = dpdata.LabeledSystem(str(WATER / "data_3"), fmt="deepmd/npy").sub_system(range(4))
    frames.to("deepmd/npy", str(tmp_path / "water4"))
    r = teacher_label.run(teacher_label.TeacherLabelParams(
        output=tmp_path / "tl", model=DPA4_TEACHER, systems=[tmp_path / "water4"], type_map=["O", "H"]))
    assert r.n_frames == 4
    labeled = dpdata.LabeledSystem(str(r.systems[0]), fmt="deepmd/npy")
    # barely trained (its authors' 500 steps), yet a real water model: energies near DFT's
    assert np.abs(labeled["energies"] - frames["energies"]).max() / 192 < 0.05
    # and the batched labels are exactly what DeepPot gives frame by frame
    dp = load_model(DPA4_TEACHER)
    types = [dp.get_type_map().index(frames["atom_names"][t]) for t in frames["atom_types"]]
    e, f, _ = dp.eval(frames["coords"][3:4].reshape(1, -1), frames["cells"][3:4].reshape(1, 9), types)[:3]
    assert labeled["energies"][3] == pytest.approx(float(e.reshape(-1)[0]), abs=1e-4)
    np.testing.assert_allclose(labeled["forces"][3], f.reshape(192, 3), atol=1e-4)


def test_batches_are_sized_to_the_memory_a_frame_takes():
    """A teacher whose frame takes GBs must not be batched into an OOM kill."""
    import psutil

    from lamflow.steps.inference import _fitting_batch, _measured

    array, added = _measured(lambda: np.ones(25_000_000))  # 200 MB touched
    assert array.sum() == 25_000_000 and added >= 150e6
    assert _fitting_batch(32, psutil.virtual_memory().available) == 1  # one frame fills the machine
    assert _fitting_batch(32, 10_000_000) == 32  # 10 MB a frame: the cap rules
    assert _fitting_batch(32, None) == 32  # unknown (no /proc): the cap
