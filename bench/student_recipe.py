"""Which training recipe brings a student closest to its teacher? One run, figures printed last.

    python bench/student_recipe.py --train DIR... --test NAME=DIR... [--config CONFIG] [--steps N]
        [--recipes a,b,...] [--parallel P] [--threads T] [--deadline S] [--workdir DIR]
        [--speed CELL [--speed-repeats R]] [--reuse]

The loop's delivered student is bounded by three things: the frames it is trained on, its size,
and how it is trained (batch, loss weights, steps). This bench holds the frames fixed (``--train``:
the deepmd/npy systems a distillation labelled, e.g. its ``final/train/input.json`` systems) and
trains one student per recipe from scratch with ``dp --pt train``, each recipe a DeePMD-kit
override on top of the config's own student (template + overrides), all for the same number of
steps. Each is scored with lamflow's ``evaluate`` on the ``--test`` sets (labelled by the teacher,
never trained on: bench/real_teacher.py's held-out MD, a loop's validation frames).

Trainings run ``--parallel`` at a time; on a GPU several small students share the card (each is
launch-bound). A training still running at ``--deadline`` seconds is stopped and its last
checkpoint scored, marked as cut (its learning rate had not decayed: an underestimate).

Accuracy is half of a student's recipe; the other half is what its MD step costs. ``--speed CELL``
compresses each student (``dp --pt compress``, as the loop delivers it) and times it in LAMMPS
on CELL with lamflow's ``speed`` step, ``--speed-repeats`` times interleaved across the recipes
(this machine's noise is ~15 %: the spread is printed). ``--reuse`` keeps a recipe whose folder
already holds a checkpoint of ``--steps`` steps: students trained on a GPU are scored and timed
on the CPU they are meant for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from gpu import seconds_per_step
from usage import bad_input
from lamflow.steps.dp_input import load_template

REPO = Path(__file__).resolve().parents[1]

# Recipe parts: DeePMD-kit keys deep-merged on top of the config's student (None deletes a key).
# A recipe is parts joined by "+" ("atoms512+rcut6"); "config" is the config's own student (for a
# 64-atom cell its batch "auto" is one frame).
PARTS: dict[str, dict] = {
    "atoms32": {"training": {"training_data": {"batch_size": "auto"}}},  # DeePMD-kit's "auto" = "auto:32"
    # batches of at least N atoms (DeePMD-kit's "auto:N"): 8 and 32 frames of a 64-atom cell
    "atoms512": {"training": {"training_data": {"batch_size": "auto:512"}}},
    "atoms2048": {"training": {"training_data": {"batch_size": "auto:2048"}}},
    "energy": {"loss": {"start_pref_e": 1.0, "limit_pref_e": 10.0}},  # energies weighted from the start
    "rcut6": {"model": {"descriptor": {"rcut": 6.0}}},
    "smth0.5": {"model": {"descriptor": {"rcut_smth": 0.5}}},  # the switch spread from 0.5 Å to rcut
    "wide": {"model": {"descriptor": {"neuron": [25, 50, 100], "axis_neuron": 16},
                       "fitting_net": {"neuron": [240, 240, 240]}}},  # DeePMD-kit's usual size
    "fit128": {"model": {"fitting_net": {"neuron": [128, 128, 128]}}},
    # smaller and cheaper: what a compressed student's MD step costs is mostly its two-body
    # embedding's width (tabulated, evaluated per neighbour) and its fitting net (per atom)
    "small2b": {"model": {"descriptor": {"neuron": [8, 16, 32]}}},
    "rcut4.5": {"model": {"descriptor": {"rcut": 4.5}}},
    "fit48": {"model": {"fitting_net": {"neuron": [48, 48, 48]}}},
    "fit32": {"model": {"fitting_net": {"neuron": [32, 32, 32]}}},
}
# Parts that wrap the rendered descriptor rather than merge keys into it: "e3" adds a three-body
# embedding (se_e3, DeePMD-kit's angular descriptor, compressible) beside the config's two-body
# one, with a shorter cut-off (angles matter in the first shells; their cost grows with the square
# of the neighbours).
E3 = next(m for m in load_template("se_e2_a+se_e3")["model"]["descriptor"]["list"] if m["type"] == "se_e3")
WRAPS: dict[str, dict] = {
    "e3": E3,
    "e3short": {**E3, "rcut": 3.5},  # silicon's first shell only (2.35 Å; the second is at 3.84)
}
DEFAULT = "config,atoms512,atoms512+energy,atoms512+rcut6+smth0.5,atoms512+wide,atoms2048"


def recipe(name: str) -> dict:
    from lamflow.steps.dp_input import deep_merge

    merged: dict = {}
    for part in name.split("+"):
        if part in PARTS:
            merged = deep_merge(merged, PARTS[part])
    return merged


def wrap(config: dict, name: str) -> dict:
    """The rendered input with the recipe's WRAPS parts joined to its descriptor in a hybrid (one
    hybrid: a config's own hybrid is extended, its member of the same type replaced)."""
    extra = [WRAPS[part] for part in name.split("+") if part in WRAPS]
    if extra:
        descriptor = config["model"]["descriptor"]
        members = descriptor["list"] if descriptor.get("type") == "hybrid" else [descriptor]
        kinds = {e["type"] for e in extra}
        config["model"]["descriptor"] = {"type": "hybrid",
                                         "list": [*(m for m in members if m.get("type") not in kinds), *extra]}
    return config


