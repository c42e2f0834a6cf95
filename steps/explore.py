"""explore — MD with LAMMPS and ``pair_style deepmd``, recording the model deviation.

The first model drives the dynamics; every ``trj_freq`` steps LAMMPS also evaluates the other
models and writes their force disagreement to ``model_devi.out`` (DeePMD-kit's standard file).
In distillation the student drives and the teacher is the second model, so the deviation is a
direct measure of the student's error against the teacher (for two models, DeePMD-kit's
``max_devi_f`` is half the largest per-atom force difference).

One task per (temperature, pressure) point, or per combination of the revisions of a user's own
LAMMPS input (``lammps_template``, dpgen2's lmp-template; :mod:`.lammps_input`): ``task.NNN/`` holds ``in.lammps``, ``conf.lmp``,
``traj.dump``, ``model_devi.out``, ``log.lammps`` and ``status.json``. A trajectory that blows up
(lost atoms, NaN) is marked ``failed`` and the step goes on with the next task; one that crashed
(killed by a signal without an error of its own) runs once more first.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from .base import (OutputPath, Params, StructureFormat, TypeMap, barostat_unused, changed_from_default,
                   frames_after_start, positive_kelvin)

from .artifacts import atomic_dir, write_json
from .errors import InputError, LammpsUnavailable, StepFailed
from .runtime import exit_status, lammps_cannot_start, library_env, run_child, signal_name, tail
from . import lammps_input
from .structures import check_overlaps, open_axes, read_atoms, read_system, slab_barostat

log = logging.getLogger(__name__)

#: the MD a lammps_template sets itself: given beside one, they would be ignored without a word
MD_OF_LAMMPS_TEMPLATE = ("ensemble", "temps", "pressures", "nsteps", "dt", "tau_t", "tau_p")


class ExploreSettings(Params):
    """The MD of one exploration; each entry of the distill config's ``iterations`` is this model."""

    ensemble: Literal["nvt", "npt", "nve"] = Field("nvt", description="LAMMPS ensemble: nvt (Nosé-Hoover), npt (also "
                                                                      "a barostat at pressures; a slab's in its "
                                                                      "plane), nve")
    temps: list[float] | None = Field(None, min_length=1, description="K, one MD task each (required, unless "
                                                                      "lammps_template: its revisions make the tasks)")
    pressures: list[float] = Field(default_factory=lambda: [1.0], description="bar; npt only (refused with nvt or nve)")
    nsteps: int = Field(2000, ge=1, description="MD steps per task (timestep dt)")
    trj_freq: int = Field(10, ge=1, description="dump and deviation every N steps")
    dt: float = Field(0.001, gt=0, description="ps")
    tau_t: float = Field(0.1, gt=0, description="ps, thermostat damping")
    tau_p: float = Field(0.5, gt=0, description="ps, barostat damping")
    lammps_template: Path | None = Field(
        None, description="your own LAMMPS input, as dpgen2's lmp-template: lamflow replaces its one "
                          "'pair_style deepmd' line (the models, their deviation every trj_freq steps) and its "
                          "'dump dpgen_dump' line (added when missing), and it must 'read_data conf.lmp'; "
                          "its MD (ensemble, temperatures, steps) is its own (docs/explore-template.md)")
    revisions: dict[str, list[int | float | str]] = Field(
        default_factory=dict, description="with lammps_template: each key is replaced in it by each of its values, "
                                          "one MD task per combination (dpgen2's revisions)")

    _positive = field_validator("temps")(classmethod(lambda cls, v: positive_kelvin(v)))

    @model_validator(mode="after")
    def _frames(self) -> "ExploreSettings":
        """An MD that dumps no frame after its start explores nothing: the loop would judge the
        student on its unmoved starting cell and call that converged."""
        if self.lammps_template is not None:
            own = changed_from_default(self, MD_OF_LAMMPS_TEMPLATE)
            if own:
                them = "them" if len(own) > 1 else "it"
                raise ValueError(f"{', '.join(own)} given with lammps_template, whose own MD would ignore {them}: "
                                 f"set {them} in the template, or vary them through revisions")
            empty = [k for k, v in self.revisions.items() if not v]
            if empty:
                raise ValueError(f"revisions.{empty[0]}: expected a non-empty list of values")
            return self
        if self.revisions:
            raise ValueError("revisions given without lammps_template: they revise your own LAMMPS input")
        if self.temps is None:
            raise ValueError("temps: required (K, one MD task each), unless lammps_template runs your own MD")
        frames_after_start(self.trj_freq, self.nsteps, "explored")
        barostat_unused(self, ("pressures", "tau_p"))
        return self

    def task_points(self) -> list[dict]:
        """What each of the MD tasks run from one starting frame changes: a temperature (pressures
        run inside its task), or, with ``lammps_template``, one combination of ``revisions``."""
        if self.lammps_template is not None:
            return [{"revisions": {k: [v] for k, v in point.items()}}
                    for point in lammps_input.revision_points(self.revisions)]
        return [{"temps": [t]} for t in self.temps]


