"""A dpgen2 distillation input (``train.type: dp-dist``, ``fp.type: deepmd``) as a lamflow distill
config: ``lamflow config --from-dpgen2 input.json -o config.yaml``.

A dpgen2 user's first lamflow config is a translation of an ``input.json`` they already trust;
doing it by hand from the key table in docs/trust-levels.md is where the factor of two in the
trust levels, dpgen2's own defaults (``ens: nve``, ``nsteps: 100``) and the stage semantics get
lost. This module is that table made executable: what maps is written, what has no lamflow
counterpart is listed as a note, and the result goes through ``lamflow config --check`` like any
config. dpgen2 is not imported (it stays out of lamflow's environment): its input is read as
JSON, with its argcheck aliases and defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lamflow.steps.cells import alloy_cells, read_lattice, unit_cell
from lamflow.steps.errors import InputError

#: dpgen2's ``lmp-md`` task-group defaults (dpgen2/exploration/task/make_task_group_from_config.py),
#: written out where lamflow's differ, so the translation explores what dpgen2 would have
LMP_MD_DEFAULTS = {"ens": "nve", "dt": 0.001, "nsteps": 100, "trj_freq": 10, "tau_t": 0.05, "tau_p": 0.5}
#: dpgen2's other defaults that lamflow's differ from (entrypoint/args.py, op/run_dp_train.py,
#: exploration/report): the iteration cap, labels per iteration, a continued student's steps,
#: the accurate ratio, and adaptive-lower's candidates, upper level and tolerance
MAX_NUMB_ITER, TASK_MAX, INIT_MODEL_NUMB_STEPS, CONV_ACCURACY = 10, 10, 400000, 0.9
ADAPTIVE_DEFAULTS = {"numb_candi_f": 200, "level_f_hi": 0.5, "n_checked_steps": 2, "conv_tolerance": 0.05}
#: dpgen2's argcheck aliases of those keys
LMP_MD_ALIASES = {"ensemble": "ens", "Ts": "temps", "Ps": "press", "t_freq": "trj_freq", "traj_freq": "trj_freq",
                  "sys_idx": "conf_idx"}
#: ... and of an ``lmp-template`` task group's
LMP_TEMPLATE_ALIASES = {"lmp_template": "lmp_template_fname", "lmp": "lmp_template_fname",
                        "plm_template": "plm_template_fname", "plm": "plm_template_fname"}
#: lamflow's ensembles for dpgen2's (its anisotropic and triclinic barostats are npt here)
ENSEMBLES = {"nve": "nve", "nvt": "nvt", "npt": "npt", "npt-i": "npt", "npt-a": "npt", "npt-t": "npt"}


class Translation:
    """The config being written and the notes on what did not translate as it was."""

    def __init__(self, source: Path, out_dir: Path):
        self.source, self.out_dir = source, out_dir
        self.config: dict[str, Any] = {}
        self.notes: list[str] = []

    def source_path(self, value: str, prefix: str | None = None) -> Path:
        """A path of the dpgen2 input: relative to its folder, or to ``prefix``."""
        p = Path(prefix or "") / value
        return p if p.is_absolute() else self.source.parent / p

    def path(self, value: str, prefix: str | None = None) -> str:
        """A path of the dpgen2 input relative to the config being written, where lamflow resolves it."""
        return os.path.relpath(self.source_path(value, prefix), self.out_dir)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(key, f"expected a mapping in a dpgen2 input, got {type(value).__name__}")
    return value


def translate(raw: dict, source: Path, out_dir: Path) -> Translation:
    """The lamflow config of dpgen2 input ``raw`` (read from ``source``), with paths relative to
    ``out_dir``; one line and exit 2 when it is not a dpgen2 distillation input at all."""
    t = Translation(source, out_dir)
    inputs, train, explore, fp = (_section(raw, k) for k in ("inputs", "train", "explore", "fp"))
    if not inputs.get("type_map"):
        raise InputError(str(source), "is not a dpgen2 input: no inputs.type_map")
    t.config["name"] = str(raw.get("name") or source.parent.name or "from-dpgen2")
    t.config["type_map"] = list(inputs["type_map"])
    _teacher(t, train, explore, fp)
    _student(t, train)
    _configurations(t, explore)
    _initial_data(t, inputs)
    _iterations(t, explore)
    _selection(t, explore, fp, numb_models=t.config["student"].get("count", 1))
    t.config["max_iterations"] = int(explore.get("max_numb_iter", MAX_NUMB_ITER))
    for key, what in (("filters", "configuration filters"), ("output_nopbc", "output_nopbc")):
        if explore.get(key):
            t.note(f"explore.{key}: lamflow has no {what}")
    return t


def _teacher(t: Translation, train: dict, explore: dict, fp: dict) -> None:
    fp_type = fp.get("type", "deepmd")
    teacher = (fp.get("run_config") or {}).get("teacher_model_path") if fp_type == "deepmd" else None
    teacher = teacher or (explore.get("config") or {}).get("teacher_model_path")
    if train.get("type", "dp-dist") != "dp-dist":
        t.note(f"train.type '{train.get('type')}': lamflow distils a teacher; its students are trained on the "
               "teacher's labels (dpgen2's dp-dist)")
    if fp_type != "deepmd":
        t.note(f"fp.type '{fp_type}': lamflow's teacher is a DeePMD-kit model or an ASE calculator, not a DFT code; "
               "set teacher.model or teacher.calculator (a dataset of your DFT frames goes to initial_data.systems)")
    if teacher:
        t.config["teacher"] = {"model": t.path(str(teacher))}
        if str(teacher).endswith(".pb"):
            t.note(f"teacher {teacher}: a DeePMD-kit 2 (TensorFlow) model, which deepmd-kit 3's PyTorch backend does "
                   f"not read; convert it where TensorFlow is installed (dp convert-backend {teacher} "
                   f"{str(teacher)[:-3]}.pth) and give the .pth")
    else:
        t.note("no teacher_model_path (fp.run_config or explore.config): set teacher")


def _student(t: Translation, train: dict) -> None:
    student: dict[str, Any] = {}
    script = train.get("template_script")
    if isinstance(script, list):
        if len(script) > 1:
            t.note("train.template_script: one script per model; the first is every student's template")
        script = script[0] if script else None
    if isinstance(script, dict):
        written = t.out_dir / "student-template.json"
        written.write_text(json.dumps(script, indent=2))
        t.note(f"train.template_script (given inline) written to {written.name}")
        template = script
        student["template"] = written.name
    elif isinstance(script, str):
        student["template"] = t.path(script)
        try:
            template = json.loads((t.source.parent / script).read_text())
        except (OSError, ValueError):
            template = {}
    else:
        template = {}
    steps = (template.get("training") or {}).get("numb_steps")
    if steps:
        student["numb_steps"] = int(steps)
    config = train.get("config") or {}
    policy = str(config.get("init_model_policy", "no"))
    student["init_from_previous"] = policy != "no"
    if policy not in ("yes", "no"):
        t.note(f"train.config.init_model_policy '{policy}': lamflow's init_from_previous is every iteration or none")
    if policy != "no":
        steps_next = config.get("init_model_numb_steps", config.get("init_model_stop_batch", INIT_MODEL_NUMB_STEPS))
        student["numb_steps_next"] = int(steps_next)
        t.note("train.config init_model_start_* and init_model_old_ratio: dpgen2 restarts a continued student at its "
               "own learning rate and loss prefactors (1e-4 by default) and weights old data; lamflow continues "
               "with the template's (put others in student.overrides)")
    if train.get("student_model_path"):
        t.note("train.student_model_path: lamflow's first students are trained from scratch on initial_data")
    if "numb_models" in train:
        student["count"] = int(train["numb_models"])
    t.config["student"] = student


def _configurations(t: Translation, explore: dict) -> None:
    files, fmts, made = [], set(), []
    prefix = explore.get("configuration_prefix")
    for i, conf in enumerate(explore.get("configurations") or []):
        kind = conf.get("type", "alloy" if "lattice" in conf else "file")  # dpgen2 before 0.0.7 had no type
        if kind == "alloy":
            made.append(_alloy(t, conf, i, prefix))
            continue
        if kind != "file":
            t.note(f"explore.configurations[{i}] (type '{kind}'): lamflow starts from files; write its cells to a "
                   "file (ASE) and list it in configurations.files")
            continue
        names = conf.get("files") or []
        files += [t.path(f, conf.get("prefix") or prefix) for f in ([names] if isinstance(names, str) else names)]
        fmts.add(conf.get("fmt", "auto"))
    files += made
    if not files:
        t.note("no configuration files: set configurations.files")
    t.config["configurations"] = {"files": files}
    fmts.discard("auto")
    if len(fmts) == 1 and not made:
        t.config["configurations"]["fmt"] = fmts.pop()
    elif fmts:
        t.note(f"configurations in {', '.join(sorted(fmts))} beside {'the alloy cells (extxyz)' if made else 'others'}"
               ": lamflow guesses each file's format from its name; rename a file whose format is not guessed")


def _alloy(t: Translation, conf: dict, i: int, prefix: str | None) -> str:
    """dpgen2's ``alloy`` configuration as the cells it would have made: generated once here (dpgen2
    also generates them once, when the workflow is submitted), one extxyz file each in a folder next
    to the config, seeded so a second translation writes the same cells. The pattern of their files,
    as the config lists it."""
    from ase.io import write

    where = f"explore.configurations[{i}]"
    lattice = conf.get("lattice")
    if not isinstance(lattice, (list, tuple)) or len(lattice) != 2:
        raise InputError(f"{where}.lattice", f"expected [lattice type, constant] or [file, dpdata format], got "
                                             f"{lattice!r}")
    kind, second = lattice
    if isinstance(second, str):
        base, what = read_lattice(t.source_path(str(kind), prefix), second, f"{where}.lattice"), f"the cell of {kind}"
    else:
        # dpgen2's diamond cell is the primitive one with vectors constant × (0, 1, 1): half the cubic constant
        a = float(second) * (2.0 if kind == "diamond" else 1.0)
        base, what = unit_cell(str(kind), a, f"{where}.lattice"), f"{kind} a = {a:g} Å"
        if kind == "diamond":
            t.note(f"{where}: dpgen2's diamond constant {second} is half the cubic one (its cell's vectors are "
                   f"{second} × (0, 1, 1)): the cells are diamond with a = {a:g} Å")
    count = int(conf.get("numb_confs", 1))
    cells = alloy_cells(t.config["type_map"], base, count, conf.get("replicate"), conf.get("concentration"),
                        float(conf.get("cell_pert_frac", 0.0)), float(conf.get("atom_pert_dist", 0.0)), seed=i,
                        where=where)
    folder = t.out_dir / "confs" / f"alloy-{i}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.extxyz"):  # a translation written again: no cell of the last one stays
        old.unlink()
    for j, cell in enumerate(cells):  # one file each: a file's frames share one composition
        write(folder / f"{j:03d}.extxyz", cell)
    name = os.path.relpath(folder / "*.extxyz", t.out_dir)
    t.note(f"{where} (type 'alloy'): {count} random {len(cells[0])}-atom cells on {what} written to {name} "
           "(seeded; dpgen2 also makes them once, at submit)")
    return name


def _initial_data(t: Translation, inputs: dict) -> None:
    systems = inputs.get("init_data_sys") or []
    systems = [systems] if isinstance(systems, str) else systems
    prefix = inputs.get("init_data_prefix")
    # dpgen2 starts from its labelled data alone: no copies of the starting cells
    t.config["initial_data"] = {"systems": [t.path(s, prefix) for s in systems], "perturbed_frames": 0}
    if not systems:
        t.config["initial_data"]["perturbed_frames"] = 40
        t.note("no inputs.init_data_sys: the first students learn from 40 perturbed copies of each starting cell "
               "labelled by the teacher (initial_data.perturbed_frames)")


def _task_group(t: Translation, group: dict, where: str) -> dict[str, Any] | None:
    """One ``lmp-md`` or ``lmp-template`` task group as an iteration entry; None (and a note) for
    another kind."""
    g = {LMP_MD_ALIASES.get(k, k): v for k, v in group.items()}
    if g.get("type", "lmp-md") == "lmp-template":
        return _template_group(t, g, where)
    if g.get("type", "lmp-md") not in ("lmp-md", "lmp-npt"):
        t.note(f"{where} (type '{g.get('type')}') is left out: lamflow explores with LAMMPS, from its own input "
               "or from yours (iterations[].lammps_template)")
        return None
    g = {**LMP_MD_DEFAULTS, **g}
    ens = ENSEMBLES.get(g["ens"])
    if ens is None:
        raise InputError(where, f"ens '{g['ens']}' is not one of dpgen2's {sorted(ENSEMBLES)}")
    if ens != g["ens"]:
        t.note(f"{where}: ens '{g['ens']}' runs as lamflow's npt (isotropic; a slab in its plane)")
    out: dict[str, Any] = {"ensemble": ens, "temps": list(g.get("temps") or [])}
    if ens == "npt" and g.get("press"):
        out["pressures"] = list(g["press"])
    out.update({k: g[k] for k in ("nsteps", "trj_freq", "dt", "tau_t")})
    if ens == "npt":
        out["tau_p"] = g["tau_p"]
    if g.get("n_sample"):
        out["n_sample"] = int(g["n_sample"])
    ignored = sorted(k for k in g if k in ("pka_e", "neidelay", "no_pbc", "use_clusters", "relative_f_epsilon",
                                           "relative_v_epsilon") and g[k] not in (None, False))
    if ignored:
        t.note(f"{where}: {', '.join(ignored)} have no lamflow counterpart")
    return out


def _template_group(t: Translation, g: dict, where: str) -> dict[str, Any] | None:
    """An ``lmp-template`` task group: the user's LAMMPS input and revisions, which lamflow
    revises by dpgen2's rules (steps/lammps_input.py). A PLUMED input has no counterpart: the
    LAMMPS of DeePMD-kit's wheel is built without PLUMED."""
    g = {LMP_TEMPLATE_ALIASES.get(k, k): v for k, v in g.items()}
    if not g.get("lmp_template_fname"):
        raise InputError(f"{where}.lmp_template_fname", "expected the LAMMPS input of an lmp-template task group")
    if g.get("plm_template_fname"):
        t.note(f"{where} (type 'lmp-template') is left out: its PLUMED input ({g['plm_template_fname']}) needs a "
               "LAMMPS built with PLUMED, which DeePMD-kit's wheel is not; write the bias with COLVARS or a fix "
               "of LAMMPS' own in the template")
        return None
    out: dict[str, Any] = {"lammps_template": t.path(g["lmp_template_fname"]),
                           "trj_freq": int(g.get("trj_freq", LMP_MD_DEFAULTS["trj_freq"]))}
    if g.get("revisions"):
        out["revisions"] = {k: list(v) if isinstance(v, list) else [v] for k, v in g["revisions"].items()}
    if g.get("n_sample"):
        out["n_sample"] = int(g["n_sample"])
    return out


