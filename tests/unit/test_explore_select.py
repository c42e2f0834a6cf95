"""explore (LAMMPS + pair_style deepmd with two models) and select (trust levels, caps)."""

from __future__ import annotations

import json
from pathlib import Path

import dpdata
import numpy as np
import pytest

from lamflow.steps import explore, select
from lamflow.steps.errors import InputError, StepFailed


def test_md_with_two_models_writes_model_deviation(explored):
    assert [t.status for t in explored.tasks] == ["ok", "ok"]
    for task in explored.tasks:
        devi = np.loadtxt(task.path / "model_devi.out", ndmin=2)
        assert devi.shape[0] == 200 // 10 + 1  # every trj_freq steps, step 0 included
        assert np.all(devi[:, 4] > 0)  # max_devi_f: two different models disagree
        traj = dpdata.System(str(task.path / "traj.dump"), fmt="lammps/dump", type_map=["Cu"])
        assert len(traj) == devi.shape[0] and traj.get_natoms() == 32
        assert "pair_style      deepmd" in (task.path / "in.lammps").read_text()
    hot, cold = (np.loadtxt(t.path / "model_devi.out")[:, 4].mean() for t in explored.tasks[::-1])
    assert hot > cold  # 900 K wanders further from the training data than 300 K


def test_blown_up_md_is_marked_failed_not_raised(tmp_path, students, cu_frames):
    result = explore.run(explore.ExploreParams(
        output=tmp_path / "x", models=[students[0].model, students[1].model], type_map=["Cu"],
        structure=cu_frames, temps=[300, 1e8], nsteps=100, trj_freq=10, dt=0.05,
    ))
    assert [t.status for t in result.tasks] == ["ok", "failed"]
    assert "Lost atoms" in result.tasks[1].reason
    status = json.loads((result.tasks[1].path / "status.json").read_text())
    assert status["status"] == "failed"


def test_npt_grid_makes_one_task_per_point(tmp_path, students, cu_frames):
    result = explore.run(explore.ExploreParams(
        output=tmp_path / "npt", models=[students[0].compressed], type_map=["Cu"],
        structure=cu_frames, ensemble="npt", temps=[300], pressures=[1.0, 1000.0], nsteps=20,
        trj_freq=10,
    ))
    assert [(t.temp, t.pressure, t.status) for t in result.tasks] == [(300, 1.0, "ok"), (300, 1000.0, "ok")]
    assert "npt temp 300.0 300.0" in (result.tasks[1].path / "in.lammps").read_text()


def test_npt_on_a_slab_holds_the_pressure_in_its_plane_and_leaves_its_vacuum(tmp_path, students):
    """An isotropic barostat squeezes a slab's vacuum until it meets its image; LAMMPS users run
    slabs with x and y barostatted together, and so does lamflow where the file says the cell is
    not periodic along c. A slab along a is refused: LAMMPS' x is a."""
    import ase.io
    import dpdata
    from ase.build import fcc100
    from ase.geometry import permute_axes

    slab = fcc100("Cu", size=(2, 2, 4), a=3.61, vacuum=4.0)
    ase.io.write(tmp_path / "slab.extxyz", slab)
    result = explore.run(explore.ExploreParams(
        output=tmp_path / "npt", models=[students[0].compressed], type_map=["Cu"], structure=tmp_path / "slab.extxyz",
        ensemble="npt", temps=[300], pressures=[20000.0], nsteps=200, trj_freq=20, tau_p=0.05))
    (task,) = result.tasks
    assert task.status == "ok", task.reason
    assert "x 20000.0 20000.0 0.05 y 20000.0 20000.0 0.05 couple xy" in (task.path / "in.lammps").read_text()
    cells = dpdata.System(str(task.path / "traj.dump"), fmt="lammps/dump", type_map=["Cu"])["cells"]
    assert np.allclose(cells[:, 2, 2], slab.cell[2, 2]) and not np.allclose(cells[:, 0, 0], slab.cell[0, 0])
    assert np.allclose(cells[:, 0, 0], cells[:, 1, 1])  # coupled: the square stays square

    ase.io.write(tmp_path / "turned.extxyz", permute_axes(slab, [2, 0, 1]))  # the vacuum along a
    with pytest.raises(InputError, match="npt: not periodic along a: a barostat holds the pressure of a bulk cell"):
        explore.run(explore.ExploreParams(output=tmp_path / "turned", models=[students[0].compressed], type_map=["Cu"],
                                          structure=tmp_path / "turned.extxyz", ensemble="npt", temps=[300]))