class ExploreParams(ExploreSettings):
    output: OutputPath
    models: list[Path] = Field(min_length=1, description="first drives the MD; all are compared")
    type_map: TypeMap
    structure: Path = Field(description="the starting cell (any ASE or dpdata format, or LAMMPS data)")
    fmt: StructureFormat = None
    frame: int = Field(0, ge=0, description="which frame of the structure file to start from")
    replicate: tuple[int, int, int] = Field((1, 1, 1), description="supercell of the starting cell along its three "
                                                                   "cell vectors")
    seed: int = Field(1, ge=1, description="velocity seed of the MD (LAMMPS wants it positive)")
    skin: float = Field(1.0, gt=0, description="LAMMPS neighbour-list skin (Å)")
    timeout: float | None = Field(None, gt=0, description="seconds per task")


class ExploreTask(BaseModel):
    path: Path
    temp: float | None = Field(description="K; None for a task of a lammps_template")
    pressure: float | None
    revision: dict[str, str] = Field(default_factory=dict, description="the revisions' values of a lammps_template "
                                                                       "task")
    status: Literal["ok", "failed"]
    reason: str = ""
    crash: str | None = Field(None, description="the signal that killed LAMMPS before it wrote an error of its own "
                                                "(SIGABRT: an abort in a model's library; SIGKILL: the OOM killer or "
                                                "a scheduler): the program crashed. A model that loses atoms or "
                                                "returns NaN ends with a LAMMPS error instead")
    seconds: float = 0.0


class ExploreResult(BaseModel):
    tasks: list[ExploreTask]

    @property
    def ok(self) -> list[ExploreTask]:
        return [t for t in self.tasks if t.status == "ok"]


def _masses(type_map: list[str]) -> str:
    from ase.data import atomic_masses, atomic_numbers

    lines = []
    for i, name in enumerate(type_map, start=1):
        if name not in atomic_numbers:
            raise InputError("type_map", f"'{name}' is not a chemical element; LAMMPS needs its mass")
        lines.append(f"mass            {i} {atomic_masses[atomic_numbers[name]]:.4f}")
    return "\n".join(lines)


def _fix(params: ExploreParams, temp: float, pressure: float | None, open_axes: list[str]) -> str:
    if params.ensemble == "nve":
        return "nve"
    nvt = f"nvt temp {temp} {temp} {params.tau_t}"
    if params.ensemble == "nvt":
        return nvt
    thermostat = f"npt temp {temp} {temp} {params.tau_t}"
    if not open_axes:
        return f"{thermostat} iso {pressure} {pressure} {params.tau_p}"
    # a slab: the in-plane directions (LAMMPS' x and y hold a and b) are barostatted together,
    # the vacuum along c keeps its height, as LAMMPS users run slabs
    return f"{thermostat} x {pressure} {pressure} {params.tau_p} y {pressure} {pressure} {params.tau_p} couple xy"


