"""Orchestration overhead of each engine on the quickstart: wall time vs time spent in steps.

    python bench/overhead.py [--engines prefect dflow slurm] [--max-iterations 2] [--config FILE]

Runs the same config afresh on each engine (Prefect's embedded engine; dflow's debug mode) as a
user does, ``lamflow distill CONFIG --engine E``, and times the command. ``slurm`` is the
Prefect engine with every compute step a Slurm job (``resources.default.executor``, the GPU
policy off): the Slurm named by ``SLURM_CONF``, else a single-node one the bench starts and
stops (the tests' ``tests/slurm_cluster.py``; Debian's slurm-wlm and munge). Every step records when
it finished and how long it ran (``<output>.result.json``); the union of those intervals is the
time at least one step was computing. Overhead = (command wall time - step time) / wall time:
start-up, imports, engine bookkeeping, planning, idle gaps. Prints one line per engine, last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, stop) intervals: the time at least one of them was running."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def busy_seconds(run_dir: Path) -> tuple[float, int]:
    """Length of the union of the step intervals recorded under ``run_dir``, and the step count."""
    intervals = []
    for rec in run_dir.rglob("*.result.json"):
        data = json.loads(rec.read_text())
        if "finished" in data and "seconds" in data:
            intervals.append((data["finished"] - data["seconds"], data["finished"]))
    return union_seconds(intervals), len(intervals)


def on_slurm(config: Path, out: Path, check_interval: float) -> Path:
    """``config`` with every compute step sent to Slurm as a job, without GPUs."""
    import yaml

    from lamflow.flows.core.config import resolve_paths

    raw = resolve_paths(yaml.safe_load(config.read_text()), config.resolve().parent)
    default = raw.setdefault("resources", {}).setdefault("default", {})
    default.update({"gpu": 0, "executor": {"batch_type": "Slurm", "check_interval": check_interval}})
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples/cu-emt/config.yaml"))
    parser.add_argument("--engines", nargs="+", default=["prefect", "dflow"], choices=["prefect", "dflow", "local", "slurm"])
    parser.add_argument("--check-interval", type=float, default=2.0, help="slurm: seconds between polls")
    parser.add_argument("--max-iterations", type=int, default=2)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="lamflow-overhead-"))
    rows = []
    cluster = None
    for engine in args.engines:
        run_dir = base / engine
        config, how = args.config, engine
        if engine == "slurm":
            if not os.environ.get("SLURM_CONF"):
                sys.path.insert(0, str(REPO / "tests"))
                from slurm_cluster import SlurmCluster

                cluster = SlurmCluster(base / "slurm").start()
                os.environ.update(cluster.env)
            config, how = str(on_slurm(Path(args.config), base / "slurm.yaml", args.check_interval)), "prefect"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", config, "--workdir", str(run_dir),
                               "--engine", how, "--max-iterations", str(args.max_iterations)], check=False,
                              stdout=subprocess.DEVNULL)
        if done.returncode not in (0, 3):  # 3: stopped at max_iterations without converging
            raise SystemExit(f"lamflow distill failed with exit code {done.returncode}")
        wall = time.perf_counter() - t0
        busy, steps = busy_seconds(run_dir)
        rows.append((engine, wall, busy, steps))
    if cluster is not None:
        cluster.stop()
    print(f"{Path(args.config).name}, {args.max_iterations} iterations, runs in {base}")
    for engine, wall, busy, steps in rows:
        goal = {"prefect": 5, "local": 5, "dflow": 10}.get(engine)
        print(f"{engine if engine != 'slurm' else 'prefect + Slurm jobs'} engine overhead: "
              f"{(wall - busy) / wall * 100:.1f} % of {wall:.0f} s wall ({steps} steps, {busy:.0f} s computing)"
              f"{f'  (goal <= {goal} %)' if goal else ''}")


if __name__ == "__main__":
    main()
