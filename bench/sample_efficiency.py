"""Does pretraining pay off? Downstream force RMSE vs fine-tuning frames, finetuned vs scratch.

    python bench/sample_efficiency.py [--frames 10 30 100] [--steps 400] [--workdir DIR]

One run, on EMT-labelled Cu/Au (ASE stands in for DFT so this runs on a CPU in ~15 minutes):
a small DPA-3 is pretrained multi-task on Cu and Au bulk; for each N it is fine-tuned on N
Cu3Au frames from the Cu fitting net, and the same DPA-3 is trained from scratch on the same N
frames with the same number of steps. Both are measured on 50 held-out Cu3Au frames. Prints a
table, the RMSE ratio at every N and how many frames scratch needs to match fine-tuning on the
fewest frames (log-log interpolation), and saves the plot as ``sample_efficiency.png``. Steps
are cached in the work directory: a rerun only redoes what changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lam-cuau"
DPA3 = {
    "model": {"descriptor": {"repflow": {"n_dim": 32, "e_dim": 16, "a_dim": 8, "nlayers": 2, "e_rcut": 5.0,
                                         "e_rcut_smth": 4.5, "e_sel": 60, "a_sel": 20, "axis_neuron": 4}},
              "fitting_net": {"neuron": [64, 64]}},
    "learning_rate": {"start_lr": 0.002, "stop_lr": 1.0e-5},
}
TYPE_MAP = ["Cu", "Au"]


def labelled(work: Path, name: str, structure: str, frames: int, seed: int) -> list[Path]:
    from lamflow.flows.core.execute import execute
    from lamflow.steps.label import LabelParams
    from lamflow.steps.perturb import PerturbParams

    pert = execute("perturb", PerturbParams(structures=[EXAMPLE / structure], type_map=TYPE_MAP,
                                            output=work / f"{name}-structures", n_per_structure=frames,
                                            cell_fraction=0.04, atom_distance=0.2, seed=seed))
    lab = execute("label", LabelParams(structures=pert.result.systems, type_map=TYPE_MAP,
                                       output=work / name, calculator="emt"))
    return [Path(p) for p in lab.result.systems]


def subset(systems: list[Path], n: int, out: Path) -> list[Path]:
    """The first ``n`` frames of a (single-composition) labelled set, as its own deepmd/npy."""
    import dpdata

    from lamflow.steps.structures import deepmd_systems

    if not out.exists():
        system = dpdata.LabeledSystem(str(systems[0]), fmt="deepmd/npy")
        system.sub_system(list(range(n))).to_deepmd_npy(str(out))
    return deepmd_systems(out)


def frames_to_match(ns: list[int], errors: list[float], target: float) -> float | None:
    """N at which the scratch curve reaches ``target`` (log-log interpolation; None if never)."""
    x, y = np.log(ns), np.log(errors)
    for i in range(len(ns) - 1):
        if (y[i] - np.log(target)) * (y[i + 1] - np.log(target)) <= 0 and y[i] != y[i + 1]:
            t = (np.log(target) - y[i]) / (y[i + 1] - y[i])
            return float(np.exp(x[i] + t * (x[i + 1] - x[i])))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--steps", type=int, default=400, help="training steps, finetune and scratch alike")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench-sample-efficiency"))
    args = parser.parse_args()

    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)  # deepmd-kit's hints would bury the figures

    from lamflow.flows.core.execute import execute
    from lamflow.steps.evaluate import EvaluateParams
    from lamflow.steps.train import TrainParams

    work = Path(args.workdir).resolve()
    cu = labelled(work / "data", "cu_bulk", "cu-fcc-32.extxyz", 200, 1)
    au = labelled(work / "data", "au_bulk", "au-fcc-32.extxyz", 100, 2)
    pool = labelled(work / "data", "cu3au", "cu3au-32.extxyz", max(args.frames), 3)
    test = labelled(work / "data", "cu3au_test", "cu3au-32.extxyz", 50, 4)

    pre = execute("train", TrainParams(compress=False, output=work / "pretrain", type_map=TYPE_MAP, template="dpa3", overrides=DPA3,
                                       branches={"cu_bulk": {"train": cu, "weight": 2.0}, "au_bulk": {"train": au}},
                                       numb_steps=args.pretrain_steps))
    rows = []
    for n in args.frames:
        data = subset(pool, n, work / "data" / f"cu3au-{n}")
        rmse = {}
        for kind, extra in (("finetuned", {"finetune_from": pre.result.checkpoint, "model_branch": "cu_bulk"}),
                            ("scratch", {})):
            trained = execute("train", TrainParams(compress=False, output=work / f"{kind}-{n}", type_map=TYPE_MAP, template="dpa3",
                                                   overrides=DPA3, train=data, numb_steps=args.steps, **extra))
            ev = execute("evaluate", EvaluateParams(model=trained.result.model, systems=test, type_map=TYPE_MAP,
                                                    output=work / f"{kind}-{n}.evaluate.json"))
            rmse[kind] = ev.result.rmse_f
        rows.append((n, rmse["finetuned"], rmse["scratch"]))

    print(f"downstream Cu3Au force RMSE (eV/Å) on 50 held-out frames; {args.steps} training steps each")
    print(f"{'frames':>7} {'finetuned':>10} {'scratch':>10} {'scratch/finetuned':>18}")
    for n, ft, sc in rows:
        print(f"{n:>7} {ft:>10.4f} {sc:>10.4f} {sc / ft:>18.2f}")
    ns, scratch = [r[0] for r in rows], [r[2] for r in rows]
    target = rows[0][1]
    match = frames_to_match(ns, scratch, target)
    if match is None:
        print(f"scratch never reaches the {ns[0]}-frame finetuned error ({target:.4f}) within {ns[-1]} frames: "
              f"frames ratio > {ns[-1] / ns[0]:.0f}x")
    else:
        print(f"scratch needs ~{match:.0f} frames to match finetuning on {ns[0]}: frames ratio {match / ns[0]:.1f}x")
    (work / "sample_efficiency.json").write_text(json.dumps({"rows": rows, "frames_to_match": match}, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.loglog(ns, [r[1] for r in rows], "o-", label="finetuned from pretrained")
    ax.loglog(ns, scratch, "s--", label="from scratch")
    ax.set_xlabel("fine-tuning frames")
    ax.set_ylabel("force RMSE (eV/Å)")
    ax.set_title(f"Cu3Au, {args.steps} steps each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(work / "sample_efficiency.png", dpi=120)
    print(f"plot: {work / 'sample_efficiency.png'}")


if __name__ == "__main__":
    main()
