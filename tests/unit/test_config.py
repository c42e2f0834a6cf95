"""The distill config: every bad input is one line naming the field, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lamflow.flows.pipelines.distill.config import DistillConfig
from lamflow.steps.errors import InputError

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "cu-emt" / "config.yaml"


def base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_quickstart_config_is_valid_and_paths_resolve():
    cfg = DistillConfig.load(QUICKSTART)
    assert cfg.configurations.files[0] == QUICKSTART.parent / "cu-fcc-32.extxyz"
    assert cfg.teacher.train.template == "dpa3"  # a template name stays a name
    assert cfg.exploration(0).temps == [300, 600]
    assert cfg.exploration(99) == cfg.iterations[-1]  # the last setting repeats


def test_a_pattern_in_a_list_of_files_is_the_files_it_matches(tmp_path):
    """dpgen2's configurations take ``files: ["POSCAR_*"]``; lamflow's lists of files do too."""
    from lamflow.flows.pipelines.distill.config import check_files

    for name in ("POSCAR_2", "POSCAR_1", "other.vasp"):
        (tmp_path / "confs").mkdir(exist_ok=True)
        (tmp_path / "confs" / name).write_text(QUICKSTART.parent.joinpath("cu-fcc-32.extxyz").read_text())
    raw = base()
    raw["configurations"]["files"] = ["confs/POSCAR_*", "confs/other.vasp"]
    raw["teacher"]["train"]["label"]["structures"] = ["confs/POSCAR_[12]"]
    cfg = DistillConfig.parse(raw, tmp_path)
    assert cfg.configurations.files == [tmp_path / "confs" / n for n in ("POSCAR_1", "POSCAR_2", "other.vasp")]
    assert cfg.teacher.train.label.structures == [tmp_path / "confs" / n for n in ("POSCAR_1", "POSCAR_2")]
    raw["configurations"]["files"] = ["confs/OUTCAR_*"]
    with pytest.raises(InputError, match=r"configurations.files\[0\]: no file matches .*confs/OUTCAR_\*"):
        check_files(DistillConfig.parse(raw, tmp_path), with_teacher=False)


def _set(raw: dict, dotted: str, value):
    node = raw
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value


_DELETE = object()

CASES = [
    ("iterations.0.temps", "300K", "iterations[0].temps: expected a list, got '300K'"),
    ("iterations.0.temps", ["300K"], "iterations[0].temps[0]: expected a number, got '300K'"),
    ("iterations.0.temps", [], "iterations[0].temps: list should have at least 1 item"),
    ("iterations.0.temps", [-5], "iterations[0].temps: temperatures must be positive kelvin"),
    ("iterations.0.ensemble", "nph", "iterations[0].ensemble: input should be 'nvt', 'npt' or 'nve'"),
    ("iterations.0.nsteps", 0, "iterations[0].nsteps: input should be greater than or equal to 1"),
    ("iterations", [], "iterations: list should have at least 1 item"),
    ("selection.trust_lo", 5.0, "selection: trust_lo (5.0) must be below trust_hi"),
    ("selection.trust_hgh", 0.5, "selection.trust_hgh: unknown key"),
    ("selection.trust_lo", "adaptve", "selection.trust_lo: expected a number (eV/Å) or 'adaptive', got 'adaptve'"),
    ("selection.trust_lo", -0.1, "selection.trust_lo: must be >= 0 eV/Å or 'adaptive', got -0.1"),
    ("selection.trust_lo", "adaptive", "convergence.accurate_ratio does not apply with selection.trust_lo: adaptive"),
    ("convergence.level_tolerance", 0.01, "convergence.level_tolerance applies only with selection.trust_lo: adaptive"),
    ("selection.max_candidates", "many", "selection.max_candidates: expected a number, got 'many'"),
    ("convergence.accurate_ratio", 1.5, "convergence.accurate_ratio: input should be less than or equal to 1"),
    ("type_map", ["Cu", "Cu"], "type_map: duplicate elements"),
    ("type_map", [], "type_map: list should have at least 1 item"),
    ("teacher.model", "t.pth", "teacher: give exactly one of 'model' (a file), 'train' or 'calculator'"),
    ("teacher.train.label", _DELETE, "teacher.train: give 'data' (labelled systems) and/or 'label'"),
    ("student.count", 0, "student.count: input should be greater than or equal to 1"),
    ("student.colour", "red", "student.colour: unknown key"),
    ("resources", {"explroe": {"threads": 2}}, "resources: unknown steps ['explroe']"),
    ("initial_data.perturbed_frames", 0, "initial_data: no initial data"),
    ("max_iterations", 0, "max_iterations: input should be greater than or equal to 1"),
    ("configurations", _DELETE, "configurations: required but missing"),
]


@pytest.mark.parametrize("field, value, message", CASES, ids=[c[0] + "=" + repr(c[1])[:12] for c in CASES])
def test_bad_field_one_line(field, value, message):
    raw = base()
    _set(raw, field, value)
    with pytest.raises(InputError) as err:
        DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("config.yaml: ") and message in text, text


def test_missing_files_are_named(tmp_path):
    raw = base()
    raw["configurations"]["files"] = ["nowhere.xyz"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "config", "--check", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("lamflow: error: configurations.files[0]: file not found")


@pytest.mark.parametrize(
    "content, message",
    [("iterations: [", "is not valid YAML"), ("- a\n- b\n", "expected a mapping at the top level")],
)
def test_unreadable_config(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unwritable_run_directory(tmp_path):
    """A run directory that cannot be created (here: below a file) fails before any work."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(QUICKSTART),
                           "--workdir", str(blocker / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "run directory is not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_schema_lists_fields():
    proc = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "config", "--schema"],
                          capture_output=True, text=True, check=True)
    assert '"trust_lo"' in proc.stdout and '"max_candidates"' in proc.stdout


