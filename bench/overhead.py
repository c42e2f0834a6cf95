"""Orchestration overhead of each engine on the quickstart: wall time vs time spent in steps.

    python bench/overhead.py [--engines prefect dflow] [--max-iterations 2] [--config FILE]

Runs the same config afresh on each engine (Prefect's embedded engine; dflow's debug mode) as a
user does, ``lamflow distill CONFIG --engine E``, and times the command. Every step records when
it finished and how long it ran (``<output>.result.json``); the union of those intervals is the
time at least one step was computing. Overhead = (command wall time - step time) / wall time:
start-up, imports, engine bookkeeping, planning, idle gaps. Prints one line per engine, last.
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


def busy_seconds(run_dir: Path) -> tuple[float, int]:
    """Length of the union of the step intervals recorded under ``run_dir``, and the step count."""
    intervals = []
    for rec in run_dir.rglob("*.result.json"):
        data = json.loads(rec.read_text())
        if "finished" in data and "seconds" in data:
            intervals.append((data["finished"] - data["seconds"], data["finished"]))
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total, len(intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples/cu-emt/config.yaml"))
    parser.add_argument("--engines", nargs="+", default=["prefect", "dflow"], choices=["prefect", "dflow", "local"])
    parser.add_argument("--max-iterations", type=int, default=2)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="lamflow-overhead-"))
    rows = []
    for engine in args.engines:
        run_dir = base / engine
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", args.config, "--workdir", str(run_dir),
                               "--engine", engine, "--max-iterations", str(args.max_iterations)], check=False,
                              stdout=subprocess.DEVNULL)
        if done.returncode not in (0, 3):  # 3: stopped at max_iterations without converging
            raise SystemExit(f"lamflow distill failed with exit code {done.returncode}")
        wall = time.perf_counter() - t0
        busy, steps = busy_seconds(run_dir)
        rows.append((engine, wall, busy, steps))
    print(f"{Path(args.config).name}, {args.max_iterations} iterations, runs in {base}")
    for engine, wall, busy, steps in rows:
        print(f"{engine} engine overhead: {(wall - busy) / wall * 100:.1f} % of {wall:.0f} s wall "
              f"({steps} steps, {busy:.0f} s computing)  (goal <= 5 %)")


if __name__ == "__main__":
    main()
