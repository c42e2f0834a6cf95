"""Quickstart figures from one run: wall time, engine overhead, student speed and error.

    python bench/quickstart.py                 # runs the quickstart afresh in a temp folder
    python bench/quickstart.py --run-dir DIR   # reads an existing run's report.json

Prints one line per figure, the goal beside it, ratios from the same run (machines are noisy).
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
    parser.add_argument("--run-dir", help="read this run instead of running afresh")
    parser.add_argument("--engine", default="prefect", choices=["prefect", "local"])
    args = parser.parse_args()

    wall = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="lamflow-bench-")) / "run"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", args.config, "--workdir",
                        str(run_dir), "--engine", args.engine], check=True)
        wall = time.perf_counter() - t0
    report = json.loads((run_dir / "report.json").read_text())
    last = report["iterations"][-1]
    engine_wall = report["wall_seconds"]
    overhead = (engine_wall - report["step_seconds"]) / engine_wall * 100
    print(f"run: {run_dir} ({report['status']}, {len(report['iterations'])} iterations, "
          f"{report['cached_steps']} cached steps)")
    if wall is not None:
        print(f"quickstart end to end: {wall:.0f} s  (goal <= 600 s)")
    print(f"orchestration overhead ({args.engine}): {overhead:.2f} % of {engine_wall:.0f} s  (goal <= 5 %)")
    print(f"student/teacher LAMMPS speed: {last['speed_ratio']:.1f}x  (goal >= 50x at <= 0.05 eV/A)")
    print(f"student force RMSE vs teacher, unseen explored frames: {last['rmse_f']:.4f} eV/A "
          f"on {last['n_eval_frames']} frames")


if __name__ == "__main__":
    main()
