"""The model-versions config: a continual LAM in one YAML file.

Version 1 is a multi-task training on the ``pretrain`` datasets (one shared descriptor, a
fitting net per dataset). Each entry of ``versions`` adds one dataset: if it passes
verification (``lamflow dataset check``'s errors), version N+1 is trained from version N by
DeePMD-kit's multi-task fine-tuning with a new branch, while the earlier branches keep training
on their data for a ``replay`` share of the steps, so that the model does not forget them.
Every version is scored on every ``benchmarks`` dataset. Adding a dataset to a run is adding an
entry and running the config again: finished versions are read back from their records.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from lamflow.steps.base import TypeMap, check_type_map
from lamflow.steps.dp_input import deep_merge
from lamflow.steps.speed import SupercellSpeed
from lamflow.steps.stability import StabilitySettings
from lamflow.steps.train import RANDOM_BRANCH as RANDOM
from lamflow.steps.train import check_input

from lamflow.flows.core.config import RunConfig, Section, check_exist
from lamflow.flows.executors import check_executors

from ..datasets import Dataset, check_names
from ..lam.config import MultiTask


class NewVersion(Section):
    """One dataset joining the model: the next version, if the dataset passes verification."""

    dataset: str = Field(description="the dataset the new version adds (a new branch of the model)")
    start_from: str | None = Field(None, description="the branch of the previous version whose fitting net the new "
                                                     "branch starts from, or RANDOM (default: the first branch)")
    replay: float = Field(0.3, gt=0, lt=1, description="share of the training steps on the earlier branches' "
                                                       "data, so the model does not forget them (model_prob)")
    numb_steps: int = Field(1000, ge=1, description="training steps of this version (the learning rate restarts)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged over pretrain.overrides for "
                                                                        "this version (a fine-tuning learning rate)")


class Benchmark(Section):
    """A standard dataset every version is tested on (never trained on)."""

    dataset: str = Field(description="the labelled dataset scored")
    head: str | None = Field(None, description="the branch (fitting net) that predicts it (default: the first "
                                               "branch of version 1)")


class Efficiency(SupercellSpeed):
    """Each version's speed as LAMBench measures efficiency: µs per atom per step on a cell of
    800-1000 atoms (here MD in LAMMPS, on the first benchmark's first frame made a supercell)."""

    atoms: int = Field(800, ge=1, description="the supercell has at least this many atoms")


class VersionConfig(RunConfig):
    pipeline_name: ClassVar[str] = "version"

    name: str = Field("lam-versions", description="the run's name: its default run directory runs/<name>")
    type_map: TypeMap = Field(description="every element any version will see: fixed from version 1 on, so adding "
                                          "a dataset never changes the shared descriptor's element statistics")
    datasets: list[Dataset] = Field(min_length=1)
    pretrain: MultiTask = Field(description="version 1: multi-task training on pretrain.datasets")
    versions: list[NewVersion] = Field(default_factory=list, description="each a dataset added as a new version, "
                                                                         "in order")
    benchmarks: list[Benchmark] = Field(default_factory=list, description="standard datasets every version is "
                                                                          "scored on")
    efficiency: Efficiency | None = Field(default_factory=Efficiency, description="MD speed of every version on "
                                          "a supercell of the first benchmark; null: none")
    stability: StabilitySettings | None = Field(
        default_factory=StabilitySettings, description="NVE MD of each benchmark's first frame with every version "
                                                       "(energy drift, speed); null: none")

    @model_validator(mode="after")
    def _check(self) -> "VersionConfig":
        check_type_map(self.type_map)
        check_names(self.datasets, [])
        if not self.pretrain.datasets:
            raise ValueError("pretrain.datasets: name the datasets of version 1")
        check_names(self.datasets, [*((f"pretrain.datasets[{i}]", n) for i, n in enumerate(self.pretrain.datasets)),
                                    *((f"versions[{i}].dataset", v.dataset) for i, v in enumerate(self.versions)),
                                    *((f"benchmarks[{i}].dataset", b.dataset) for i, b in enumerate(self.benchmarks))])
        branches = list(self.pretrain.datasets)
        for i, v in enumerate(self.versions):
            if v.dataset in branches:
                raise ValueError(f"versions[{i}].dataset: '{v.dataset}' is already a branch of an earlier version")
            if v.start_from not in (None, RANDOM) and v.start_from not in branches:
                raise ValueError(f"versions[{i}].start_from: '{v.start_from}' is not a branch of the previous "
                                 f"versions {branches} nor {RANDOM}")
            branches.append(v.dataset)
        seen = set()
        for i, b in enumerate(self.benchmarks):
            key = (b.dataset, self.benchmark_head(b))
            if key in seen:
                raise ValueError(f"benchmarks[{i}]: '{b.dataset}' through head '{key[1]}' is listed twice")
            seen.add(key)
            if b.dataset in branches:
                raise ValueError(f"benchmarks[{i}].dataset: '{b.dataset}' is trained on; a benchmark must be "
                                 "held out")
            if b.head is not None and b.head not in branches:
                raise ValueError(f"benchmarks[{i}].head: '{b.head}' is not a branch of any version {branches}")
        return self

    def dataset(self, name: str) -> Dataset:
        return next(d for d in self.datasets if d.name == name)

    def version_overrides(self, spec: NewVersion) -> dict[str, Any]:
        """A version's input is version 1's, with its own overrides on top (same model, so the
        checkpoint's tensors fit; another learning rate or loss)."""
        return deep_merge(self.pretrain.overrides, spec.overrides)

    def benchmark_head(self, bench: Benchmark) -> str:
        return bench.head or self.pretrain.datasets[0]

    def benchmark_name(self, bench: Benchmark) -> str:
        """Its files' name: the dataset, and the head when the dataset is scored through several."""
        heads = {self.benchmark_head(b) for b in self.benchmarks if b.dataset == bench.dataset}
        return bench.dataset if len(heads) == 1 else f"{bench.dataset}.{self.benchmark_head(bench)}"


def preflight(cfg: VersionConfig) -> None:
    """Every file the run names, the DeePMD-kit inputs of every version, and the data given as
    they are of version 1 and of the benchmarks. A later version's dataset is not refused here:
    verification decides whether it becomes a version (and the versions before it still do)."""
    check_files(cfg)
    for name in [*cfg.pretrain.datasets, *(b.dataset for b in cfg.benchmarks)]:
        cfg.dataset(name).check(cfg)
    check_executors(cfg)
    check_input(cfg.pretrain.template, cfg.pretrain.overrides, cfg.type_map, cfg.pretrain.numb_steps,
                branches=cfg.pretrain.datasets, where="pretrain.overrides")
    branches = list(cfg.pretrain.datasets)
    for i, v in enumerate(cfg.versions):
        branches.append(v.dataset)
        check_input(cfg.pretrain.template, cfg.version_overrides(v), cfg.type_map, v.numb_steps,
                    branches=branches, where=f"versions[{i}].overrides")


def check_files(cfg: VersionConfig) -> None:
    """Every file the run names exists (a replay's only check: preflight ran at its start)."""
    check_exist([f for d in cfg.datasets for f in d.files()])

