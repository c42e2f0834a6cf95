"""Every example in examples/ runs end to end, so a broken example cannot land.

Each config is run as a user runs it (the CLI, its own teacher: a DeePMD-kit checkpoint, a model
trained here, a universal potential), scaled down to CPU seconds: step counts, MD lengths,
frame counts and iterations are capped; everything else (templates, trust levels, schedules,
calculators, files) is the example's own. The full-size runs are what the README and the
benches measure.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import DPA4_TEACHER, REPO, shrink

from lamflow.flows.core.config import resolve_paths

EXAMPLES = {  # name: (command, rough seconds)
    "cu-emt": ("distill", 90),
    "lam-cuau": ("lam", 150),
    "si-sevenn": ("distill", 150),
    "lam-sevenn": ("lam", 200),
    "water-dpa4": ("distill", 420),  # freezing the DPA-4 checkpoint for LAMMPS alone takes ~3 min
    "lam-versions": ("version", 90),
}


def test_every_example_is_covered():
    assert {p.parent.name for p in (REPO / "examples").glob("*/config.yaml")} == set(EXAMPLES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow(seconds=s)) for n, (_, s) in
                                  EXAMPLES.items()])
def test_example_runs_end_to_end(tmp_path, name):
    command = EXAMPLES[name][0]
    config = REPO / "examples" / name / "config.yaml"
    if name == "water-dpa4" and not DPA4_TEACHER.exists():
        pytest.skip("../shared is not present")
    raw = resolve_paths(yaml.safe_load(config.read_text()), config.parent)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(shrink(raw)))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", command, str(tmp_path / "config.yaml"),
                          "--engine", "local", "--workdir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode in (0, 3), out.stdout[-3000:] + out.stderr[-3000:]  # 3: rule not met in 1 iteration
    if command == "version":
        history = json.loads((tmp_path / "run" / "versions.json").read_text())
        assert history["current"] == len(raw["versions"]) + 1 and not history["rejected"]
        assert all(v["status"] == "trained" and v["scores"] for v in history["versions"])
        return
    run = tmp_path / "run" / ("distill" if command == "lam" else "")
    report = json.loads((run / "report.json").read_text())
    assert report["status"] in ("converged", "max_iterations") and len(report["iterations"]) == 1
    it = report["iterations"][0]
    assert it["n_frames"] > 0 and it["n_train_frames"] > 0 and it["rmse_f"] is not None
    assert report["teacher_speed"] > 0 and it["speed_ratio"] > 0
    asked = shrink(raw).get("speed", {}).get("atoms", 0)  # section speed: a supercell of at least this many
    assert report["speed_atoms"] >= max(asked, 1) and (asked == 0 or report["speed_atoms"] < 8 * asked), report


@pytest.mark.slow(seconds=40)
def test_every_bench_system_config_passes_its_check():
    """bench/real_teacher.py's systems that are not examples (bench/systems/) are checked as a
    run checks them (files, cells, the teacher, the DeePMD-kit inputs): a broken one cannot land."""
    sys.path.insert(0, str(REPO / "bench"))
    from real_teacher import SYSTEMS

    for name, system in SYSTEMS.items():
        for cell in system.cells():
            assert (system.config.parent / cell).is_file(), (name, cell)
        if "examples" in system.config.parts:
            continue  # run end to end above
        out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "config", "--check", str(system.config)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (name, out.stdout[-2000:] + out.stderr[-2000:])
