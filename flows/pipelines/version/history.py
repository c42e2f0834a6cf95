"""The version history: ``versions.json`` in the run directory, one typed document.

The DPA homepage's "Version History": which versions exist, what each was trained from and on,
what its model files are (SHA-256, so a deployed model can be traced to its version), and how
it scores on the standard datasets. A dataset that failed verification is listed with its
problems and made no version; a version whose training failed is listed as failed and leaves
the previous one current.

Scores follow LAMBench (OpenLAM's benchmark): per dataset, the energy RMSE per atom after a
per-element shift and the force RMSE, each divided by that of a model that knows only the
composition and capped at 1; across datasets their geometric mean; the version's score is
0.5 Ē + 0.5 F̄ (LAMBench's force-field weights without virials). 0 is perfect, 1 no better
than the dummy model. The raw RMSEs are kept beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from lamflow.steps.artifacts import write_json
from lamflow.steps.errors import InputError
from lamflow.steps.evaluate import EvaluateResult, normalized
from lamflow.steps.stability import StabilityResult

from lamflow.flows.core.artifact_store import ArtifactStore
from lamflow.flows.core.records import Labelling

FILE = "versions.json"


class Score(BaseModel):
    """One version on one standard dataset."""

    dataset: str
    head: str
    n_frames: int
    rmse_e_per_atom: float = Field(description="eV/atom, raw")
    rmse_e_per_atom_shifted: float = Field(description="eV/atom, after the per-element shift")
    rmse_f: float = Field(description="eV/Å")
    normalized_e: float = Field(description="shifted energy RMSE / the dummy model's, capped at 1")
    normalized_f: float = Field(description="force RMSE / the dummy model's (zero forces), capped at 1")
    instability: float | None = Field(None, description="LAMBench's NVE score of the first frame: 0 stable, 5 failed")
    drift_ev_atom_ps: float | None = Field(None, description="its energy drift, true eV/atom/ps")
    us_per_atom_step: float | None = Field(None, description="LAMMPS MD speed in that run")

    @classmethod
    def of(cls, dataset: str, head: str, ev: EvaluateResult, md: StabilityResult | None) -> "Score":
        return cls(dataset=dataset, head=head, n_frames=ev.n_frames, rmse_e_per_atom=ev.rmse_e_per_atom,
                   rmse_e_per_atom_shifted=ev.rmse_e_per_atom_shifted, rmse_f=ev.rmse_f,
                   normalized_e=normalized(ev.rmse_e_per_atom_shifted, ev.dummy_rmse_e_per_atom),
                   normalized_f=normalized(ev.rmse_f, ev.dummy_rmse_f),
                   instability=md.instability if md else None, drift_ev_atom_ps=md.drift_ev_atom_ps if md else None,
                   us_per_atom_step=md.us_per_atom_step if md else None)


def log_average(values: list[float]) -> float | None:
    """LAMBench's average over datasets: the geometric mean (a zero error counts as 1e-12)."""
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values)) if values else None


class Version(BaseModel):
    version: int
    status: Literal["trained", "failed"]
    parent: int | None = Field(description="the version it was fine-tuned from (none: version 1)")
    added: list[str] = Field(description="the datasets this version added (its new branches)")
    branches: dict[str, int] = Field(description="every branch of the model and its training frames")
    replay: float | None = Field(None, description="share of the steps spent on the earlier branches")
    numb_steps: int
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    model: str = Field("", description="the frozen model of the newest branch (dp freeze --head)")
    model_sha256: str = ""
    scores: list[Score] = Field(default_factory=list)
    us_per_atom_step: float | None = Field(None, description="LAMMPS MD speed on the efficiency supercell")
    efficiency_atoms: int | None = Field(None, description="atoms of that supercell")
    error: str = ""

    @property
    def score(self) -> float | None:
        e = log_average([s.normalized_e for s in self.scores])
        f = log_average([s.normalized_f for s in self.scores])
        return None if e is None or f is None else 0.5 * e + 0.5 * f


class Rejected(BaseModel):
    """A dataset that failed verification: no version was made of it."""

    dataset: str
    problems: list[str]


class History(BaseModel):
    name: str
    run_dir: str
    type_map: list[str]
    current: int | None = Field(None, description="the newest trained version")
    versions: list[Version] = Field(default_factory=list)
    rejected: list[Rejected] = Field(default_factory=list)
    status: Literal["running", "done", "failed"] = "running"
    seconds: dict[str, float] = Field(default_factory=dict, description="compute seconds per step kind")
    wall_seconds: float = Field(0.0, description="this session's wall time (not a step kind)")
    labelling: dict[str, Labelling] = Field(default_factory=dict, description="per labelled dataset: the frames "
                                                                              "its calculator was given and those "
                                                                              "it left out, by reason")

    def save(self, run_dir: Path) -> Path:
        """Written after every version, and mirrored to the artifact store when one is set."""
        path = Path(run_dir) / FILE
        write_json(path, self.model_dump(mode="json"))
        store = ArtifactStore.from_env()
        if store is not None:
            store.push(path)
        return path

    def get(self, number: int) -> Version:
        for v in self.versions:
            if v.version == number and v.status == "trained":
                return v
        raise KeyError(number)


def read_history(run_dir: Path) -> History:
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise InputError(str(run_dir), f"has no {FILE}: not the run directory of a `lamflow version` run")
    return History.model_validate(json.loads(path.read_text()))
