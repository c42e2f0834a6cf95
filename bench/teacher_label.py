"""Teacher labelling throughput: lamflow's batched step vs the dpgen2 way, on the same frames.

    python bench/teacher_label.py [--frames 16] [--single 3] [--teacher-steps 10] [--model M]

dpgen2 labels each selected frame as its own task: a fresh process that loads the reference
(there DFT; here the teacher) and evaluates one frame. lamflow's ``teacher_label`` loads the
teacher once and evaluates the frames in batches. Both are timed end to end as fresh processes
(start-up and model loading included) on the 192-atom DFT water with a teacher of DeePMD-kit's
example DPA-3 size; the per-frame way is timed on ``--single`` frames and its rate extrapolated.
Prints frames/s of each and the ratio, last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from water import REPO, TYPE_MAP, example_teacher, frames

ONE_FRAME = """
import sys, numpy as np, dpdata
from deepmd.infer import DeepPot
model, system, i = DeepPot(sys.argv[1]), dpdata.System(sys.argv[2], fmt="deepmd/npy"), int(sys.argv[3])
types = [list(model.get_type_map()).index(system["atom_names"][t]) for t in system["atom_types"]]
e, f, v = model.eval(system["coords"][i:i + 1].reshape(1, -1), system["cells"][i:i + 1].reshape(1, 9), types)[:3]
assert np.isfinite(e).all()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames the batched step labels")
    parser.add_argument("--single", type=int, default=3, help="frames labelled one process each")
    parser.add_argument("--teacher-steps", type=int, default=10)
    parser.add_argument("--model", help="a teacher model file (default: the example-size DPA-3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench-teacher-label"))
    args = parser.parse_args()

    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)  # deepmd-kit's hints would bury the figures

    work = Path(args.workdir).resolve()
    model = Path(args.model).resolve() if args.model else example_teacher(args.teacher_steps)
    (system,) = frames(200, args.frames, work / f"frames-{args.frames}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DP_INTRA_OP_PARALLELISM_THREADS": str(args.threads),
           "DP_INTER_OP_PARALLELISM_THREADS": "1"}

    out = work / "batched"
    shutil.rmtree(out, ignore_errors=True)
    Path(str(out) + ".result.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "step", "teacher_label", "--set", f"output={out}",
                    "--set", f"model={model}", "--set", f"systems=[{system}]", "--set", f"type_map={TYPE_MAP}",
                    "--set", "batch_size=8", "--threads", str(args.threads)], check=True, capture_output=True, env=env)
    batched = args.frames / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for i in range(args.single):
        subprocess.run([sys.executable, "-c", ONE_FRAME, str(model), str(system), str(i)], check=True,
                       capture_output=True, env=env)
    single = args.single / (time.perf_counter() - t0)

    print(f"teacher {model.name}, water 192 atoms, {args.threads} threads")
    print(f"  lamflow teacher_label, {args.frames} frames in one process: {batched:.3f} frames/s")
    print(f"  one process per frame (dpgen2 tasks), {args.single} frames:  {single:.3f} frames/s")
    print(f"batched / per-frame labelling throughput: {batched / single:.1f}x  (goal >= 50x)")


if __name__ == "__main__":
    main()
