"""GPU figures: teacher labelling, training and MD speed on one GPU against the same machine's CPU cores.

    python bench/gpu.py [--workdir DIR] [--json FILE] [--quick] [--gpu-only]

Runs the work twice in child processes, first on the GPU, then on every CPU core of the same
machine (``CUDA_VISIBLE_DEVICES=""``), and prints the card, the figures and the GPU/CPU ratios
last. All of it goes through lamflow's own steps (``train``, ``teacher_label``, ``label``,
``speed``), so the figures are what a run of the loop gets:

- training: ``dp --pt train`` steps/s of a teacher of DeePMD-kit's example DPA-3 size and of the
  example ``se_e2_a`` student, on the 400-frame DFT water (``../shared/data/water`` or
  ``LAMFLOW_WATER``); the first display interval (start-up, compilation) is left out;
- teacher labelling: frames/s of ``teacher_label`` with that DPA-3 (192-atom water), and of
  ``label`` with SevenNet-0 (64- and 512-atom silicon); on the GPU also a 3072-atom water
  labelled in batches of up to 64 frames, to show that batches are sized to the GPU's memory
  (the peak it reached is printed);
- MD speed: LAMMPS ``pair_style deepmd`` µs/atom-step of the DPA-3 teacher, the student and the
  compressed student on 192- and 1536-atom water; SevenNet-0 in ASE on 512-atom silicon.

The teacher is trained a few hundred steps: speed does not depend on how well it is trained.
The CPU child reuses the GPU child's models (a frozen model runs on either device). Labelling
rates include loading the model, as each labelling chunk of a run does. The work directory is
emptied first: these are timings, and a cached step would report none.

``--gpu-only`` leaves the CPU side out (its 1536-atom teacher MD alone takes minutes on 16 cores):
the GPU figures of a new commit within a short loan, to hold against an earlier run's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from water import REPO, TYPE_MAP, frames, water_box, water_systems

SIZES = {  # (gpu, cpu) per measurement; --quick shrinks them to check the script on a laptop
    "full": {"dpa3_steps": (300, 15), "dpa3_disp": (50, 5), "se_steps": (2000, 300), "se_disp": (200, 50),
             "label_frames": (400, 16), "sevenn_frames": ((40, 20), (4, 2)), "md_teacher": (100, 10),
             "md_student": (1000, 200), "big_frames": 64},
    "quick": {"dpa3_steps": (4, 4), "dpa3_disp": (2, 2), "se_steps": (40, 40), "se_disp": (10, 10),
              "label_frames": (4, 4), "sevenn_frames": ((2, 1), (2, 1)), "md_teacher": (10, 10),
              "md_student": (20, 20), "big_frames": 2},
}


def seconds_per_step(log: Path) -> float:
    """Mean wall time per training step after the first display interval (start-up, compilation)."""
    rows = [(int(b), float(s)) for b, s in re.findall(r"Batch\s+(\d+): total wall time = ([\d.]+) s", log.read_text())]
    first = 1 if len(rows) > 2 else 0  # rows[0] is batch 1; rows[1] ends the first interval
    return sum(s for _, s in rows[first + 1:]) / (rows[-1][0] - rows[first][0])


def silicon(natoms_rep: int, n: int, out: Path) -> Path:
    """``n`` rattled diamond-Si cells, (2·k)³ conventional cells repeated (64 atoms for k=1)."""
    import numpy as np
    from ase.build import bulk
    from ase.io import write

    rng = np.random.default_rng(7)
    cells = []
    for _ in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(natoms_rep)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        cells.append(atoms)
    out.parent.mkdir(parents=True, exist_ok=True)
    write(out, cells, format="extxyz")
    return out


def water_supercell(reps: tuple[int, int, int], out: Path) -> Path:
    """The 192-atom water box repeated ``reps`` times, as a LAMMPS data file."""
    import dpdata

    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        dpdata.System(str(water_box()), fmt="lammps/lmp", type_map=TYPE_MAP).replicate(reps).to("lammps/lmp", str(out))
    return out


def child(device: str, size: dict, work: Path, models: dict | None) -> dict:
    from lamflow.flows.cli.main import quiet_libraries

    quiet_libraries(debug=False)
    import torch

    from lamflow.flows.core.execute import execute
    from lamflow.flows.core.resources import Resources
    from lamflow.steps.label import LabelParams
    from lamflow.steps.speed import SpeedParams
    from lamflow.steps.teacher_label import TeacherLabelParams
    from lamflow.steps.train import TrainParams

    gpu = device == "gpu"
    assert torch.cuda.is_available() == gpu, f"{device} child sees cuda={torch.cuda.is_available()}"
    pick = 0 if gpu else 1
    cores = Resources(threads=os.cpu_count())
    work = work / device
    out: dict = {"device": torch.cuda.get_device_name(0) if gpu else f"{os.cpu_count()} CPU cores",
                 "threads": os.cpu_count()}

    def record(key: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            out[key] = fn()
        except Exception as exc:  # one failed figure must not cost the others
            out[key] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        print(f"[{device}] {key}: {out[key]}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    def train(name: str, template: str, steps: int, disp: int, compress: bool) -> dict:
        rec = execute("train", TrainParams(output=work / name, type_map=TYPE_MAP, template=template,
                                           train=water_systems(), numb_steps=steps, compress=compress,
                                           overrides={"training": {"disp_freq": disp, "save_freq": steps}}), cores)
        r = rec.result
        return {"s_per_step": seconds_per_step(work / name / "train.log"), "steps": steps,
                "model": str(r.model), "compressed": str(r.compressed) if r.compressed else None,
                "compress_s": r.seconds.get("compress")}

    record("train_dpa3", lambda: train("dpa3", "dpa3", size["dpa3_steps"][pick], size["dpa3_disp"][pick], False))
    record("train_se_e2_a", lambda: train("se_e2_a", "se_e2_a", size["se_steps"][pick], size["se_disp"][pick], True))
    models = models or {"teacher": out["train_dpa3"].get("model"), "student": out["train_se_e2_a"].get("model"),
                        "compressed": out["train_se_e2_a"].get("compressed")}
    out["models"] = models

    def label_teacher() -> dict:
        n = size["label_frames"][pick]
        systems = frames(0, n, work / f"water-{n}")
        t0 = time.perf_counter()
        rec = execute("teacher_label", TeacherLabelParams(output=work / "teacher-labels", model=Path(models["teacher"]),
                                                          systems=systems, type_map=TYPE_MAP), cores)
        return {"frames": rec.result.n_frames, "frames_per_s": rec.result.n_frames / (time.perf_counter() - t0),
                "natoms": 192}

    record("label_dpa3", label_teacher)

    def label_sevenn(rep: int, n: int) -> dict:
        path = silicon(rep, n, work / f"si-{rep}-{n}.extxyz")
        t0 = time.perf_counter()
        rec = execute("label", LabelParams(output=work / f"sevenn-{rep}", structures=[path], type_map=["Si"],
                                           calculator="sevenn", calculator_kwargs={"device": "cuda" if gpu else "cpu"}),
                      cores)
        return {"frames": rec.result.n_frames, "frames_per_s": n / (time.perf_counter() - t0), "natoms": 8 * rep**3}

    record("label_sevenn_64", lambda: label_sevenn(2, size["sevenn_frames"][pick][0]))
    record("label_sevenn_512", lambda: label_sevenn(4, size["sevenn_frames"][pick][1]))

    if gpu:
        def big() -> dict:
            import dpdata

            n = size["big_frames"]
            path = work / f"water-3072-{n}"
            if not path.exists():
                (one,) = frames(0, n, work / f"water-{n}-src")
                dpdata.System(str(one), fmt="deepmd/npy").replicate((2, 2, 4)).to_deepmd_npy(str(path))
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            rec = execute("teacher_label", TeacherLabelParams(output=work / "teacher-labels-3072",
                                                              model=Path(models["teacher"]), systems=[path],
                                                              type_map=TYPE_MAP, batch_size=64), cores)
            free, total = torch.cuda.mem_get_info()
            return {"frames": rec.result.n_frames, "natoms": 3072, "frames_per_s": n / (time.perf_counter() - t0),
                    "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9, "gpu_total_gb": total / 1e9}

        record("label_dpa3_3072_batched", big)

    def speed(model: str, cell: Path, nsteps: int, slug: str) -> dict:
        rec = execute("speed", SpeedParams(model=Path(model), structure=cell, type_map=TYPE_MAP, nsteps=nsteps,
                                           output=work / f"speed-{slug}"), cores)
        return {"us_per_atom_step": rec.result.us_per_atom_step, "natoms": rec.result.natoms}

    for reps, label in (((1, 1, 1), "192"), ((2, 2, 2), "1536")):
        cell = water_supercell(reps, work / f"water-{label}.lmp")
        for name in ("teacher", "student", "compressed"):
            if models.get(name):
                steps = size["md_teacher" if name == "teacher" else "md_student"][pick]
                record(f"md_{name}_{label}", lambda m=models[name], s=steps, n=name: speed(m, cell, s, f"{n}-{label}"))

    def sevenn_md() -> dict:
        cell = silicon(4, 1, work / "si-512-md.extxyz")
        rec = execute("speed", SpeedParams(calculator="sevenn", calculator_kwargs={"device": "cuda" if gpu else "cpu"},
                                           structure=cell, type_map=["Si"], nsteps=200 if gpu else 100,
                                           output=work / "speed-sevenn-512"), cores)
        return {"us_per_atom_step": rec.result.us_per_atom_step, "natoms": rec.result.natoms}

    record("md_sevenn_512", sevenn_md)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench-gpu"))
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script, not the figures")
    parser.add_argument("--gpu-only", action="store_true", help="the GPU side alone (no ratios)")
    parser.add_argument("--child", choices=["gpu", "cpu"], help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    work = Path(args.workdir).resolve()

    if args.child:
        models = json.loads(args.models) if args.models else None
        result = child(args.child, size, work, models)
        (work / f"{args.child}.json").write_text(json.dumps(result, indent=1, default=str))
        return

    import shutil

    import torch

    shutil.rmtree(work, ignore_errors=True)  # figures are timings: never read from a cached record
    work.mkdir(parents=True)
    base = [sys.executable, __file__, "--workdir", str(work)] + (["--quick"] if args.quick else [])
    results: dict = {}
    models = None
    if torch.cuda.is_available():
        subprocess.run([*base, "--child", "gpu"], check=False)
        if (work / "gpu.json").exists():
            results["gpu"] = json.loads((work / "gpu.json").read_text())
            models = results["gpu"]["models"]
    else:
        print("bench/gpu: no GPU here; measuring the CPU side only")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if not args.gpu_only:
        subprocess.run([*base, "--child", "cpu", *(["--models", json.dumps(models)] if models else [])],
                       check=False, env=env)
    if (work / "cpu.json").exists():  # (absent with --gpu-only)
        results["cpu"] = json.loads((work / "cpu.json").read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report(results)


def report(results: dict) -> None:
    def fig(side: str, key: str, field: str):
        value = results.get(side, {}).get(key, {})
        return value.get(field) if isinstance(value, dict) else None

    gpu, cpu = results.get("gpu", {}), results.get("cpu", {})
    print(f"\nGPU: {gpu.get('device', 'none')}; CPU: {cpu.get('device', '?')} of the same machine, "
          f"{cpu.get('threads', '?')} threads")
    rows = [("train DPA-3 teacher (water 192 atoms)", "train_dpa3", "s_per_step", "s/step", False),
            ("train se_e2_a student", "train_se_e2_a", "s_per_step", "s/step", False),
            ("teacher_label DPA-3 (192 atoms)", "label_dpa3", "frames_per_s", "frames/s", True),
            ("label SevenNet-0 (Si 64 atoms)", "label_sevenn_64", "frames_per_s", "frames/s", True),
            ("label SevenNet-0 (Si 512 atoms)", "label_sevenn_512", "frames_per_s", "frames/s", True)]
    for size in ("192", "1536"):
        for name in ("teacher", "student", "compressed"):
            rows.append((f"LAMMPS {name} (water {size} atoms)", f"md_{name}_{size}", "us_per_atom_step",
                         "µs/atom-step", False))
    rows.append(("ASE MD SevenNet-0 (Si 512 atoms)", "md_sevenn_512", "us_per_atom_step", "µs/atom-step", False))
    print(f"{'':44} {'GPU':>12} {'CPU':>12} {'GPU gain':>9}")
    for title, key, field, unit, higher in rows:
        g, c = fig("gpu", key, field), fig("cpu", key, field)
        gain = (g / c if higher else c / g) if g and c else None
        fmt = lambda v: f"{v:12.4g}" if isinstance(v, (int, float)) else f"{'-':>12}"  # noqa: E731
        print(f"{title:44} {fmt(g)} {fmt(c)} {(f'{gain:8.1f}x' if gain else '-'):>9}  {unit}")
    big = gpu.get("label_dpa3_3072_batched", {})
    if "peak_gpu_gb" in big:
        print(f"teacher_label, 3072-atom water, {big['frames']} frames asked in batches of up to 64: "
              f"{big['frames_per_s']:.2f} frames/s, GPU peak {big['peak_gpu_gb']:.1f} of {big['gpu_total_gb']:.0f} GB")
    for side in ("gpu", "cpu"):
        t, s = fig(side, "md_teacher_1536", "us_per_atom_step"), fig(side, "md_compressed_1536", "us_per_atom_step")
        if t and s:
            print(f"compressed student / DPA-3 teacher speed on the {side.upper()}, 1536-atom water: {t / s:.1f}x")
    failed = [f"{side}:{k}" for side in results for k, v in results[side].items() if isinstance(v, dict) and "error" in v]
    if failed:
        print("failed: " + ", ".join(failed))


if __name__ == "__main__":
    main()