def _vacuum_axes(params: ExploreParams) -> list[str]:
    """The directions the starting frame's file marks non-periodic, which dpdata's reading drops:
    the barostat must leave them alone."""
    return open_axes(read_atoms(params.structure, params.type_map, params.fmt)[params.frame])


def _inputs(params: ExploreParams, models: list[str]) -> list[tuple[str, ExploreTask]]:
    """Each task's LAMMPS input and what it runs (its record, its result still unknown): from a
    user's ``lammps_template``, or from lamflow's own input (``string.Template`` fields)."""
    models = [_quoted(m) for m in models]
    masses = _masses(params.type_map)  # (and every name of type_map an element, for a template too)
    where = params.output
    if params.lammps_template is not None:
        text = lammps_input.check(params.lammps_template, params.revisions, params.trj_freq)
        return [(lammps_input.render(text, point, models, params.trj_freq),
                 ExploreTask(path=where / f"task.{i:03d}", temp=None, pressure=None,
                             revision={k: str(v) for k, v in point.items()}, status="ok"))
                for i, point in enumerate(lammps_input.revision_points(params.revisions))]
    vacuum = _vacuum_axes(params) if params.ensemble == "npt" else []
    slab_barostat(vacuum, str(params.structure))
    points = [(t, p if params.ensemble == "npt" else None) for t in params.temps
              for p in (params.pressures if params.ensemble == "npt" else [None])]
    md_input = Template(resources.files("lamflow.templates").joinpath("lammps/md.in").read_text())
    return [(md_input.substitute(
        skin=params.skin, masses=masses, models=" ".join(models), trj_freq=params.trj_freq,
        type_names=" ".join(params.type_map), temp=temp, seed=params.seed + i,
        ensemble_fix=_fix(params, temp, pressure, vacuum), dt=params.dt, nsteps=params.nsteps),
        ExploreTask(path=where / f"task.{i:03d}", temp=temp, pressure=pressure, status="ok"))
        for i, (temp, pressure) in enumerate(points)]


def _write_conf(params: ExploreParams, path: Path) -> None:
    system = read_system(params.structure, params.type_map, params.fmt)
    if not 0 <= params.frame < len(system):
        raise InputError(str(params.structure), f"has {len(system)} frames; frame {params.frame} requested")
    if system.nopbc:
        raise InputError(str(params.structure), "exploration needs a periodic cell")
    check_overlaps(system.sub_system([params.frame]).to("ase/structure"), str(params.structure))
    cell = system.sub_system([params.frame])
    if params.replicate != (1, 1, 1):
        cell = cell.replicate(params.replicate)
    cell.to("lammps/lmp", str(path))


def _quoted(path: str) -> str:
    """A path as one word of a LAMMPS input: a folder named ``my runs`` would split it in two."""
    if '"' in path or "$" in path:
        raise InputError(path, "a model path LAMMPS can read has no double quote or $ in it")
    return f'"{path}"'


def _check_models(models: list[Path]) -> list[str]:
    out = []
    for m in models:
        if not Path(m).is_file():
            raise InputError(str(m), "model file not found")
        out.append(str(Path(m).resolve()))
    return out


def error_line(task: Path, proc: subprocess.CompletedProcess) -> str | None:
    """The ``ERROR: ...`` line LAMMPS wrote (log first, then stderr), if it wrote one."""
    text = tail(task / "log.lammps", 40) + "\n" + (proc.stderr or "")
    return next((line.strip() for line in text.splitlines() if "ERROR" in line), None)


def crash_signal(task: Path, proc: subprocess.CompletedProcess) -> str | None:
    """The signal's name when LAMMPS was killed by one without an error of its own: a crash of
    the program (a C++ abort in a model's library, a kill), not a finding about the model."""
    if proc.returncode >= 0 or error_line(task, proc) is not None:
        return None
    return signal_name(proc.returncode)


