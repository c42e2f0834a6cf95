"""What a distillation costs and what it gives: teacher labels, iterations, and the final
student's error against its teacher and against the reference method, on held-out MD frames.

    python bench/convergence.py                          # runs the quickstart afresh (~8 min)
    python bench/convergence.py --run-dir runs/quickstart --config examples/cu-emt/config.yaml

The held-out frames are every iteration's *validation* frames: explored by MD, selected at
random, never trained on. They are labelled here with the reference method that made the
teacher's training data (the config's ``teacher.train.label.calculator``: EMT in the
quickstart, GFN2-xTB or a DFT stand-in elsewhere), and the final student and the teacher are
both measured against those labels. Prints one figure per line, last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples/cu-emt/config.yaml"))
    parser.add_argument("--run-dir", help="read this finished run instead of running afresh")
    args = parser.parse_args()

    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)  # deepmd-kit's hints would bury the figures

    from lamflow.flows.pipelines.distill.config import DistillConfig
    from lamflow.flows.core.execute import execute
    from lamflow.steps.evaluate import EvaluateParams
    from lamflow.steps.label import LabelParams
    from lamflow.steps.structures import deepmd_systems

    cfg = DistillConfig.load(Path(args.config))
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="lamflow-convergence-")) / "run"
    wall = None
    if not args.run_dir:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", args.config, "--workdir", str(run_dir)],
                              check=False, stdout=subprocess.DEVNULL)
        if done.returncode not in (0, 3):  # 3: stopped at max_iterations without converging
            raise SystemExit(f"lamflow distill failed with exit code {done.returncode}")
        wall = time.perf_counter() - t0
    report = json.loads((run_dir / "report.json").read_text())
    its = report["iterations"]
    last = its[-1]
    initial = its[0]["n_train_frames"] - its[0]["labels_added"]
    validation = sum(it["n_eval_frames"] for it in its)

    print(f"run: {run_dir} ({report['status']} after {len(its)} iterations)")
    if wall is not None:
        print(f"end to end: {wall:.0f} s  (quickstart goal <= 600 s)")
    if last.get("speed_ratio"):
        print(f"student/teacher LAMMPS speed: {last['speed_ratio']:.1f}x on the config's cell")
    print(f"teacher labels: {last['n_train_frames']} for training ({initial} initial + "
          f"{last['n_train_frames'] - initial} selected by model deviation), {validation} for validation")
    print(f"iterations to the convergence rule: {len(its) if report['converged'] else 'not reached'} "
          f"(max {cfg.max_iterations}; rule: accurate >= {cfg.convergence.accurate_ratio}, "
          f"RMSE <= {cfg.convergence.max_rmse_f} eV/Å, {cfg.convergence.consecutive} in a row)")
    print(f"final student force RMSE vs teacher: {last['rmse_f']:.4f} eV/Å on {last['n_eval_frames']} "
          f"unseen explored frames (last iteration)")

    label = cfg.teacher.train.label if cfg.teacher.train else None
    held_out = [s for d in sorted(run_dir.glob("iter-*/select/validation")) for s in deepmd_systems(d)]
    if label is None or not held_out:
        print("no reference method in the config (teacher given as a file) or no validation frames: "
              "reference errors skipped")
        return
    ref = execute("label", LabelParams(structures=held_out, type_map=cfg.type_map, calculator=label.calculator,
                                       calculator_kwargs=label.calculator_kwargs,
                                       output=run_dir / "bench" / f"validation-{label.calculator}"))
    systems = [Path(p) for p in ref.result.systems]
    errors = {}
    for who, model in (("student", report["final_student"]), ("teacher", report["teacher"])):
        ev = execute("evaluate", EvaluateParams(model=model, systems=systems, type_map=cfg.type_map,
                                                output=run_dir / "bench" / f"{who}-vs-{label.calculator}.json"))
        errors[who] = ev.result
    n = errors["student"]["n_frames"]
    print(f"teacher force RMSE vs {label.calculator}: {errors['teacher']['rmse_f']:.4f} eV/Å on {n} held-out MD frames")
    print(f"final student force RMSE vs {label.calculator}: {errors['student']['rmse_f']:.4f} eV/Å on {n} held-out "
          f"MD frames ({errors['student']['rmse_f'] / errors['teacher']['rmse_f']:.2f}x the teacher's)")


if __name__ == "__main__":
    main()