def _iterations(t: Translation, explore: dict) -> None:
    stages = explore.get("stages") or []
    iterations = []
    for s, stage in enumerate(stages):
        groups = stage if isinstance(stage, list) else [stage]
        made = [(i, _task_group(t, g, f"explore.stages[{s}][{i}]")) for i, g in enumerate(groups)]
        made = [(i, m) for i, m in made if m is not None]
        if not made:
            continue
        first = made[0][1]
        for i, other in made[1:]:
            same = {k: v for k, v in other.items() if k not in ("temps", "pressures")} == \
                {k: v for k, v in first.items() if k not in ("temps", "pressures")}
            if same and "temps" in first:  # one grid: lamflow runs every temperature × pressure of an iteration
                first["temps"] = sorted({*first["temps"], *other["temps"]})
                if "pressures" in other:
                    first["pressures"] = sorted({*first.get("pressures", []), *other["pressures"]})
                t.note(f"explore.stages[{s}][{i}] joins the stage's first task group: an iteration runs every "
                       "temperature × pressure of the two")
            else:
                t.note(f"explore.stages[{s}][{i}] (type '{groups[i].get('type', 'lmp-md')}'): an iteration explores "
                       "one ensemble and MD length, or one LAMMPS template; this task group differs from the stage's "
                       "first and is left out")
        if any("conf_idx" in g for g in groups) and len(explore.get("configurations") or []) > 1:
            t.note(f"explore.stages[{s}]: conf_idx: every iteration starts from every configuration file")
        iterations.append(first)
    if len(iterations) > 1:
        t.note("explore.stages: dpgen2 moves to the next stage when one converges; lamflow's iterations are a "
               "schedule (iteration k explores with iterations[min(k, len - 1)])")
    if not iterations:
        t.note("no explore.stages: set iterations")
    t.config["iterations"] = iterations