def test_a_json_file_is_read_as_json_so_a_learning_rate_of_1e_05_stays_a_number(tmp_path):
    """YAML 1.1 reads JSON's 1e-05 as a string: a batch job's parameters (JSON) broke on it."""
    from lamflow.flows.core.config import read_mapping

    (tmp_path / "p.json").write_text('{"overrides": {"learning_rate": {"stop_lr": 1e-05}}}')
    assert read_mapping(tmp_path / "p.json")["overrides"]["learning_rate"]["stop_lr"] == 1e-05
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="is not valid JSON"):
        read_mapping(tmp_path / "bad.json")


def test_adaptive_rule_reads_the_level_moving_not_the_accurate_share():
    """With trust_lo: adaptive an iteration meets the rule when its level moved less than
    level_tolerance from the previous one's; the first iteration has nothing to compare with."""
    from lamflow.flows.pipelines.distill.loop import converged, meets_rule
    from lamflow.flows.pipelines.distill.records import IterationRecord

    raw = base()
    raw["selection"]["trust_lo"] = "adaptive"
    raw["convergence"] = {"level_tolerance": 0.02, "consecutive": 2}
    cfg = DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")
    history = []
    for k, (level, failed) in enumerate([(0.30, 0), (0.20, 0), (0.19, 0), (0.185, 1), (0.18, 0), (0.17, 0)]):
        history.append(IterationRecord(iteration=k, trust_lo=level, failed_tasks=failed, accurate_ratio=0.1))
        history[-1].meets_rule = meets_rule(history, cfg)
    assert [r.meets_rule for r in history] == [False, False, True, False, True, True]
    assert not converged(history[:3], cfg) and not converged(history[:5], cfg) and converged(history, cfg)
    # a fixed level: the share of accurate frames, as before
    fixed = DistillConfig.parse(base(), QUICKSTART.parent, "config.yaml")
    assert not meets_rule([IterationRecord(iteration=0, accurate_ratio=0.29)], fixed)
    assert meets_rule([IterationRecord(iteration=0, accurate_ratio=0.31, rmse_f=0.1)], fixed)  # max_rmse_f 0.15


def test_speed_section_times_a_supercell_and_leaves_the_default_timing_as_it_was(tmp_path):
    """`speed: {atoms: N}` times teacher and students on a supercell of at least N atoms; without
    the section the speed steps get exactly the parameters they had before it existed, so a run
    made then reads its timings back instead of timing again."""
    from lamflow.flows.pipelines.distill import plan
    from lamflow.steps.speed import SpeedParams

    raw = base()
    raw["teacher"] = {"calculator": "emt"}
    cfg = DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")
    cell = cfg.configurations.files[0]
    teacher = plan.teacher_speed(cfg, plan.teacher_ref(cfg, None), tmp_path / "t", "t").params
    student = plan.speed(cfg, tmp_path / "m.pth", tmp_path / "s", "s").params
    assert teacher == SpeedParams(calculator="emt", structure=cell, type_map=["Cu"], output=tmp_path / "t", nsteps=200)
    assert student == SpeedParams(model=tmp_path / "m.pth", structure=cell, type_map=["Cu"], output=tmp_path / "s",
                                  nsteps=200)
    raw["speed"] = {"atoms": 800, "nsteps": 400}
    big = DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")
    for call in (plan.teacher_speed(big, plan.teacher_ref(big, None), tmp_path / "t", "t"),
                 plan.speed(big, tmp_path / "m.pth", tmp_path / "s", "s")):
        assert (call.params.min_atoms, call.params.nsteps) == (800, 400)
    raw["speed"] = {"atoms": -1}
    with pytest.raises(InputError, match="speed.atoms"):
        DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")


