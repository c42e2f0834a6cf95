"""What the water benches share: the 192-atom DFT water box and a teacher of DeePMD-kit's
example DPA-3 size (``examples/water/dpa3``: 6 layers, n_dim 128), trained here for a few steps.

The benches measure speed and how well a student reproduces its teacher, so the teacher need not
be accurate against DFT — it must have the real size and architecture, and be a smooth function
of the coordinates, which a briefly trained DPA-3 is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WATER = Path(os.environ.get("LAMFLOW_WATER", REPO.parent / "shared" / "data" / "water"))
TYPE_MAP = ["O", "H"]


def water_systems() -> list[Path]:
    """The four deepmd/npy water systems (400 DFT frames), or a one-line exit if absent."""
    systems = sorted(p for p in WATER.glob("data_*") if p.is_dir())
    if not systems or not (WATER / "water.lmp").is_file():
        sys.exit(f"bench: {WATER}: expected the water data (data_0..3, water.lmp); set LAMFLOW_WATER")
    return systems


def water_box() -> Path:
    water_systems()
    return WATER / "water.lmp"


def frames(start: int, count: int, out: Path) -> list[Path]:
    """``count`` water frames from frame ``start`` on (of the 400, in system order), unlabelled."""
    import dpdata

    from lamflow.steps.structures import deepmd_systems

    if not out.exists():
        systems = [dpdata.System(str(p), fmt="deepmd/npy") for p in water_systems()]
        pool = systems[0]
        for other in systems[1:]:
            pool.append(other)
        pool.sub_system(list(range(start, start + count))).to_deepmd_npy(str(out))
    return deepmd_systems(out)


def example_teacher(steps: int) -> Path:
    """An example-size DPA-3 trained ``steps`` steps on the DFT water; the frozen model.

    Kept in ``runs/bench-teachers`` and shared by the benches (training it takes ~10 s a step on
    2 CPU cores); a cached step, so it is trained once."""
    from lamflow.flows.core.execute import execute
    from lamflow.steps.train import TrainParams

    record = execute("train", TrainParams(compress=False, output=REPO / "runs" / "bench-teachers" / f"dpa3-{steps}", type_map=TYPE_MAP, template="dpa3",
                                          train=water_systems(), numb_steps=steps,
                                          overrides={"training": {"disp_freq": 10}}))
    return Path(record.result.model)