def test_a_model_in_a_folder_with_a_space_in_its_name_runs(tmp_path, students, cu_frames):
    """LAMMPS splits its input lines at spaces: a run directory named ``my runs`` gave
    ``Failed to open file: /…/my``, every exploration task failed and the run stopped."""
    folder = tmp_path / "my runs"
    folder.mkdir()
    model = folder / "student model.pth"
    model.write_bytes(Path(students[0].compressed).read_bytes())
    result = explore.run(explore.ExploreParams(output=folder / "explore", models=[model, model], type_map=["Cu"],
                                               structure=cu_frames, temps=[300], nsteps=20, trj_freq=10))
    assert [t.status for t in result.tasks] == ["ok"], result.tasks[0].reason


def test_explore_bad_input(tmp_path, students, cu_frames):
    with pytest.raises(InputError, match="model file not found"):
        explore.run(explore.ExploreParams(output=tmp_path / "a", models=[tmp_path / "no.pth"],
                                          type_map=["Cu"], structure=cu_frames, temps=[300]))
    with pytest.raises(InputError, match="not in type_map"):
        explore.run(explore.ExploreParams(output=tmp_path / "b", models=[students[0].model],
                                          type_map=["Al"], structure=cu_frames, temps=[300]))


def test_an_install_without_mpichs_library_is_named_before_any_lammps_starts(tmp_path, monkeypatch, students,
                                                                            cu_frames):
    """``pip install --target`` leaves mpich's lib/ out (found on a GPU node's image): the step says
    so in one line, and how to install instead, before any task (each task failed alike with the
    loader's error). Where the library is found, nothing is said."""
    import sys

    from lamflow.steps import runtime

    assert runtime.lammps_cannot_start() is None  # this venv's mpich

    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(runtime, "_dist_file", lambda dist, name: None)  # the RECORD's path is not there
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(runtime.ctypes, "CDLL", no_library)
    with pytest.raises(StepFailed, match=r"^LAMMPS cannot start here: mpich's libmpi.so.12, .*--target.*--prefix"):
        explore.run(explore.ExploreParams(output=tmp_path / "x", models=[students[0].model], type_map=["Cu"],
                                          structure=cu_frames, temps=[300], nsteps=20, trj_freq=10))
    assert not (tmp_path / "x").exists()
    from lamflow.steps import speed

    with pytest.raises(StepFailed, match=r"^LAMMPS cannot start here"):  # not a timing's failure: raised, not kept
        speed.run(speed.SpeedParams(model=students[0].model, structure=cu_frames, type_map=["Cu"], nsteps=20,
                                    output=tmp_path / "timed"))


def test_a_timing_md_that_fails_returns_its_reason_instead_of_ending_the_run(tmp_path, students, cu_frames):
    """speed is a measurement beside the run's product: its failed MD is a result with the reason
    (no speed), not a raised error, which would end a distillation hours in (on Argo, the whole
    workflow)."""
    from lamflow.steps import speed

    blown = speed.run(speed.SpeedParams(model=students[0].model, structure=cu_frames, type_map=["Cu"], temp=1e12,
                                        nsteps=50, output=tmp_path / "blown"))
    assert blown.timesteps_per_second is None and blown.us_per_atom_step is None
    assert "Lost atoms" in blown.error or "the timing MD failed" in blown.error, blown.error
    timed = speed.run(speed.SpeedParams(model=students[0].model, structure=cu_frames, type_map=["Cu"], nsteps=50,
                                        output=tmp_path / "timed"))
    assert timed.error == "" and timed.timesteps_per_second > 0 and timed.natoms > 0