def test_the_teacher_max_force_caps_every_label_of_the_loop_by_default_and_null_lifts_it(tmp_path):
    """A first student's MD can fuse atoms; the teacher labels such frames with forces of 10²-10⁴
    eV/Å (label_failed), and one of them outweighs thousands of sane frames in the force loss: a
    config that says nothing gets the 20 eV/Å cap on every label and on the teacher's own MD."""
    from lamflow.flows.pipelines.distill import plan
    from lamflow.flows.pipelines.distill.records import IterationRecord

    raw = base()
    raw["teacher"] = {"calculator": "emt"}
    raw["initial_data"] = {"teacher_md": {"temps": [300], "nsteps": 20, "trj_freq": 10}}
    for given, expected in ((None, 20.0), ({"max_force": None}, None), ({"max_force": 50}, 50.0)):
        raw["teacher"] = {"calculator": "emt", **(given or {})}
        cfg = DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")
        ref = plan.teacher_ref(cfg, None)
        calls = [*plan.teacher_labels(cfg, ref, cfg.configurations.files, tmp_path / "l", "l"),
                 *plan.teacher_md(cfg, plan.Layout(tmp_path / "run"), ref)]
        assert len(calls) == 2 and {c.params.max_force for c in calls} == {expected}, given
    assert IterationRecord(iteration=0, labels_added=3, labels_dropped=17).labels_text() == "3 (17 dropped)"
    assert IterationRecord(iteration=0, labels_added=3).labels_text() == "3"
    assert IterationRecord(iteration=0, labels_added=3, labels_dropped=17).labels_text(dropped="") == "3 (17)"


def test_n_sample_draws_the_starting_frames_of_each_iteration_anew(tmp_path, caplog):
    """A trajectory given as configurations makes every frame one MD task per temperature of
    every iteration (80 frames × 2 temperatures: 160 tasks); `n_sample` (dpgen2's) draws that many
    frames per iteration, seeded, a new draw each iteration; without it, every frame, as before."""
    import ase.io
    from ase.build import bulk

    from lamflow.flows.pipelines.distill import plan

    frames = [bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2) for _ in range(12)]
    for i, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=i)
    ase.io.write(tmp_path / "traj.extxyz", frames)
    raw = base()
    raw["configurations"] = {"files": [str(tmp_path / "traj.extxyz"), str(QUICKSTART.parent / "cu-fcc-32.extxyz")]}
    raw["iterations"] = [{"temps": [300, 600], "nsteps": 100, "trj_freq": 10, "n_sample": 4}]
    cfg = DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")
    lay = plan.Layout(tmp_path / "run")
    tasks = [plan.explore(cfg, lay, k, [tmp_path / "m.pth"]) for k in range(3)]
    starts = [{(c.params.structure.name, c.params.frame) for c in calls} for calls in tasks]
    assert [len(calls) for calls in tasks] == [8, 8, 8] and [len(s) for s in starts] == [4, 4, 4]
    assert len(set.union(*starts)) > 4  # each iteration draws its own
    assert starts[0] == {(c.params.structure.name, c.params.frame)  # the same draw when the run resumes
                         for c in plan.explore(cfg, lay, 0, [tmp_path / "m.pth"])}
    assert {c.params.temps[0] for c in tasks[0]} == {300, 600} and "n_sample" not in type(tasks[0][0].params).model_fields
    del raw["iterations"][0]["n_sample"]
    every = plan.explore(DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml"), lay, 0, [tmp_path / "m.pth"])
    assert len(every) == 2 * 13
    raw["iterations"][0]["n_sample"] = 0
    with pytest.raises(InputError, match=r"iterations\[0\]\.n_sample: input should be greater than or equal to 1"):
        DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml")

    # what so many starting frames cost is said before the run, once, on one line
    from lamflow.flows.pipelines.distill.preflight import preflight

    ase.io.write(tmp_path / "traj.extxyz", frames * 3)
    del raw["iterations"][0]["n_sample"]
    raw["initial_data"] = {"perturbed_frames": 5}
    with caplog.at_level("WARNING"):
        preflight(DistillConfig.parse(raw, QUICKSTART.parent, "config.yaml"))
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line == ("configurations.files hold 37 frames, each a starting cell: iterations[0] runs 74 MD tasks per "
                    "iteration (its n_sample draws fewer); initial_data.perturbed_frames makes 185 copies for the "
                    "teacher to label")
