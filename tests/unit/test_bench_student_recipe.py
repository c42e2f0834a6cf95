"""bench/student_recipe.py: a recipe is its parts deep-merged in order (or wrapped around the
descriptor, for a three-body embedding), and a training's time per
step is DeePMD-kit's own wall time between its log lines (bench/gpu.py's reading), start-up and
the first interval excluded, and no figure where a training logged too little."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from student_recipe import apply, recipe, step_seconds, time_students, wrap  # noqa: E402


def test_a_recipe_merges_its_parts_and_config_adds_nothing():
    assert recipe("config") == {}
    merged = recipe("atoms512+rcut6+smth0.5")
    assert merged["training"]["training_data"]["batch_size"] == "auto:512"
    assert merged["model"]["descriptor"] == {"rcut": 6.0, "rcut_smth": 0.5}  # two parts, one dict
    assert recipe("atoms512+atoms2048")["training"]["training_data"]["batch_size"] == "auto:2048"  # later wins


def test_a_wrap_part_joins_a_three_body_embedding_to_the_rendered_descriptor_in_a_hybrid():
    two_body = {"type": "se_e2_a", "rcut": 5.0, "sel": "auto"}
    config = wrap({"model": {"descriptor": dict(two_body)}}, "atoms512+e3")
    assert recipe("atoms512+e3") == recipe("atoms512")  # not a key merge
    hybrid = config["model"]["descriptor"]
    assert hybrid["type"] == "hybrid" and hybrid["list"][0] == two_body
    assert hybrid["list"][1]["type"] == "se_e3" and hybrid["list"][1]["rcut"] < two_body["rcut"]
    assert wrap({"model": {"descriptor": dict(two_body)}}, "atoms512")["model"]["descriptor"] == two_body


def test_a_recipe_on_a_config_that_is_already_a_hybrid_changes_its_members_not_the_hybrid():
    """The Si example's student is se_e2_a+se_e3: descriptor keys (rcut6) go to its two-body member,
    and e3short replaces its se_e3 rather than nesting a hybrid in a hybrid."""
    hybrid = {"type": "hybrid", "list": [{"type": "se_e2_a", "rcut": 5.0}, {"type": "se_e3", "rcut": 4.0}]}
    config = apply({"model": {"descriptor": hybrid}, "training": {"training_data": {"batch_size": "auto"}}},
                   "atoms512+rcut6+e3short")
    members = config["model"]["descriptor"]["list"]
    assert config["model"]["descriptor"]["type"] == "hybrid" and [m["type"] for m in members] == ["se_e2_a", "se_e3"]
    assert members[0]["rcut"] == 6.0 and members[1]["rcut"] == 3.5
    assert config["training"]["training_data"]["batch_size"] == "auto:512"
    flat = apply({"model": {"descriptor": {"type": "se_e2_a", "rcut": 5.0}}}, "rcut6")
    assert flat["model"]["descriptor"] == {"type": "se_e2_a", "rcut": 6.0}


def test_step_seconds_leaves_out_start_up_and_the_first_interval(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "[2026-11-27 11:59:40] DEEPMD INFO    data stat ... (start-up: not a batch line)\n"
        "[2026-11-27 11:59:59] DEEPMD INFO    Batch       1: total wall time = 9.10 s\n"
        "[2026-11-27 12:00:00] DEEPMD INFO    Batch     100: total wall time = 2.00 s, eta = 0:01:00\n"
        "[2026-11-27 12:00:01] DEEPMD INFO    Batch     200: total wall time = 2.20 s, eta = 0:00:50\n"
        "[2026-11-27 12:00:01] DEEPMD INFO    Batch     200: training loss 0.1\n"
    )
    assert step_seconds(log) == pytest.approx(2.2 / 100)  # batches 100-200; 1-100 holds compilation
    log.write_text("Batch       1: total wall time = 9.10 s\n")
    assert step_seconds(log) is None  # one line: no interval to time
    assert step_seconds(tmp_path / "absent.log") is None


@pytest.mark.parametrize("args, says", [
    (["--test", "cold"], "--test: expected NAME=DIR"),
    (["--test", "cold=/no/such/system"], "/no/such/system: not a deepmd/npy system"),
    (["--test", "cold=SYS", "--recipes", "atoms512+huge"], "--recipes: unknown parts ['huge']"),
    (["--test", "cold=SYS", "--config", "/no/such.yaml"], "--config: /no/such.yaml: file not found"),
    (["--test", "cold=SYS", "--speed", "/no/cell.extxyz"], "--speed: /no/cell.extxyz: no such file"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_training(tmp_path, args, says):
    import subprocess

    system = tmp_path / "sys"
    (system / "set.000").mkdir(parents=True)
    (system / "type.raw").write_text("0\n")
    args = [a.replace("SYS", str(system)) for a in args]
    out = subprocess.run([sys.executable, str(REPO / "bench/student_recipe.py"), "--train", str(system), *args,
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
    assert says in out.stderr and not (tmp_path / "work").exists()


def test_speed_compresses_each_student_and_times_it_in_lammps_interleaved(tmp_path, students, cu_frames):
    """--speed: each recipe's checkpoint frozen, compressed and timed (the repeats interleaved
    across recipes); a recipe with no checkpoint (its training failed) gets no timing."""
    import argparse
    import json
    import shutil

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(students[1].checkpoint, tmp_path / name / "model.ckpt.pt")
    (tmp_path / "failed").mkdir()
    args = argparse.Namespace(workdir=tmp_path, threads=1, speed=cu_frames, speed_repeats=2)
    timings = time_students(args, ["a", "failed", "b"], ["Cu"])
    assert set(timings) == {"a", "b"} and all(len(t) == 2 and min(t) > 0 for t in timings.values())
    assert (tmp_path / "a" / "compressed" / "model-compressed.pth").is_file()
    assert json.loads((tmp_path / "speeds.json").read_text()) == timings
    order = sorted(tmp_path.glob("*/speed-*"), key=lambda p: p.stat().st_mtime)
    assert [p.parent.name for p in order] == ["a", "b", "a", "b"]  # interleaved
