"""check_data — is a labelled dataset fit to train on? Problems that would spoil a training, before it starts.

A continual LAM only trains a new version on data that passed verification, and a single NaN
force or a frame in Hartree silently ruins hours of multi-task training. Every file is read with
dpdata (any labelled format it knows, and deepmd/npy folders), and checked:

* errors (the data cannot be trained on): unreadable, no energies or forces, non-finite values,
  elements outside the type map, overlapping atoms (closer than ``overlap_fraction`` of their
  covalent radii), a cell of zero, negative or implausibly small volume;
* warnings (worth a look): energy-per-atom and largest-force outliers by a robust score (median
  and MAD, per composition), duplicate frames, and forces whose typical size suggests another
  unit (Hartree/Bohr, kcal/mol/Å).

Each problem names the file, how many frames it concerns and the first of them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from .artifacts import write_json
from .base import DpdataFormat, Params
from .errors import InputError
from .structures import OVERLAP_FRACTION, deepmd_systems, name_unnamed_types, overlaps, read_labelled

#: per-atom volume (Å^3) below which a periodic cell is not a material (solids: ~5–60)
MIN_VOLUME_PER_ATOM = 1.0
#: the median atomic force (eV/Å) of DFT data off equilibrium (MD, rattled cells: ~0.3–3) lies
#: well inside these; outside, another unit, or (below) frames at equilibrium (relaxations)
FORCE_UNIT_BOUNDS = (0.02, 30.0)


class CheckDataParams(Params):
    paths: list[Path] = Field(min_length=1, description="labelled data: deepmd/npy systems (or folders holding "
                                                        "them) and DFT outputs dpdata reads")
    type_map: list[str] | None = Field(None, description="the run's elements: any other element is an error "
                                                         "(default: any)")
    fmt: DpdataFormat = Field(None, description="dpdata format of every path (default: guessed per path)")
    overlap_fraction: float = Field(OVERLAP_FRACTION, gt=0, lt=1, description="atoms closer than this fraction "
                                                                             "of their covalent radii overlap")
    outlier_score: float = Field(8.0, gt=0, description="robust score (|x − median| / (1.4826 MAD)) above which "
                                                       "a frame's energy per atom or largest force is an outlier")
    output: Path | None = Field(None, description="JSON file for the findings (as a pipeline's step: a dataset's "
                                                  "verification, recorded)")


class Problem(BaseModel):
    path: str
    severity: Literal["error", "warning"]
    check: str
    message: str
    frames: int = Field(description="how many frames it concerns (0: the whole file)")
    first_frame: int | None = None

    def line(self) -> str:
        where = f" (first: frame {self.first_frame})" if self.first_frame is not None else ""
        count = f" in {self.frames} frame{'s' if self.frames != 1 else ''}" if self.frames else ""
        return f"{self.severity}: {self.path}: {self.message}{count}{where}"


class DataSummary(BaseModel):
    path: str
    formula: str
    n_frames: int
    n_atoms: int


class CheckDataResult(BaseModel):
    datasets: list[DataSummary]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def passed(self) -> bool:
        """Fit to train on: no error (warnings are worth a look, not a refusal)."""
        return not self.errors


def _expand(path: Path) -> list[Path]:
    """A folder of deepmd/npy systems is its systems; anything else is itself."""
    if path.is_dir() and not (path / "type.raw").exists():
        found = deepmd_systems(path)
        if found:
            return found
    return [path]


def _frames(mask: np.ndarray) -> tuple[int, int | None]:
    hits = np.flatnonzero(mask)
    return len(hits), (int(hits[0]) if len(hits) else None)


def _robust_outliers(values: np.ndarray, score: float) -> np.ndarray:
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    if mad <= 1e-12 * max(1.0, abs(median)):
        return np.zeros(len(values), dtype=bool)
    return np.abs(values - median) / mad > score


def _check_system(where: str, system, params: CheckDataParams, add) -> None:
    data = system.data
    nf = len(system)
    for key in ("energies", "forces"):
        if key not in data:
            add("error", "labels", f"no {key} (labelled data needs energies and forces)", 0, None)
            return
    if data["forces"].shape != data["coords"].shape:
        add("error", "labels", f"forces of shape {data['forces'].shape}, expected {data['coords'].shape}", 0, None)
        return
    for key in ("coords", "cells", "energies", "forces", "virials"):
        if key in data:
            bad = ~np.isfinite(np.asarray(data[key]).reshape(nf, -1)).all(axis=1)
            if bad.any():
                add("error", "finite", f"NaN or infinite {key}", *_frames(bad))
    names = [n for n, c in zip(data["atom_names"], data["atom_numbs"]) if c]
    if params.type_map is not None:
        unknown = sorted(set(names) - set(params.type_map))
        if unknown:
            add("error", "type_map", f"elements {unknown} are not in type_map {params.type_map}", 0, None)
    natoms = system.get_natoms()
    if not data.get("nopbc", False):
        volume = np.linalg.det(data["cells"])
        bad = ~(volume > MIN_VOLUME_PER_ATOM * natoms)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            add("error", "cell", f"cell volume {volume[k]:.3g} Å^3 for {natoms} atoms (zero, negative or below "
                                 f"{MIN_VOLUME_PER_ATOM} Å^3 per atom)", *_frames(bad))
    finite = np.isfinite(data["coords"]).all() and np.isfinite(data["cells"]).all()
    if finite:
        found = overlaps(system.to("ase/structure"), params.overlap_fraction)
        if found:
            add("error", "overlap", f"overlapping atoms: {found[0][1]}", len(found), found[0][0])
    # warnings
    forces = np.linalg.norm(data["forces"], axis=-1)
    typical = float(np.median(forces[np.isfinite(forces)])) if np.isfinite(forces).any() else None
    if typical is not None and typical < FORCE_UNIT_BOUNDS[0]:
        add("warning", "units", f"median atomic force {typical:.2g}: Hartree/Bohr? (expected eV/Å; "
                                "1 Ha/Bohr = 51.42 eV/Å; fine if these are relaxed structures)", 0, None)
    elif typical is not None and typical > FORCE_UNIT_BOUNDS[1]:
        add("warning", "units", f"median atomic force {typical:.3g}: kcal/mol/Å or kJ/mol/Å? (expected eV/Å; "
                                "1 kcal/mol/Å = 0.0434 eV/Å)", 0, None)
    keys = [hashlib.sha1(np.round(np.concatenate([c.ravel(), b.ravel()]), 6).tobytes()).hexdigest()
            for c, b in zip(data["coords"], data["cells"])]
    seen: dict[str, int] = {}
    dup = np.array([seen.setdefault(k, i) != i for i, k in enumerate(keys)])
    if dup.any():
        add("warning", "duplicates", "frames identical to an earlier one", *_frames(dup))


def _outliers(per_composition: dict[str, list], params: CheckDataParams, add_for) -> None:
    """Energy per atom and largest force, scored against every frame of the same composition."""
    for items in per_composition.values():
        energy = np.concatenate([e for _, e, _ in items])
        fmax = np.concatenate([f for _, _, f in items])
        offsets = np.cumsum([0] + [len(e) for _, e, _ in items])
        for name, values, unit in (("energy per atom", energy, "eV/atom"), ("largest force", fmax, "eV/Å")):
            ok = np.isfinite(values)
            flagged = np.zeros(len(values), dtype=bool)
            flagged[ok] = _robust_outliers(values[ok], params.outlier_score)
            median = float(np.median(values[ok])) if ok.any() else float("nan")
            for (where, _, _), lo, hi in zip(items, offsets[:-1], offsets[1:]):
                part = flagged[lo:hi]
                if part.any():
                    k = int(np.flatnonzero(part)[0])
                    add_for(where, "warning", "outlier",
                            f"{name} {values[lo + k]:.4g} {unit} far from its composition's median "
                            f"{median:.4g} (robust score > {params.outlier_score:g})", *_frames(part))


def run(params: CheckDataParams) -> CheckDataResult:
    problems: list[Problem] = []
    summaries: list[DataSummary] = []
    per_composition: dict[str, list] = defaultdict(list)

    def add_for(where: str, severity: str, check: str, message: str, frames: int, first: int | None) -> None:
        problems.append(Problem(path=where, severity=severity, check=check, message=message, frames=frames,
                                first_frame=first))

    for root in params.paths:
        for path in _expand(Path(root)):
            where = str(path)
            try:
                systems = read_labelled(path, None, params.fmt)
                for system in systems if params.type_map is not None else ():
                    name_unnamed_types(system, path, params.type_map)
            except InputError as exc:
                add_for(where, "error", "read", exc.problem, 0, None)
                continue
            for system in systems:
                _summarise(where, system, params, add_for, summaries, per_composition)
    _outliers(per_composition, params, add_for)
    result = CheckDataResult(datasets=summaries, problems=problems)
    if params.output is not None:
        write_json(params.output, result.model_dump(mode="json"))
    return result


def _summarise(where: str, system, params: CheckDataParams, add_for, summaries: list[DataSummary],
               per_composition: dict[str, list]) -> None:
    """One system's checks, its summary line, and its frames among those of its composition."""
    _check_system(where, system, params, lambda *a: add_for(where, *a))
    summaries.append(DataSummary(path=where, formula=system.formula, n_frames=len(system),
                                 n_atoms=system.get_natoms()))
    data = system.data
    if "energies" in data and "forces" in data and data["forces"].shape == data["coords"].shape:
        energy = np.asarray(data["energies"], dtype=float) / system.get_natoms()
        fmax = np.linalg.norm(data["forces"], axis=-1).max(axis=1)
        per_composition[system.formula].append((where, energy, fmax))


def check_or_raise(paths: list[Path], type_map: list[str], field: str, fmt: str | None = None) -> None:
    """The errors of :func:`run` as one line (preflight: a run whose data would spoil its
    training stops before any work); warnings are not errors."""
    result = run(CheckDataParams(paths=paths, type_map=type_map, fmt=fmt))
    if result.errors:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more problem(s): lamflow dataset check)" if len(result.errors) > 1 else ""
        where = f", first: frame {first.first_frame}" if first.first_frame is not None else ""
        count = f" in {first.frames} frame(s){where}" if first.frames else ""
        raise InputError(f"{first.path} ({field})", f"{first.message}{count}{more}")