def _selection(t: Translation, explore: dict, fp: dict, numb_models: int) -> None:
    conv = explore.get("convergence") or {}
    # with one student dpgen2's deviation is half the student's real error against the teacher,
    # which lamflow compares (docs/trust-levels.md); an ensemble's deviation is the same in both
    scale = 2.0 if numb_models == 1 else 1.0
    selection: dict[str, Any] = {}
    convergence: dict[str, Any] = {"consecutive": 1}
    kind = conv.get("type", "fixed-levels")
    task_max = int(fp.get("task_max", TASK_MAX))
    if kind in ("fixed-levels", "fixed-levels-max-select"):
        if "level_f_lo" in conv:
            selection["trust_lo"] = conv["level_f_lo"] * scale
        if "level_f_hi" in conv:
            selection["trust_hi"] = conv["level_f_hi"] * scale
        selection["max_candidates"] = task_max
        if kind == "fixed-levels-max-select":
            selection["strategy"] = "highest"
        convergence["accurate_ratio"] = conv.get("conv_accuracy", CONV_ACCURACY)
    elif kind == "adaptive-lower":
        a = {**ADAPTIVE_DEFAULTS, **{("level_f_hi" if k == "trust_f_hi" else k): v for k, v in conv.items()}}
        selection["trust_lo"] = "adaptive"
        selection["trust_hi"] = a["level_f_hi"] * scale
        selection["max_candidates"] = int(a["numb_candi_f"])
        if task_max < a["numb_candi_f"]:
            t.note(f"explore.convergence.numb_candi_f {a['numb_candi_f']} above fp.task_max {task_max}: dpgen2 labels "
                   f"{task_max} of its candidates at random, lamflow all max_candidates")
        convergence["level_tolerance"] = a["conv_tolerance"] * scale
        convergence["consecutive"] = max(1, int(a["n_checked_steps"]) - 1)
    else:
        t.note(f"explore.convergence.type '{kind}': lamflow has fixed trust levels or adaptive-lower")
    if any(k.startswith("level_v") for k in conv):
        t.note("explore.convergence level_v_*: lamflow selects on the force error only")
    if scale == 2.0 and selection.get("trust_hi") is not None:
        t.note("trust levels doubled: with one student lamflow compares its real error against the teacher, "
               "twice dpgen2's deviation of the pair")
    t.config["selection"] = selection
    t.config["convergence"] = convergence
