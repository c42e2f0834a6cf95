"""docs/input.md is generated from the models: the page and the code cannot drift apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lamflow.flows.report.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "input.md"


def test_the_input_reference_is_what_the_models_say():
    assert PAGE.read_text() == render(), "docs/input.md is stale: run `lamflow config --reference > docs/input.md`"


def test_every_key_of_every_config_and_step_is_documented():
    page = render()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    undocumented = [line.split("|")[1].strip() for line in rows if line.rstrip().endswith("|  |")]
    assert not undocumented, undocumented
    for key in ("`teacher.calculator_kwargs`", "`iterations[].temps`", "`resources.<name>.gpu`",
                "`datasets[].import.files`", "`selection.trust_hi`", "`convergence.max_rmse_f`"):
        assert key in page, key
    assert "### `lamflow distill`" in page and "### `lamflow lam`" in page and "### `train` (TrainParams)" in page
    assert len(rows) > 150


def test_the_cli_prints_it():
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "config", "--reference"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == render()
