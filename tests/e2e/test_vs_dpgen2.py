"""bench/vs_dpgen2.py on tiny settings: dpgen2 and lamflow each run one iteration of the same
distillation, so the comparison cannot silently rot (a dpgen2 release, a lamflow config key or a
run-directory layout that changes under it fails here, not months later in the README's table).

dpgen2 is installed by the bench into its own virtual environment (over the test venv's
packages), from the package registry as CI reaches it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow(seconds=300)
def test_one_iteration_of_the_same_distillation_by_dpgen2_and_by_lamflow(tmp_path):
    out = tmp_path / "vs.json"
    # trust_lo tiny: every explored frame below trust_hi is a candidate, so both loops label
    done = subprocess.run(
        [sys.executable, str(REPO / "bench/vs_dpgen2.py"), "--workdir", str(tmp_path / "work"), "--teacher-steps",
         "20", "--student-steps", "20", "--max-iterations", "1", "--nsteps", "60", "--max-candidates", "4",
         "--heldout-frames", "3", "--trust-lo", "0.002", "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    dpgen2, lamflow = figures["runs"]
    assert (dpgen2["tool"], lamflow["tool"]) == ("dpgen2", "lamflow")
    for run in (dpgen2, lamflow):
        assert run["iterations"] == 1 and not run["converged"], run
        assert run["labels"] == 4, run  # the cap on labels per iteration, reached by both
        assert 0 < run["busy"] < run["wall"], run
        assert math.isfinite(run["rmse_f"]) and run["rmse_f"] > 0, run
        assert Path(run["student"]).is_file()
    # the throughput table labels the very frames dpgen2's teacher labelled, with lamflow's step
    d, lf = figures["labelling"]
    assert d["frames"] == lf["frames"] == 4 and d["seconds"] > 0 and lf["seconds"] > 0
    assert "Side by side with dpgen2" in done.stdout and "lamflow/dpgen2 throughput" in done.stdout
    # dpgen2 stayed out of lamflow's environment (its cp2kdata plugin would rewrite dpdata's logging)
    from importlib import metadata

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("dpgen2")