def _errors(tasks) -> np.ndarray:
    """Each explored frame's error as select judges it: its deviation, or inf where its atoms
    overlap (a broken frame: failed, never labelled; the tiny students' 900 K MD fuses some)."""
    frames = [select.explored_frames(t) for t in tasks]
    devi = np.concatenate([select.max_force_deviation(t)[f] for t, f in zip(tasks, frames)])
    broken = np.concatenate([select.broken_frames(select.read_trajectory(t, ["Cu"]), f) for t, f in zip(tasks, frames)])
    return np.where(broken, np.inf, devi)


def test_select_classifies_and_caps(tmp_path, explored):
    tasks = [t.path for t in explored.tasks]
    # the starting cell (step 0) of each task is given, not explored: it is not counted
    devi = _errors(tasks)
    lo, hi = np.quantile(devi[np.isfinite(devi)], [0.25, 0.9])
    result = select.run(select.SelectParams(output=tmp_path / "s", tasks=tasks, type_map=["Cu"],
                                            trust_lo=lo, trust_hi=hi, max_candidates=5, seed=3))
    assert result.n_frames == len(devi) == 40
    assert result.n_accurate == int(np.sum(devi < lo))
    assert result.n_failed == int(np.sum(devi >= hi))
    assert result.n_candidate == len(devi) - result.n_accurate - result.n_failed
    assert result.n_selected == 5
    picked = dpdata.System(str(result.candidates[0]), fmt="deepmd/npy")
    assert len(picked) == 5 and picked.get_natoms() == 32
    assert result.accurate_ratio + result.candidate_ratio + result.failed_ratio == pytest.approx(1)


def test_select_skips_the_starting_cell_and_can_discard_failed_frames(tmp_path, explored):
    tasks = [t.path for t in explored.tasks]
    assert [select.explored_frames(t)[0] for t in tasks] == [1] * len(tasks)
    devi = _errors(tasks)
    hi = float(np.quantile(devi[np.isfinite(devi)], 0.5))
    kept = select.run(select.SelectParams(output=tmp_path / "k", tasks=tasks, type_map=["Cu"], trust_lo=0.0,
                                          trust_hi=hi, max_candidates=100, validation_frames=0))
    dropped = select.run(select.SelectParams(output=tmp_path / "d", tasks=tasks, type_map=["Cu"], trust_lo=0.0,
                                             trust_hi=hi, max_candidates=100, validation_frames=0,
                                             label_failed=False))
    assert kept.n_selected == np.isfinite(devi).sum()  # a teacher labels failed frames too (not broken ones)
    assert dropped.n_selected == int(np.sum(devi < hi)) < len(devi)
    assert kept.n_failed == dropped.n_failed == int(np.sum(devi >= hi))


def test_select_highest_first_takes_the_worst_frames(tmp_path, explored):
    tasks = [t.path for t in explored.tasks]
    devi = np.concatenate([select.max_force_deviation(t) for t in tasks])
    result = select.run(select.SelectParams(output=tmp_path / "h", tasks=tasks, type_map=["Cu"],
                                            trust_lo=0.0, trust_hi=10.0, max_candidates=3,
                                            strategy="highest"))
    assert result.n_selected == 3
    # the three highest deviations came from frames that exist in the dumps
    top = np.sort(devi)[-3:]
    assert np.all(top >= np.quantile(devi, 0.9))


def test_select_adaptive_lower_level_takes_the_budget_of_worst_frames_below_trust_hi(tmp_path, explored):
    """dpgen2's adaptive-lower: the level is read off the exploration, so the candidate zone holds
    max_candidates frames whatever the student's accuracy; failed frames stay failed."""
    tasks = [t.path for t in explored.tasks]
    devi = _errors(tasks)
    hi = float(np.quantile(devi[np.isfinite(devi)], 0.8))
    below = np.sort(devi[devi < hi])
    result = select.run(select.SelectParams(output=tmp_path / "a", tasks=tasks, type_map=["Cu"], trust_lo="adaptive",
                                            trust_hi=hi, max_candidates=6, label_failed=False, validation_frames=0))
    assert result.trust_lo == pytest.approx(below[-6]) and below[-7] < result.trust_lo < hi
    assert result.n_candidate == result.n_selected == 6
    assert result.n_failed == int(np.sum(devi >= hi)) and result.n_accurate == len(devi) - 6 - result.n_failed
    assert json.loads((tmp_path / "a" / "select.json").read_text())["trust_lo"] == result.trust_lo
    # a budget larger than the frames below trust_hi: all of them, the level at their lowest
    every = select.run(select.SelectParams(output=tmp_path / "b", tasks=tasks, type_map=["Cu"], trust_lo="adaptive",
                                           trust_hi=hi, max_candidates=1000, label_failed=False, validation_frames=0))
    assert every.trust_lo == pytest.approx(below[0]) and every.n_accurate == 0 and every.n_selected == len(below)
    # a fixed level is reported as given
    fixed = select.run(select.SelectParams(output=tmp_path / "c", tasks=tasks, type_map=["Cu"], trust_lo=0.01,
                                           trust_hi=hi, validation_frames=0))
    assert fixed.trust_lo == 0.01