def apply(config: dict, name: str) -> dict:
    """The rendered input with the whole recipe: PARTS merged (their descriptor keys into the
    first member where the config's descriptor is a hybrid, e.g. the se_e2_a of se_e2_a+se_e3),
    then WRAPS."""
    from lamflow.steps.dp_input import deep_merge

    merged = recipe(name)
    keys = merged.get("model", {}).pop("descriptor", {})
    config = deep_merge(config, merged)
    descriptor = config["model"]["descriptor"]
    if descriptor.get("type") == "hybrid":
        descriptor["list"][0] = deep_merge(descriptor["list"][0], keys)
    else:
        config["model"]["descriptor"] = deep_merge(descriptor, keys)
    return wrap(config, name)


def last_step(lcurve: Path) -> int:
    rows = [line.split() for line in lcurve.read_text().splitlines() if line.strip() and not line.startswith("#")] \
        if lcurve.exists() else []
    return int(rows[-1][0]) if rows else 0


def step_seconds(log: Path) -> float | None:
    """DeePMD-kit's own wall time per step (bench/gpu.py's reading of its log), or None where a
    training logged too little to time (it failed, or was stopped early)."""
    try:
        return seconds_per_step(log)
    except (OSError, IndexError, ZeroDivisionError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "examples/si-sevenn/config.yaml",
                        help="a distill config: its student's template and overrides are each recipe's base")
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="deepmd/npy systems to train on")
    parser.add_argument("--test", nargs="+", required=True, help="NAME=DIR: labelled deepmd/npy systems to score on")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--recipes", default=DEFAULT,
                        help=f"comma-separated; each 'config' or parts joined by '+', of: {', '.join([*PARTS, *WRAPS])}")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once")
    parser.add_argument("--threads", type=int, default=2, help="threads of each training")
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which trainings are stopped")
    parser.add_argument("--no-score", action="store_true", help="train only (a timing probe)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs/bench-student-recipe")
    parser.add_argument("--speed", type=Path, default=None,
                        help="a periodic cell: time each compressed student's LAMMPS MD on it (µs/atom-step)")
    parser.add_argument("--speed-repeats", type=int, default=2, help="timings per student, interleaved")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a recipe whose folder holds a checkpoint of --steps steps (no retraining)")
    args = parser.parse_args()
    names = args.recipes.split(",")

    unknown = sorted({p for n in names for p in n.split("+") if p not in PARTS and p not in WRAPS and p != "config"})
    if unknown:
        bad_input(f"--recipes: unknown parts {unknown}; expected 'config' or some of {[*PARTS, *WRAPS]} joined by '+'")
    bad = [t for t in args.test if "=" not in t]
    if bad:
        bad_input(f"--test: expected NAME=DIR (a labelled deepmd/npy system), got {bad[0]!r}")
    tests = dict(t.split("=", 1) for t in args.test)
    missing = [p for p in [*map(str, args.train), *tests.values()] if not (Path(p) / "type.raw").is_file()]
    if missing:
        bad_input(f"{missing[0]}: not a deepmd/npy system (no type.raw); --train and --test take their folders")
    if args.speed is not None and not args.speed.is_file():
        bad_input(f"--speed: {args.speed}: no such file; expected a periodic cell (extxyz, POSCAR, ...)")

    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)
    from lamflow.flows.pipelines import load_any
    from lamflow.steps.evaluate import EvaluateParams
    from lamflow.steps.evaluate import run as evaluate
    from lamflow.steps.runtime import die_with_parent, dp_command, library_env, step_threads
    from lamflow.steps.train import TrainParams, render

    from lamflow.steps.errors import InputError

    try:
        _, cfg = load_any(args.config, expect="distill")
    except InputError as exc:
        bad_input(f"--config: {exc}")
    with step_threads(args.threads):
        env = library_env()
    t0 = time.time()
    done = {}
    if args.reuse:  # a student already trained the asked steps (elsewhere, e.g. on a GPU) is kept
        for name in names:
            work = (args.workdir / name).resolve()
            if (work / "model.ckpt.pt").exists() and last_step(work / "lcurve.out") >= args.steps:
                done[name] = (0, float("nan"), False)
                print(f"reuse {name}: {work / 'model.ckpt.pt'}", flush=True)
    pending, running = [n for n in names if n not in done], {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            work = (args.workdir / name).resolve()
            work.mkdir(parents=True, exist_ok=True)
            config = apply(render(TrainParams(output=work, type_map=cfg.type_map, template=cfg.student.template,
                                              overrides=cfg.student.overrides, train=args.train,
                                              numb_steps=args.steps, compress=False)), name)
            (work / "input.json").write_text(json.dumps(config, indent=1))
            log = (work / "train.log").open("w")
            running[name] = (subprocess.Popen([*dp_command(), "--pt", "train", "input.json"], cwd=work, env=env,
                                              stdout=log, stderr=subprocess.STDOUT,
                                              preexec_fn=die_with_parent), time.time())  # no orphan on a GPU
            print(f"{time.time() - t0:6.0f}s start {name}", flush=True)
        time.sleep(2)
        for name, (proc, start) in list(running.items()):
            cut = args.deadline is not None and time.time() - t0 > args.deadline
            if proc.poll() is None and not cut:
                continue
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            done[name] = (proc.returncode, time.time() - start, cut and proc.returncode != 0)
            del running[name]
            print(f"{time.time() - t0:6.0f}s end {name} rc={proc.returncode}", flush=True)

    rows = []
    for name in names:
        work = (args.workdir / name).resolve()
        rc, seconds, cut = done[name]
        steps = last_step(work / "lcurve.out")
        ckpt = work / "model.ckpt.pt"
        scores = {}
        if ckpt.exists() and not args.no_score:
            with step_threads(args.threads):
                for test, path in tests.items():
                    r = evaluate(EvaluateParams(model=ckpt, systems=[Path(path)], type_map=cfg.type_map))
                    scores[test] = (r.rmse_f, r.rmse_e_per_atom * 1000)
        rows.append((name, steps, seconds, step_seconds(work / "train.log"), cut, rc, scores))
        (args.workdir / "results.json").write_text(json.dumps(rows, indent=1))
    speeds = time_students(args, names, cfg.type_map) if args.speed is not None else {}

    import torch

    where = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    print(f"\nstudent recipes: base {args.config} (template {cfg.student.template}); {args.steps} steps each, "
          f"{args.parallel} at once, {args.threads} threads; {where}")
    print(f"trained on {len(args.train)} systems; scored on " + ", ".join(tests))
    head = "".join(f"  {t + ' F eV/Å':>14} {t + ' E meV/at':>14}" for t in tests)
    if speeds:
        print(f"speed: compressed, LAMMPS, {args.speed.name}, {args.threads} threads, "
              f"{args.speed_repeats} timings each (min-max µs/atom-step)")
    speed_head = f" {'µs/atom-step':>14}" if speeds else ""
    print(f"{'recipe':<24} {'steps':>6} {'s/step':>7} {'wall s':>7}{head}{speed_head}")
    for name, steps, seconds, per_step, cut, rc, scores in rows:
        cells = "".join(f"  {scores[t][0]:>14.4f} {scores[t][1]:>14.2f}" if t in scores else f"  {'-':>14} {'-':>14}"
                        for t in tests)
        if speeds:
            cells += f" {'%.0f-%.0f' % (min(speeds[name]), max(speeds[name])) if speeds.get(name) else '-':>14}"
        note = " (cut)" if cut else ("" if rc == 0 else f" (rc {rc})")
        print(f"{name:<24} {steps:>6} {per_step or float('nan'):>7.4f} {seconds:>7.0f}{cells}{note}")


def time_students(args: argparse.Namespace, names: list[str], type_map: list[str]) -> dict[str, list[float]]:
    """Each trained student frozen, compressed and timed in LAMMPS, the timings interleaved across
    the students so that a slow minute of a shared machine does not fall on one recipe only."""
    from lamflow.steps.runtime import step_threads
    from lamflow.steps.speed import SpeedParams
    from lamflow.steps.speed import run as speed
    from lamflow.steps.train import CompressParams, FreezeParams, compress, freeze

    models = {}
    with step_threads(args.threads):
        for name in names:
            work = (args.workdir / name).resolve()
            if (work / "model.ckpt.pt").exists():
                frozen = freeze(FreezeParams(checkpoint=work / "model.ckpt.pt", output=work / "frozen")).model
                models[name] = compress(CompressParams(model=frozen, output=work / "compressed")).model
        timings: dict[str, list[float]] = {name: [] for name in models}
        for repeat in range(args.speed_repeats):
            for name, model in models.items():
                r = speed(SpeedParams(model=model, structure=args.speed, type_map=type_map, nsteps=2000,
                                      output=args.workdir.resolve() / name / f"speed-{repeat}"))
                timings[name].append(r.us_per_atom_step)
                print(f"speed {name}: {r.us_per_atom_step:.1f} µs/atom-step", flush=True)
    (args.workdir / "speeds.json").write_text(json.dumps(timings, indent=1))
    return timings


if __name__ == "__main__":
    main()
