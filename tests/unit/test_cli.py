"""The CLI: `lamflow step NAME` runs a step; bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def lamflow(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lamflow.flows.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_step_label_runs_and_prints_result(tmp_path, cu_frames):
    proc = lamflow("step", "label", "--set", f"structures=[{cu_frames}]", "--set", "type_map=[Cu]",
                   "--set", f"output={tmp_path / 'out'}", "--set", "chunk=1", "--set", "n_chunks=12",
                   "--result", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["n_frames"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["step", "label", "--set", "structures=[nope.xyz]", "--set", "type_map=[Cu]", "--set", "output=o"],
         "lamflow: error: nope.xyz: file not found"),
        (["step", "label", "--set", "structures=[x]", "--set", "type_map=[Cu]", "--set", "output=o",
          "--set", "calculator=gaussian16"], "unknown calculator 'gaussian16'"),
        (["step", "explore", "--set", "models=[m.pth]", "--set", "type_map=[Cu]", "--set", "output=o",
          "--set", "structure=s.xyz", "--set", "temps=[300K]"],
         "temps[0]: expected a number, got '300K'"),
        (["step", "select", "--set", "tasks=[]", "--set", "type_map=[Cu]", "--set", "output=o",
          "--set", "trust_lo=0.3", "--set", "trust_hi=0.1"], "trust_lo (0.3) must be below trust_hi (0.1)"),
        (["step", "train", "--params", "missing.yaml"], "missing.yaml: file not found"),
        (["step", "label", "--set", "colour=blue"], "colour: unknown key"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, args, message):
    proc = lamflow(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_templates_listed():
    proc = lamflow("templates")
    assert {"dpa3", "dpa2", "se_e2_a", "se_atten_v2"} <= set(proc.stdout.split())