def test_select_adaptive_level_edge_cases():
    assert select.adaptive_level(np.array([0.1, 0.2, 0.3]), 0.25, 1) == 0.2  # frames at/above trust_hi never set it
    assert select.adaptive_level(np.array([0.5, 0.9]), 0.25, 10) == 0.25  # nothing below: an empty zone
    assert select.adaptive_level(np.zeros(0), 0.25, 10) == 0.25


def test_select_trust_levels_validated():
    with pytest.raises(ValueError, match="trust_lo"):
        select.SelectParams(output="x", tasks=[], type_map=["Cu"], trust_lo=0.3, trust_hi=0.1)


def test_select_names_why_no_exploration_task_ran(tmp_path, students, cu_frames, explored):
    """A LAMMPS that cannot start (here: a bad input line; on a new machine, a library it cannot
    load, a run directory it could not open) learns nothing about the student: explore fails,
    to be retried, and records nothing a rerun would read back. Beside tasks that ran, such a
    task is one failed task, and select says why when it is the only one."""
    import shutil

    bad = tmp_path / "bad.in"
    bad.write_text("units metal\nread_data conf.lmp\npair_style deepmd\npair_coeff * *\nnot_a_lammps_command\n"
                   "run 20\n")
    with pytest.raises(StepFailed, match="no exploration task reached its first MD step .1 failed.; first: "
                                         "task.000: .*Unknown command"):
        explore.run(explore.ExploreParams(
            output=tmp_path / "broken", models=[students[0].model, students[1].model], type_map=["Cu"],
            structure=cu_frames, trj_freq=10, lammps_template=bad))
    assert not (tmp_path / "broken").exists()
    broken = tmp_path / "unstarted" / "task.000"  # one task of a step whose other tasks ran
    shutil.copytree(explored.tasks[0].path, broken)
    (broken / "model_devi.out").write_text("#       step         max_devi_v\n")  # the header alone
    (broken / "traj.dump").unlink()
    failed = explored.tasks[0].model_copy(update={"path": broken, "status": "failed", "reason": "ERROR: Unknown command"})
    (broken / "status.json").write_text(failed.model_dump_json())
    with pytest.raises(StepFailed, match="no exploration task ran.*Unknown command"):
        select.run(select.SelectParams(output=tmp_path / "s1", tasks=[broken], type_map=["Cu"],
                                       trust_lo=0.01, trust_hi=1.0))
    ran = [t.path for t in explored.tasks]
    result = select.run(select.SelectParams(output=tmp_path / "s2", tasks=[*ran, broken],
                                            type_map=["Cu"], trust_lo=0.01, trust_hi=1.0))
    assert result.n_failed_tasks == 1 and result.n_frames == 2 * 200 // 10


