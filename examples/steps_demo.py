"""One pass through every lamflow step on copper with EMT as the reference — real libraries,
minutes on a laptop. `make quickstart` runs the full distillation loop instead, once it exists.

label (EMT) → train a small DPA-3 teacher → train a compressed se_e2_a student → explore with
LAMMPS (student drives, teacher compared) → select by deviation → teacher-label → evaluate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
from ase.build import bulk
from rich.console import Console

from lamflow.steps import evaluate, explore, label, select, teacher_label, train

TINY_DPA3 = {"model": {"descriptor": {"repflow": {"n_dim": 16, "e_dim": 8, "a_dim": 8, "nlayers": 2,
                                                  "e_sel": 60, "a_sel": 20, "axis_neuron": 4}},
                       "fitting_net": {"neuron": [32, 32]}}}
SMALL_STUDENT = {"model": {"descriptor": {"neuron": [8, 16], "axis_neuron": 4},
                           "fitting_net": {"neuron": [32, 32]}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/steps-demo"))
    args = parser.parse_args()
    out, console, tm = args.workdir, Console(), ["Cu"]
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(40):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.rattle(0.03 + 0.002 * i, seed=i)
        frames.append(atoms)
    ase.io.write(out / "cu.extxyz", frames)
    with console.status("label (EMT)"):
        data = label.run(label.LabelParams(structures=[out / "cu.extxyz"], type_map=tm, output=out / "emt"))
    console.print(f"label: {data.n_frames} EMT frames")
    with console.status("train teacher (DPA-3)"):
        teacher = train.run(train.TrainParams(output=out / "teacher", type_map=tm, template="dpa3",
                                              overrides=TINY_DPA3, train=data.systems, numb_steps=300, threads=2))
    with console.status("train student (se_e2_a, compressed)"):
        student = train.run(train.TrainParams(output=out / "student", type_map=tm, template="se_e2_a",
                                              overrides=SMALL_STUDENT, train=data.systems, numb_steps=300,
                                              compress=True, threads=2))
    with console.status("explore (LAMMPS)"):
        md = explore.run(explore.ExploreParams(output=out / "explore", models=[student.compressed, teacher.model],
                                               type_map=tm, structure=out / "cu.extxyz", temps=[300, 900],
                                               nsteps=500, trj_freq=10, threads=2))
    sel = select.run(select.SelectParams(output=out / "select", tasks=[t.path for t in md.tasks], type_map=tm,
                                         trust_lo=0.05, trust_hi=0.5, max_candidates=50))
    console.print(f"select: accurate {sel.accurate_ratio:.2f}, candidate {sel.candidate_ratio:.2f}, "
                  f"failed {sel.failed_ratio:.2f}; {sel.n_selected} selected")
    if sel.candidates:
        with console.status("teacher-label"):
            labels = teacher_label.run(teacher_label.TeacherLabelParams(
                output=out / "teacher-label", model=teacher.model, systems=sel.candidates, type_map=tm))
        metrics = evaluate.run(evaluate.EvaluateParams(model=student.compressed, systems=labels.systems, type_map=tm))
        console.print(f"student vs teacher on {metrics.n_frames} explored frames: "
                      f"force RMSE {metrics.rmse_f:.3f} eV/Å")
    console.print(f"[green]done[/green]: everything is under {out}")


if __name__ == "__main__":
    main()
