"""bench/vs_dpgen2.py's bad options: one line naming the option, exit 2, before any work (the
teacher's training and dpgen2's own environment cost minutes). Its run is tests/e2e/test_vs_dpgen2.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize("args, says", [
    (["--teacher", "CKPT"], "--teacher: needs --structures and --type-map"),
    (["--teacher", "/no/such.pt", "--structures", "CKPT", "--type-map", "Cu"], "--teacher: /no/such.pt: no such file"),
    (["--teacher", "CKPT", "--structures", "/no/cell.xyz", "--type-map", "Cu"], "--structures: /no/cell.xyz: no such"),
    (["--structures", "CKPT"], "--structures, --type-map: only with --teacher"),
    (["--teacher", "CKPT", "--structures", "CKPT", "--type-map", "Cu"], "teacher.pt: is not a DeePMD-kit model"),
    (["--max-iterations", "0"], "--max-iterations: expected a whole number >= 1, got 0"),
    (["--nsteps", "-5"], "--nsteps: expected a whole number >= 1, got -5"),
    (["--trust-lo", "0"], "--trust-lo: expected eV/Å > 0, got 0.0"),
    (["--accurate-ratio", "1.5"], "--accurate-ratio: expected a fraction in (0, 1], got 1.5"),
])
def test_bad_option_is_one_line_and_exit_2_before_any_work(tmp_path, args, says):
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"")
    args = [a.replace("CKPT", str(checkpoint)) for a in args]
    out = subprocess.run([sys.executable, str(REPO / "bench/vs_dpgen2.py"), *args, "--workdir", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
    assert out.stderr.startswith("vs_dpgen2: ") and says in out.stderr and not (tmp_path / "work").exists()