def test_frames_of_a_trajectory_that_broke_are_failed_and_still_offered_for_labelling(tmp_path, explored):
    """A first student's MD often breaks in every task (lost atoms, a crash). The frames it wrote
    before count as failed; with label_failed (the default) they are offered like any failed frame,
    so the loop can still learn where the student went wrong, and with label_failed off none is."""
    import shutil

    tasks = []
    for t in explored.tasks:  # the real trajectories, then LAMMPS killed (as explore records a crash)
        copy = tmp_path / "md" / t.path.name
        shutil.copytree(t.path, copy)
        broken = t.model_copy(update=dict(path=copy, status="failed", crash="SIGKILL",
                                          reason="LAMMPS failed (killed by SIGKILL (signal 9))"))
        (copy / "status.json").write_text(broken.model_dump_json())
        tasks.append(copy)
    # as LAMMPS does when it loses atoms: the last step's deviation row is written, its dump frame is not
    dump = tasks[0] / "traj.dump"
    text = dump.read_text()
    dump.write_text(text[: text.rindex("ITEM: TIMESTEP")])
    devi = np.concatenate([select.max_force_deviation(t)[select.explored_frames(t)] for t in tasks])
    hi = float(np.quantile(devi, 0.8))
    offered = select.run(select.SelectParams(output=tmp_path / "o", tasks=tasks, type_map=["Cu"], trust_lo="adaptive",
                                             trust_hi=hi, max_candidates=6, strategy="highest", validation_frames=4))
    assert offered.n_failed_tasks == 2 and offered.n_failed == offered.n_frames == len(devi) == 40
    assert offered.n_accurate == offered.n_candidate == 0 and offered.failed_ratio == 1
    assert offered.n_selected == 6 and len(dpdata.System(str(offered.validation[0]), fmt="deepmd/npy")) == 4
    picked = dpdata.System(str(offered.candidates[0]), fmt="deepmd/npy")
    worst = [dpdata.System(str(t / "traj.dump"), fmt="lammps/dump", type_map=["Cu"]) for t in tasks]
    top = sorted(((d, ti, fi) for ti, t in enumerate(tasks)
                  for fi, d, fused in zip(select.explored_frames(t), select.max_force_deviation(t)[select.explored_frames(t)],
                                          select.broken_frames(select.read_trajectory(t, ["Cu"]), select.explored_frames(t)))
                  if fi < len(worst[ti]) and not fused), reverse=True)[:6]
    expected = np.array([worst[ti]["coords"][fi] for _, ti, fi in sorted(top, key=lambda x: (x[1], x[2]))])
    assert np.allclose(np.sort(picked["coords"].reshape(6, -1), axis=0), np.sort(expected.reshape(6, -1), axis=0))
    discarded = select.run(select.SelectParams(output=tmp_path / "d", tasks=tasks, type_map=["Cu"], trust_lo="adaptive",
                                               trust_hi=hi, max_candidates=6, label_failed=False))
    assert discarded.n_failed == 40 and discarded.n_selected == 0 and not discarded.candidates
    assert not discarded.validation and discarded.trust_lo == hi
    # the budget is not spent on the deviation row without a frame: the `rank` highest offered frames,
    # that row's rank included, fill `rank` labels
    last = select.max_force_deviation(tasks[0])[-1]
    fused = np.concatenate([select.broken_frames(select.read_trajectory(t, ["Cu"]), select.explored_frames(t)) for t in tasks])
    rank = int(np.sum(devi[~fused] >= last))  # fused frames are never offered
    budget = select.run(select.SelectParams(output=tmp_path / "b", tasks=tasks, type_map=["Cu"], trust_lo="adaptive",
                                            trust_hi=hi, max_candidates=rank, strategy="highest", validation_frames=0))
    assert budget.n_selected == rank