def lammps_error(task: Path, proc: subprocess.CompletedProcess) -> str:
    """The ``ERROR: ...`` line LAMMPS wrote (log first, then stderr); for a process that died
    without one (a C++ abort inside a model's library, a kill), the signal by name and the last
    line it wrote, which is where torch or the plugin says why ("what(): ...")."""
    line = error_line(task, proc)
    if line is not None:
        return line
    how = f"LAMMPS failed ({exit_status(proc.returncode)})"
    said = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    last = next((line for line in reversed(said) if "what()" in line), said[-1] if said else "")
    return f"{how}: {last[:300]}" if last else how


def reached_first_step(task: Path) -> bool:
    """Whether LAMMPS wrote a deviation row or a dumped frame: a task that failed before (a plugin
    that would not load, a model it could not open, a cell it could not start) found nothing
    about the student."""
    dump = Path(task) / "traj.dump"
    return has_deviation_rows(Path(task) / "model_devi.out") or (dump.is_file() and dump.stat().st_size > 0)


def has_deviation_rows(devi: Path) -> bool:
    """Whether a ``model_devi.out`` holds a row below its header."""
    return devi.is_file() and any(line.strip() and not line.lstrip().startswith("#")
                                  for line in devi.read_text().splitlines())


def _md_failed(task: Path) -> str:
    devi = task / "model_devi.out"
    if has_deviation_rows(devi):
        data = np.loadtxt(devi, ndmin=2)
        if data.size and not np.all(np.isfinite(data)):
            return "model deviation is NaN"
    return ""


def _run_task(task: Path, env: dict[str, str], timeout: float | None) -> tuple[str, str | None]:
    """LAMMPS on one task folder: why it failed (``""`` if it did not) and the crash signal, if any."""
    try:
        proc = run_child([sys.executable, "-m", "lamflow.steps.lammps_runner", "in.lammps"],
                         cwd=task, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s", None
    return ("" if proc.returncode == 0 else lammps_error(task, proc)), crash_signal(task, proc)


def run(params: ExploreParams) -> ExploreResult:
    inputs = _inputs(params, _check_models(params.models))
    why = lammps_cannot_start()
    if why:  # one line, not every task's loader error
        raise LammpsUnavailable(why)
    env = library_env()
    tasks: list[ExploreTask] = []
    with atomic_dir(params.output) as work:
        for text, planned in inputs:
            task = work / planned.path.name
            task.mkdir()
            _write_conf(params, task / lammps_input.CONF)
            (task / "in.lammps").write_text(text)
            t0 = time.perf_counter()
            reason, crash = _run_task(task, env, params.timeout)
            if crash:
                # a crash says nothing about the model (an OOM kill, a preempted or flaky node): the
                # task runs once more before it is recorded as failed, where it would count against
                # the convergence rule like a student that broke
                log.warning("%s: LAMMPS crashed (%s); running the task once more", task.name, reason)
                reason, crash = _run_task(task, env, params.timeout)
            reason = reason or _md_failed(task)
            status = "failed" if reason else "ok"
            record = planned.model_copy(update=dict(status=status, reason=reason[:500], crash=crash,
                                                    seconds=time.perf_counter() - t0))
            write_json(task / "status.json", record.model_dump(mode="json"))
            tasks.append(record)
        if all(t.status == "failed" and t.crash is None and not reached_first_step(work / t.path.name)
               for t in tasks):  # (a crash, a signal without an error of LAMMPS' own, is its callers' to judge)
            # nothing was explored, and nothing about the student learnt: a failure to retry (and
            # to run again once mended), not a result to record and read back
            raise StepFailed(f"no exploration task reached its first MD step ({len(tasks)} failed); "
                             f"first: {tasks[0].path.name}: {tasks[0].reason}")
    return ExploreResult(tasks=tasks)
