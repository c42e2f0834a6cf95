"""The base of every pipeline's config: one YAML file, validated field by field.

Relative paths are resolved against the config file's folder, so a config and its data can be
moved together. Every model forbids unknown keys: a misspelt ``trust_hi`` fails at load time
with ``selection.trust_hgh: unknown key`` instead of silently running a day with the default.
Pipelines subclass :class:`RunConfig`; what a section shares with a step is not declared here
but inherited from the step's settings model (``lamflow.steps.select.SelectSettings``, ...).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lamflow.steps.errors import InputError
from lamflow.steps.registry import STEPS

from .errors import one_line
from .resources import LIGHT_STEPS, Resources


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: keys whose string values are paths (resolved against the config's folder) ...
PATH_KEYS = frozenset({"model", "workdir", "template", "lammps_template"})
#: ... keys whose list values are paths ...
PATH_LIST_KEYS = frozenset({"files", "structures", "systems", "data"})
#: ... and keys whose values are handed to a library as they are
OPAQUE_KEYS = frozenset({"overrides", "calculator_kwargs", "revisions"})


def map_paths(node: Any, change: Callable[[str, str], str]) -> Any:
    """A raw config with every path it names (the values of :data:`PATH_KEYS`, the items of
    :data:`PATH_LIST_KEYS`) replaced by ``change(key, path)``: the one place that knows which
    values of a config are paths (resolving them here, staging them for a cluster)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in OPAQUE_KEYS:
                out[key] = value
            elif key in PATH_KEYS and isinstance(value, str):
                out[key] = change(key, value)
            elif key in PATH_LIST_KEYS and isinstance(value, list):
                out[key] = [c for v in value for c in _as_list(change(key, v) if isinstance(v, str) else v)]
            else:
                out[key] = map_paths(value, change)
        return out
    if isinstance(node, list):
        return [map_paths(v, change) for v in node]
    return node


def is_pattern(path: str) -> bool:
    """Whether ``path`` is a shell pattern (``*``, ``?``, ``[…]``) for :func:`glob.glob`."""
    return any(c in path for c in "*?[")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def resolve_paths(node: Any, base: Path) -> Any:
    """Every relative path in a raw config made relative to the config file's folder; a pattern
    in a list of paths (``confs/POSCAR_*``, ``data/*/``, as dpgen2's configuration ``files``
    take them) becomes the files it matches, sorted."""
    def change(key: str, value: str) -> str | list[str]:
        path = _path(value, base, template=(key == "template"))
        if key in PATH_LIST_KEYS and is_pattern(path):
            return sorted(glob.glob(path)) or path  # no match: check_exist names the pattern
        return path

    return map_paths(node, change)


def _path(value: str, base: Path, template: bool = False) -> str:
    if template and not (value.endswith(".json") or "/" in value):
        return value  # a template name, not a path
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) file whose top level is a mapping, or one clear line naming the file.

    A ``.json`` file is read as JSON: YAML 1.1 (PyYAML) reads JSON's ``1e-05`` as a string, which
    broke a batch job's parameters (written as JSON by the submitter) on such a learning rate."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(str(path), f"is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise InputError(str(path), "expected a mapping at the top level")
        return raw
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(str(path), f"is not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    if not isinstance(raw, dict):
        raise InputError(str(path), "expected a mapping at the top level")
    return raw


C = TypeVar("C", bound="RunConfig")


class RunConfig(Section):
    """What every pipeline's config has: a name, a seed, how many steps run at once, per-step
    resources and where the run directory is."""

    #: the pipeline this config is for (``pipeline:`` in the YAML, optional)
    pipeline_name: ClassVar[str] = ""

    seed: int = Field(1, description="seed of every random choice of the run (perturbations, MD velocities, "
                                     "selection, training)")
    max_workers: int = Field(1, ge=1, description="steps run at once on the machine of the flow (local engine, "
                             "embedded Prefect, dflow debug mode); a cluster is paced by its own limits")
    resources: dict[str, Resources] = Field(
        default_factory=dict, description="per step name, and 'default': threads, cpu, memory, gpu, retries, ...")
    workdir: Path | None = Field(None, description="run directory (default: $LAMFLOW_RUNS/<name>, else runs/<name>)")

    @field_validator("resources")
    @classmethod
    def _known_steps(cls, v: dict[str, Resources]) -> dict[str, Resources]:
        unknown = sorted(set(v) - set(STEPS) - {"default"})
        if unknown:
            raise ValueError(f"unknown steps {unknown}; expected 'default' or {sorted(STEPS)}")
        return v

    def resources_for(self, step: str) -> Resources:
        """The step's own entry, else ``default``. A batch executor given in ``default`` is not
        applied to the seconds-long steps (:data:`LIGHT_STEPS`): a queue wait would cost more than
        they do; name them to send them too."""
        if step in self.resources:
            return self.resources[step]
        default = self.resources.get("default") or Resources()
        if step in LIGHT_STEPS and default.executor is not None:
            return default.model_copy(update={"executor": None})
        return default

    def run_dir(self, workdir: str | Path | None = None) -> Path:
        """``workdir`` if given, else the config's ``workdir``, else ``$LAMFLOW_RUNS/<name>`` (``runs/<name>``)."""
        return Path(workdir or self.workdir or Path(os.environ.get("LAMFLOW_RUNS", "runs")) / self.name)

    @classmethod
    def parse(cls: type[C], raw: dict[str, Any], base: Path, source: str = "config") -> C:
        """Validate a raw mapping whose relative paths are relative to ``base``."""
        raw = {k: v for k, v in raw.items() if k != "pipeline"}
        try:
            return cls.model_validate(resolve_paths(raw, base))
        except ValidationError as exc:
            raise InputError(source, one_line(exc, model=cls)) from None

    @classmethod
    def load(cls: type[C], path: Path) -> C:
        path = Path(path)
        return cls.parse(read_mapping(path), path.resolve().parent, str(path))


def check_exist(needed: list[tuple[str, Path | None]]) -> None:
    """Fail before any work when a file the run needs is missing: ``field: file not found: PATH``."""
    for field, path in needed:
        if path is not None and not Path(path).exists():
            if is_pattern(str(path)):
                raise InputError(field, f"no file matches {path}")
            raise InputError(field, f"file not found: {path}")