def test_a_lammps_process_that_aborts_is_named_by_its_signal_and_last_words(tmp_path):
    """A C++ abort inside a model's library writes no ``ERROR`` line: the reason names the
    signal and the line where torch says why, not a bare negative exit code."""
    import subprocess
    import sys

    code = ("import os, sys; print('terminate called after throwing an instance of c10::Error', file=sys.stderr); "
            "print('  what():  CUDA out of memory', file=sys.stderr); print('trailing', file=sys.stderr); "
            "sys.stderr.flush(); os.abort()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -6
    assert explore.lammps_error(tmp_path, proc) == "LAMMPS failed (killed by SIGABRT (signal 6)): what():  CUDA out of memory"
    (tmp_path / "log.lammps").write_text("Step Temp\nERROR: Lost atoms: original 64 current 63 (src/thermo.cpp:494)\n")
    assert explore.lammps_error(tmp_path, proc).startswith("ERROR: Lost atoms")
    failed = subprocess.run([sys.executable, "-c", "import sys; sys.exit(7)"], capture_output=True, text=True)
    assert explore.lammps_error(tmp_path / "none", failed) == "LAMMPS failed (exit 7)"


def test_a_crashed_lammps_runs_once_more_and_a_second_crash_is_recorded(tmp_path, monkeypatch, students, cu_frames):
    """A crash (killed by a signal, no LAMMPS error: the OOM killer, a preempted node) says nothing
    about the student, so the task runs again before it counts as a failed task."""
    import sys

    real, calls = explore.run_child, []

    def crash_first(cmd, **kw):
        calls.append(kw["cwd"].name)
        if len(calls) in crashing:
            return real([sys.executable, "-c", "import os; os.abort()"], **kw)
        return real(cmd, **kw)

    monkeypatch.setattr(explore, "run_child", crash_first)
    params = dict(models=[students[0].model, students[1].model], type_map=["Cu"], structure=cu_frames,
                  temps=[300, 600], nsteps=20, trj_freq=10)
    crashing = {1}  # the first task's first run
    once = explore.run(explore.ExploreParams(output=tmp_path / "once", **params))
    assert calls == ["task.000", "task.000", "task.001"]
    assert [(t.status, t.crash) for t in once.tasks] == [("ok", None), ("ok", None)]
    assert len(np.loadtxt(once.tasks[0].path / "model_devi.out", ndmin=2)) == 3
    calls.clear()
    crashing = {1, 2}  # and its second
    twice = explore.run(explore.ExploreParams(output=tmp_path / "twice", **params))
    assert calls == ["task.000", "task.000", "task.001"]
    assert [(t.status, t.crash) for t in twice.tasks] == [("failed", "SIGABRT"), ("ok", None)]
    assert "SIGABRT" in twice.tasks[0].reason


def test_a_frame_whose_atoms_overlap_is_failed_whatever_the_deviation_says(tmp_path, explored):
    """Two students trained on the same few frames can agree where both are wrong (tried: npt on
    a Cu primitive cell fused atoms to 1.2 Å at a deviation below 0.02 eV/Å, every frame
    "accurate"). A frame with two atoms closer than half their covalent radii is failed, whatever
    its deviation, and not offered for labelling (the tiny students' 900 K MD here fuses some)."""
    import shutil

    from lamflow.steps.structures import overlaps

    tasks = []
    for t in explored.tasks:
        copy = tmp_path / "md" / t.path.name
        shutil.copytree(t.path, copy)
        tasks.append(copy)
    params = dict(tasks=tasks, type_map=["Cu"], trust_lo=0.05, trust_hi=10.0, max_candidates=40, validation_frames=40)
    before = select.run(select.SelectParams(output=tmp_path / "before", **params))
    explored_atoms = [dpdata.System(str(t / "traj.dump"), fmt="lammps/dump", type_map=["Cu"]).to("ase/structure")
                      for t in tasks]
    fused = sum(len(overlaps([a[i] for i in select.explored_frames(t)])) for a, t in zip(explored_atoms, tasks))
    assert before.n_broken == fused
    # frame 3 of the first task (2.3 Å apart at least in the real MD): atom 2 moved onto atom 1
    assert not overlaps([explored_atoms[0][3]])
    dump = tasks[0] / "traj.dump"
    blocks = dump.read_text().split("ITEM: TIMESTEP")
    lines = blocks[4].splitlines()
    atoms = lines.index("ITEM: ATOMS id type x y z fx fy fz") + 1
    first = lines[atoms].split()
    second = lines[atoms + 1].split()
    second[2:5] = [f"{float(v) + 0.3 * (i == 0):.6f}" for i, v in enumerate(first[2:5])]
    lines[atoms + 1] = " ".join(second)
    blocks[4] = "\n".join(lines) + "\n"
    dump.write_text("ITEM: TIMESTEP".join(blocks))
    after = select.run(select.SelectParams(output=tmp_path / "after", **params))
    assert after.n_broken == before.n_broken + 1 and after.n_failed == before.n_failed + 1 == after.n_broken
    assert after.n_accurate + after.n_candidate == before.n_accurate + before.n_candidate - 1
    offered = dpdata.System(str(after.validation[0]), fmt="deepmd/npy")
    assert len(offered) == 40 - after.n_broken  # every frame but the fused ones
    assert not overlaps(offered.to("ase/structure"))
