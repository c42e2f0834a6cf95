"""teacher_label (batched DeepPot) and evaluate, including type-map remapping and NaN frames."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

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
    reasons = []
    for chunk in range(2):
        r = teacher_label.run(teacher_label.TeacherLabelParams(
            output=tmp_path / f"c{chunk}", model=students[1].model, systems=[bad], type_map=["Cu"],
            chunk=chunk, n_chunks=2))
        total += r.n_frames
        dropped += r.n_dropped
        reasons.append(r.drop_reasons)
    assert (total, dropped) == (23, 1)
    assert reasons == [{"a non-finite energy, force or virial": 1}, {}]
    # a cap on the teacher's force: every frame above it, none counted twice with the NaN one
    r = teacher_label.run(teacher_label.TeacherLabelParams(
        output=tmp_path / "capped", model=students[1].model, systems=[bad], type_map=["Cu"], max_force=1e-9))
    assert r.n_frames == 0 and r.drop_reasons == {"a non-finite energy, force or virial": 1,
                                                  "a force above max_force (1e-09 eV/Å)": 23}


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
    for name, text in [("junk.pth", b"not a model"), ("junk.pt", b"junk\n")]:
        junk = tmp_path / name
        junk.write_bytes(text)
        with pytest.raises(InputError, match=f"{name}: is not a DeePMD-kit model") as bad:
            load_model(junk)
        # torch's own reason for the second is a bare number (KeyError 174812789): the line names its kind
        assert re.search(r"\([A-Za-z]", str(bad.value)), bad.value


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


def test_batches_are_sized_to_the_memory_a_frame_takes(monkeypatch):
    """A teacher whose frame takes GBs must not be batched into an OOM kill."""
    from lamflow.steps import memory

    array, added = memory.measured(lambda: np.ones(25_000_000))  # 200 MB touched
    assert array.sum() == 25_000_000 and added >= 150e6
    monkeypatch.setattr(memory, "gpu_budget", lambda: None)
    monkeypatch.setattr(memory, "budget", lambda: 8_000_000_000)
    cal = memory.Calibration()
    assert cal.batch(1, 192, 32) == 32  # nothing measured yet: the cap
    cal.update(1, 192, 4_100_000_000)
    cal.update(1, 192, 3_200_000_000)  # a warm heap's lower reading never lowers the calibration
    assert cal.batch(1, 192, 32) == 1  # 4.1 GB a frame, 4 GB usable: one at a time
    cal.update(1, 24, 400_000_000)  # another size is its own reading
    assert cal.batch(1, 24, 32) == 10
    cal.update(2, 100, 10_000_000)
    assert cal.batch(2, 100, 32) == 32  # 10 MB a frame: the cap rules


def test_a_warm_heap_does_not_hide_a_frames_footprint():
    """Memory freed by earlier batches stays in the process and is reused; trimming the heap
    before measuring makes the growth count it again."""
    from lamflow.steps import memory

    import torch

    def chunks():
        return [torch.ones(250_000) for _ in range(1600)]  # 1600 × 1 MB, as a model's activations

    for _ in range(2):  # the first free raises glibc's mmap threshold; the second pass stays in the heap
        warm = chunks()
        del warm  # freed, but kept by the allocator for reuse (measured without a trim: 0.2 GB)
    again, added = memory.measured(chunks)
    assert added >= 1.2e9, added / 1e9


def test_the_budget_is_the_tightest_cgroup(tmp_path):
    from lamflow.steps import memory

    v1 = tmp_path / "v1"
    job = v1 / "memory/slurm/uid_0/job_7"
    job.mkdir(parents=True)
    (v1 / "memory/slurm/memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory/slurm/memory.usage_in_bytes").write_text("5000000000\n")
    (job / "memory.limit_in_bytes").write_text("4000000000\n")  # sbatch --mem=4G
    (job / "memory.usage_in_bytes").write_text("3000000000\n")
    (job / "memory.stat").write_text("cache 600000000\ntotal_inactive_file 500000000\n")
    assert memory.cgroup_room("4:memory:/slurm/uid_0/job_7\n0::/\n", v1) == 1_500_000_000
    v2 = tmp_path / "v2"
    pod = v2 / "kubepods/pod1"
    pod.mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("memory\n")
    (v2 / "kubepods/memory.max").write_text("max\n")
    (v2 / "kubepods/memory.current").write_text("1\n")
    (pod / "memory.max").write_text("2147483648\n")  # resources.limits.memory: 2Gi
    (pod / "memory.current").write_text("1073741824\n")
    assert memory.cgroup_room("0::/kubepods/pod1\n", v2) == 1073741824
    assert memory.cgroup_room("0::/\n", v2) is None  # no limit anywhere: the host's memory rules


LABEL_IN_CGROUP = """
import json, os, sys
from pathlib import Path
cgroup = sys.argv[4]
if cgroup != "-":
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))  # from here on, the limit applies
from lamflow.steps import memory, teacher_label
if sys.argv[3] == "naive":  # the batches a heap-blind sizing would take: the whole cap at once
    memory.Calibration.batch = lambda self, model, natoms, cap, share=0.5: cap
