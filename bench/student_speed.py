"""How much faster is the student, and how close to its teacher? One run, ratios printed last.

    python bench/student_speed.py [--teacher-steps 10] [--student-steps 2000] [--workdir DIR]

On the 192-atom DFT water box (``../shared/data/water``), with the same LAMMPS build and cell:
a teacher of DeePMD-kit's example DPA-3 size (``examples/water/dpa3``), a student of its
example ``se_e2_a`` size trained on the teacher's labels of 40 water frames, the same student
compressed (``dp --pt compress``). Prints LAMMPS timesteps/s of each, the speed ratios, and the
student's force RMSE against the teacher on 10 held-out frames. Steps are cached in the work
directory (``runs/bench-student-speed``): a rerun only redoes what changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from water import REPO, TYPE_MAP, example_teacher, frames, water_box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=10, help="DPA-3 training steps on the DFT water")
    parser.add_argument("--student-steps", type=int, default=2000)
    parser.add_argument("--train-frames", type=int, default=40)
    parser.add_argument("--test-frames", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="LAMMPS/PyTorch threads, same for every model")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench-student-speed"))
    args = parser.parse_args()

    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)  # deepmd-kit's hints would bury the figures

    from lamflow.flows.core.execute import execute
    from lamflow.flows.core.resources import Resources
    from lamflow.steps.evaluate import EvaluateParams
    from lamflow.steps.speed import SpeedParams
    from lamflow.steps.teacher_label import TeacherLabelParams
    from lamflow.steps.train import TrainParams

    work = Path(args.workdir).resolve()
    cores = Resources(threads=args.threads)
    teacher = example_teacher(args.teacher_steps)

    def labelled(name: str, start: int, count: int) -> list[Path]:
        rec = execute("teacher_label", TeacherLabelParams(
            output=work / f"{name}-labels", model=teacher, type_map=TYPE_MAP, batch_size=8,
            systems=frames(start, count, work / f"{name}-frames")), cores)
        return [Path(p) for p in rec.result.systems]

    train = labelled("train", 0, args.train_frames)
    test = labelled("test", 400 - args.test_frames, args.test_frames)  # the last frames: another system
    student = execute("train", TrainParams(output=work / f"student-se_e2_a-{args.student_steps}", type_map=TYPE_MAP,
                                           template="se_e2_a", train=train, numb_steps=args.student_steps,
                                           compress=True, overrides={"training": {"disp_freq": 100}}), cores)
    models = {"teacher DPA-3": teacher, "student se_e2_a": Path(student.result.model),
              "student se_e2_a compressed": Path(student.result.compressed)}

    speed, rmse = {}, {}
    for name, model in models.items():
        slug = name.replace(" ", "-")
        nsteps = 20 if name.startswith("teacher") else 200
        rec = execute("speed", SpeedParams(model=model, structure=water_box(), type_map=TYPE_MAP, nsteps=nsteps,
                                           output=work / f"speed-{slug}"), cores)
        speed[name] = rec.result.timesteps_per_second
        if not name.startswith("teacher"):
            ev = execute("evaluate", EvaluateParams(model=model, systems=test, type_map=TYPE_MAP,
                                                    output=work / f"evaluate-{slug}.json"))
            rmse[name] = ev.result.rmse_f

    base = speed["teacher DPA-3"]
    print(f"water, 192 atoms, LAMMPS on {args.threads} threads; teacher trained {args.teacher_steps} steps, "
          f"student {args.student_steps} steps on {args.train_frames} teacher-labelled frames")
    for name, tps in speed.items():
        extra = f", force RMSE vs teacher {rmse[name]:.4f} eV/Å on {args.test_frames} held-out frames" if name in rmse else ""
        print(f"  {name:<28} {tps:9.3f} timesteps/s{extra}")
    print(f"student se_e2_a / teacher DPA-3 speed: {speed['student se_e2_a'] / base:.1f}x")
    print(f"compressed student / teacher DPA-3 speed: {speed['student se_e2_a compressed'] / base:.1f}x  (goal >= 50x)")
    print(f"compressed student force RMSE vs teacher: {rmse['student se_e2_a compressed']:.4f} eV/Å  (goal <= 0.05 eV/Å)")


if __name__ == "__main__":
    main()
