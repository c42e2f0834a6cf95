"""docs/own-data.md as a user follows it: its code blocks, run in order, on files the test writes.

The page's blocks are its test script:

- a ``bash`` block runs in a shell, a ``python`` block in this interpreter, both in one folder
  with the virtual environment's ``bin`` first on the PATH;
- a block after ``<!-- test: file NAME -->`` is written to NAME (the config scaled down to CPU
  seconds by conftest's ``shrink``, nothing else changed);
- a block after ``<!-- test: skip (why) -->`` is not run (the download: the machine has no
  network), nor are ``text`` blocks without a file marker (listings).

What stands in for the user's world: the OUTCARs are written by ``tests/dft_files.py`` from EMT
MD of a 32-atom Cu3Au cell; ``DPA-3.2-5M.pt`` is the session's small multi-task Cu/Au DPA-3
(branches cu_bulk and cuau), so the page's branch ``OMat24`` is read as ``cuau``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, shrink
from dft_files import write_outcar

PAGE = REPO / "docs" / "own-data.md"
BLOCK = re.compile(r"(?:<!-- test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)
BRANCH = ("OMat24", "cuau")


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(marker, language, body) of every fenced block, in page order."""
    return [(m["marker"] or "", m["lang"], m["body"]) for m in BLOCK.finditer(page.read_text())]


def aimd_outcar(folder: Path, temperature: float, n_frames: int, seed: int) -> list:
    """An 'AIMD' of L1_2 Cu3Au with EMT as the DFT: frames every 5 steps of Langevin MD."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2)
    atoms.symbols[[i for i, p in enumerate(atoms.positions) if np.allclose(p % 3.75, 0, atol=1e-6)]] = "Au"
    atoms = atoms[np.argsort([s == "Au" for s in atoms.get_chemical_symbols()], kind="stable")]  # VASP groups
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    md = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.05, rng=np.random.default_rng(seed))
    frames = []
    for _ in range(n_frames):
        md.run(5)
        frame = atoms.copy()
        frame.calc = EMT()
        frames.append(frame)
    write_outcar(frames, folder / "OUTCAR")
    return frames


@pytest.mark.slow(seconds=200)
def test_the_walkthrough_runs_as_written(tmp_path, prefect_lam_run):
    import ase.io

    runs = {"aimd-600K": (600, 10), "aimd-900K": (900, 10), "aimd-1200K": (1200, 6)}
    for seed, (name, (temp, n)) in enumerate(runs.items()):
        frames = aimd_outcar(tmp_path / "dft" / name, temp, n, seed)
        if name == "aimd-600K":
            ase.io.write(tmp_path / "dft" / name / "CONTCAR", frames[-1], format="vasp", direct=True)
    checkpoint = Path(json.loads((prefect_lam_run.run / "lam-report.json").read_text())["pretrained"])
    (tmp_path / "DPA-3.2-5M.pt").symlink_to(checkpoint)

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = []
    for marker, lang, body in blocks(PAGE):
        if marker.startswith("skip"):
            continue
        if marker.startswith("file "):
            path = tmp_path / marker.split()[1]
            if lang == "yaml":
                body = yaml.safe_dump(shrink(yaml.safe_load(body.replace(*BRANCH))), sort_keys=False)
            path.write_text(body)
            continue
        if lang not in ("bash", "python"):
            continue
        command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        allowed = (0, 3) if body.startswith("lamflow lam ") else (0,)  # 3: one iteration, rule not met
        assert out.returncode in allowed, f"{body}\n→ exit {out.returncode}\n{out.stdout[-2000:]}{out.stderr[-3000:]}"
        ran.append((body, out.stdout + out.stderr))

    commands = [body.split()[0] for body, _ in ran]
    assert commands.count("lamflow") == 5 and "dp" in commands and "lmp" in commands, commands
    text = dict(ran)
    # the dpdata look at the data: every run and its frames
    look = next(o for b, o in ran if b.startswith("import dpdata"))
    assert "aimd-600K: Cu24Au8, 10 frames" in look and "aimd-1200K: Cu24Au8, 6 frames" in look, look
    checked = next(o for b, o in ran if b.startswith("lamflow dataset check"))
    assert "3 systems, 26 frames: 0 errors" in checked, checked
    shown = next(o for b, o in ran if b.startswith("dp --pt show"))
    assert "cu_bulk" in shown and "cuau" in shown, shown[-1500:]
    # the pipeline imported the OUTCARs, finetuned from the named branch and delivered a student
    run = tmp_path / "runs" / "cuau-own"
    report = json.loads((run / "lam-report.json").read_text())
    assert report["datasets"] == {"mine": 20, "mine_test": 6}
    assert report["downstream"]["n_frames"] == 6 and report["downstream_before_bias"]["rmse_f"] > 0
    assert "pretrained branch 'cuau'" in (run / "lam" / "finetune" / "train.log").read_text()
    student = run / "distill" / "student.pth"
    distill = json.loads((run / "distill" / "report.json").read_text())
    assert distill["delivered"] == str(student) and student.read_bytes() == Path(distill["final_student"]).read_bytes()
    assert f"student: {student}" in text["lamflow report runs/cuau-own/distill\n"]
    card = json.loads((run / "package" / "model-card.json").read_text())
    assert card["type_map"] == ["Cu", "Au"] and card["iteration"] == distill["iterations"][-1]["iteration"]
    # the student ran in LAMMPS and in ASE
    log = (tmp_path / "md.log").read_text()
    assert "pair_style      deepmd" in log and "Loop time of" in log
    ase_md = next(o for b, o in ran if b.startswith("python md_ase.py"))
    assert re.search(r"T = \d+ K, E = -?\d+\.\d+ eV", ase_md), ase_md[-1500:]
