"""The distillation loop end to end (real training, MD and labelling), through the CLI and
Prefect's embedded engine; then the same command again, which must recompute nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in_use, write_cu_frames
from lamflow.flows.core.execute import execute
from lamflow.steps.evaluate import EvaluateParams
from lamflow.steps.evaluate import run as evaluate_run
from lamflow.steps.label import LabelParams
from lamflow.steps.train import FreezeParams


@pytest.mark.slow(seconds=30)
def test_two_iterations_with_prefect_then_resume_recomputes_nothing(prefect_cli_run):
    cmd, stdout, run = prefect_cli_run.cmd, prefect_cli_run.stdout, prefect_cli_run.run
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "max_iterations" and len(report["iterations"]) == 2
    it0, it1 = report["iterations"]
    assert it0["labels_added"] == 8 and it1["labels_added"] == 8  # capped candidates, all labelled
    assert (it0["n_train_frames"], it1["n_train_frames"]) == (8 + 8, 8 + 16)
    assert it0["n_frames"] == 10 and it1["n_frames"] == 20  # 1 and 2 temperatures × 10 frames (not step 0)
    assert it0["rmse_f"] > 0 and it0["n_eval_frames"] == 5
    assert it1["speed_ratio"] > 0 and report["teacher_speed"] > 0
    assert set(it0["seconds"]) >= {"explore", "select", "teacher_label", "evaluate", "speed", "train"}
    # the layout users look into
    assert (run / "iter-000/explore/task-000/task.000/model_devi.out").is_file()
    assert sorted(p.name for p in (run / "iter-000/label").iterdir() if p.is_dir()) == \
        ["chunk-000", "chunk-001"]  # 8 candidates fanned out in chunks of 5
    assert (run / "iter-000/train-00/model-compressed.pth").is_file()
    assert report["final_student"].endswith("iter-000/train-00/model-compressed.pth")
    # student 1 continued from student 0's checkpoint
    assert str(run / "init/train-00") in (run / "iter-000/train-00/train.log").read_text()
    for png in ("deviations.png", "convergence.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    assert "lamflow distill" in stdout and "max_iterations after 2 iterations" in stdout
    # stdout was a pipe (as a Slurm output file, CI or nohup): plain timestamped lines, step by
    # step, and the iteration table as text — not a live view that shows up only at the end
    assert re.search(r"^\d\d:\d\d:\d\d start init/", stdout, re.M), stdout[:2000]
    assert re.search(r"^\d\d:\d\d:\d\d iter-000/select: ran in [\d.]+ s; n_frames=10", stdout, re.M), stdout[-4000:]
    assert re.search(r"^\d\d:\d\d:\d\d iteration 1 done$", stdout, re.M)
    assert "\x1b[" not in stdout  # no terminal control codes in a log file

    assert prefect_cli_run.returncode == 3  # delivered, but not converged: a script can tell
    with run_in_use(prefect_cli_run, exclusive=True):  # others read this run meanwhile
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 3, again.stderr[-3000:]
    second = json.loads((run / "report.json").read_text())
    assert second["step_seconds"] == 0.0  # every step came from its record
    assert second["cached_steps"] >= 20
    # ...and the report still counts what they cost when they ran, per step kind and in all
    first = report
    assert second["compute_seconds"] == pytest.approx(first["compute_seconds"]) and first["compute_seconds"] > 0
    assert second["init_seconds"] == pytest.approx(first["init_seconds"])
    assert second["iterations"][0]["seconds"] == pytest.approx(first["iterations"][0]["seconds"])
    assert second["iterations"][1]["rmse_f"] == it1["rmse_f"]


def test_step_records_skip_finished_work_and_notice_changed_inputs(tmp_path):
    frames = write_cu_frames(tmp_path / "s.extxyz", 3)
    params = LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "lab")
    first = execute("label", params)
    again = execute("label", params)
    assert not first.cached and again.cached and again.result == first.result
    write_cu_frames(frames, 4)  # the input changed: the record no longer applies
    changed = execute("label", params)
    assert not changed.cached and changed.result.n_frames == 4


def test_checkpoint_teacher_is_frozen_for_lammps(tmp_path, students, cu_data):
    frozen = execute("freeze", FreezeParams(checkpoint=students[1].checkpoint, output=tmp_path / "t"))
    model = frozen.result.model
    assert model.name == "model.pth"
    a = evaluate_run(EvaluateParams(model=model, systems=cu_data.systems, type_map=["Cu"]))
    b = evaluate_run(EvaluateParams(model=students[1].model, systems=cu_data.systems, type_map=["Cu"]))
    assert a.rmse_f == pytest.approx(b.rmse_f, rel=1e-6)


def _calculator_teacher_config(tmp_path: Path, name: str) -> dict:
    """A tiny Cu distillation of an ASE calculator (EMT) into two students: ~20 s per iteration."""
    from conftest import TINY_SE_E2_A

    write_cu_frames(tmp_path / "start.extxyz", 1, seed=3)
    return {
        "name": name, "type_map": ["Cu"], "teacher": {"calculator": "emt"},
        "student": {"template": "se_e2_a", "numb_steps": 30, "numb_steps_next": 10, "compress": False,
                    "overrides": TINY_SE_E2_A},
        "configurations": {"files": ["start.extxyz"]},
        "initial_data": {"perturbed_frames": 6},
        "iterations": [{"temps": [300], "nsteps": 60, "trj_freq": 10}],
        "selection": {"trust_lo": 0.0001, "trust_hi": 50.0, "max_candidates": 4, "validation_frames": 3},
        "convergence": {"accurate_ratio": 1.0, "consecutive": 1},
        "max_iterations": 2, "label_chunk_size": 4,
    }


@pytest.mark.slow(seconds=60)
def test_adaptive_lower_level_converges_and_the_final_student_is_judged(tmp_path):
    """trust_lo: adaptive (dpgen2's adaptive-lower). Tiny students trained 30 steps are never
    "accurate" at any sane fixed level; the adaptive one labels the max_candidates worst frames
    below trust_hi each iteration, and exploration converges once that level stops moving (here a
    loose tolerance: the rule's arithmetic is in tests/unit/test_config.py). With a final training,
    max_rmse_f judges the delivered student, not the short-trained explorers: missed, the run ends
    'inaccurate' (exit 3); the same run with a limit it meets is converged and recomputes nothing."""
    import sys

    import yaml

    from lamflow.flows.pipelines.distill.records import read_report

    cfg = _calculator_teacher_config(tmp_path, "adaptive")
    cfg["student"]["numb_steps_final"] = 20
    cfg["selection"] = {"trust_lo": "adaptive", "trust_hi": 50.0, "max_candidates": 3, "validation_frames": 2}
    cfg["convergence"] = {"level_tolerance": 10.0, "consecutive": 2, "max_rmse_f": 1e-6}
    cfg["max_iterations"] = 4
    cli = [sys.executable, "-m", "lamflow.flows.cli"]

    def distill(max_rmse_f: float) -> subprocess.CompletedProcess:
        cfg["convergence"]["max_rmse_f"] = max_rmse_f
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        return subprocess.run([*cli, "distill", str(tmp_path / "config.yaml"), "--engine", "local",
                               "--workdir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)

    out = distill(1e-6)
    assert out.returncode == 3, out.stderr[-2000:]
    report = read_report(tmp_path / "run")
    assert report.status == "inaccurate" and not report.converged and report.trust_lo_adaptive
    assert report.final.meets_rule is False and report.final.rmse_f > 1e-6
    assert "exploration converged, but the delivered student" in " ".join(out.stdout.split())
    # what would help, from its fit on its own training frames (lcurve.out) beside the unseen ones
    assert report.final.fit_rmse_f > 0 and "on its own training frames against" in " ".join(out.stdout.split())
    # each iteration records how its exploring students fit their own frames (the struggling note reads it)
    assert all(it.fit_rmse_f > 0 for it in report.iterations)
    assert [it.meets_rule for it in report.iterations] == [False, True, True]  # the first has no level before it
    for it in report.iterations:
        devi = np.load(it.deviations)
        below = np.sort(devi[devi < 50.0])
        assert it.trust_lo == pytest.approx(below[-3]) and it.n_selected == 3 and it.labels_added == 3
        assert it.accurate_ratio == pytest.approx((len(devi) - 3) / len(devi))
    assert "trust_lo" in out.stdout  # the terminal table shows each iteration's level
    # student.numb_steps_final: after the loop the last measured student trains on every label and
    # is measured on every iteration's validation frames (which no student trained on); it is the
    # student delivered and packaged
    final = report.final
    assert final.numb_steps == 20 and final.n_train_frames == report.iterations[-1].n_train_frames
    assert report.final_student == final.student and final.student.startswith(str(tmp_path / "run" / "final"))
    assert all(it.student != final.student for it in report.iterations)
    assert final.n_eval_frames == 2 * len(report.iterations)  # every iteration's validation frames
    assert "20" in (tmp_path / "run" / "final" / "train" / "lcurve.out").read_text().split()  # its own steps
    assert (tmp_path / "run" / "student.pth").read_bytes() == \
        (tmp_path / "run" / "final" / "train" / "model.pth").read_bytes()
    assert f"{final.n_eval_frames} unseen validation frames" in " ".join(out.stdout.split())

    again = distill(100.0)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = read_report(tmp_path / "run")
    assert rerun.status == "converged" and rerun.final.meets_rule and rerun.final.rmse_f == report.final.rmse_f
    assert rerun.step_seconds == 0  # every step read back: the limit is the rule's, not a step's
    shown = subprocess.run([*cli, "report", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "adaptive lower level (" in page and " → " in page
    pkg = subprocess.run([*cli, "package", str(tmp_path / "run"), "-o", str(tmp_path / "pkg")],
                         capture_output=True, text=True, timeout=300)
    assert pkg.returncode == 0, pkg.stderr[-2000:]
    card = json.loads((tmp_path / "pkg" / "model-card.json").read_text())
    assert card["rmse_f_vs_teacher"] == pytest.approx(rerun.final.rmse_f) and card["n_eval_frames"] == final.n_eval_frames


def test_a_final_training_needs_validation_frames_to_be_measured_on(tmp_path):
    """Without validation frames there is nothing to measure the delivered student on: the config
    is refused before any work (the final training itself runs in the adaptive test above)."""
    import sys

    import yaml

    cfg = _calculator_teacher_config(tmp_path, "final")
    cfg["student"]["numb_steps_final"] = 40
    cli = [sys.executable, "-m", "lamflow.flows.cli"]
    cfg["selection"]["validation_frames"] = 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    bad = subprocess.run([*cli, "config", "--check", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "numb_steps_final needs selection.validation_frames > 0" in bad.stderr