r = teacher_label.run(teacher_label.TeacherLabelParams(
    output=sys.argv[2], model=sys.argv[1], systems=sys.argv[5:], type_map=["Cu"], batch_size=32))
print(json.dumps({"frames": r.n_frames, "peak_gb": memory.peak_rss() / 1e9,
                  "frame_gb": memory.CALIBRATION.largest(2048) / 1e9}))
"""


def _memory_cgroup(tmp_path):
    """A fresh memory cgroup (v2 or v1) this test may limit, or None where it cannot make one."""
    import uuid

    for parent, limit_file in ((Path("/sys/fs/cgroup"), "memory.max"),
                               (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")):
        if not (parent / "cgroup.procs").is_file() or not os.access(parent, os.W_OK):
            continue
        folder = parent / f"lamflow-test-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir()
        except OSError:
            continue
        if (folder / limit_file).is_file():
            return folder, limit_file
        folder.rmdir()
    return None


@pytest.mark.slow(seconds=90)
def test_several_systems_labelled_in_one_process_under_a_memory_limit(tmp_path, students):
    """A pod's or Slurm job's memory limit, not the node's free memory, bounds the batches; a
    heap-blind sizing under the same limit is killed (the control, so this test can fail)."""
    import subprocess
    import sys

    import dpdata
    from ase.build import bulk

    made = _memory_cgroup(tmp_path)
    if made is None:
        pytest.skip("no writable memory cgroup on this machine")
    cgroup, limit_file = made
    try:
        systems = []
        for name, repeat, n in (("small", 2, 3), ("big", 8, 8)):  # 32 then 2048 atoms
            frames = dpdata.System()
            for i in range(n):
                atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
                atoms.rattle(0.05, seed=i)
                frames.append(dpdata.System(atoms, fmt="ase/structure"))
            frames.to_deepmd_npy(str(tmp_path / name))
            systems.append(str(tmp_path / name))
        script = tmp_path / "label.py"
        script.write_text(LABEL_IN_CGROUP)
        model = str(students[1].model)

        # DeepPot splits a call into chunks of DP_INFER_BATCH_SIZE atoms (1024 by default: one
        # 2048-atom frame, or five 192-atom DPA-3 frames = 20 GB, the bench's OOM kill); a large
        # value hands lamflow's batch to the model whole, as on a GPU
        env = {**os.environ, "DP_INFER_BATCH_SIZE": "1000000"}

        def label(mode: str, where: str, limit: bool):
            return subprocess.run([sys.executable, str(script), model, str(tmp_path / where), mode,
                                   str(cgroup) if limit else "-", *systems],
                                  capture_output=True, text=True, timeout=600, env=env)

        free = label("lamflow", "free", limit=False)  # unlimited: all seven big frames in one batch
        assert free.returncode == 0, free.stderr[-2000:]
        seen = json.loads(free.stdout.splitlines()[-1])
        # the limit leaves room for about four big frames beside the process, not for seven
        limit = int((seen["peak_gb"] - 3 * seen["frame_gb"]) * 1e9)
        for name in (limit_file, "memory.memsw.limit_in_bytes"):  # no swap to hide in
            if (cgroup / name).is_file():
                (cgroup / name).write_text(str(limit))
        naive = label("naive", "naive", limit=True)
        assert naive.returncode == -9, (naive.returncode, naive.stdout[-500:], naive.stderr[-1500:])  # OOM-killed
        ours = label("lamflow", "limited", limit=True)
        assert ours.returncode == 0, ours.stderr[-2000:]
        assert json.loads(ours.stdout.splitlines()[-1])["frames"] == 11
    finally:
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                import time
                time.sleep(0.1)
