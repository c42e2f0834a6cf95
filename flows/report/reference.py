"""The input reference (``docs/input.md``), generated from the pydantic models, never by hand.

Every key of every pipeline config and of every step's parameters, with its type, default and
meaning (units are in the descriptions), rendered from the same models that validate the input
— DeePMD-kit's argcheck tree does the same for its JSON. ``lamflow config --reference`` prints
it; a test fails when ``docs/input.md`` and the models disagree.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Input reference

Generated from lamflow's pydantic models by `lamflow config --reference` (do not edit by hand:
`tests/unit/test_reference.py` fails when this page and the code disagree). Keys nest as in
the YAML; `a.b` is key `b` inside mapping `a`, `a[].b` inside each item of list `a`,
`a.<name>.b` inside each entry of mapping `a` (e.g. `resources.train.gpu`). A key
without a default is required. Units are in the meaning column (eV/Å for forces, K, bar, fs,
steps). Unknown keys are refused with one line naming them.
"""


def _type(annotation: Any) -> str:
    """A short, readable type: ``list[path]``, ``float | none``, ``nvt | npt``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list[{', '.join(_type(a) for a in args if a is not Ellipsis) or 'any'}]"
    if origin is dict:
        return f"mapping[{_type(args[0])}, {_type(args[1])}]" if args else "mapping"
    if annotation is type(None):
        return "none"
    if annotation is Path:
        return "path"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " | ".join(str(m.value) for m in annotation)
        if issubclass(annotation, BaseModel):
            return "mapping (below)"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    text = json.dumps(value, default=str)
    return f"`{text}`"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field holds (directly, in a list, or in an optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += [m for m in _models(arg) if m not in out]
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_table(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Rows of ``model``'s keys, then the tables of the models nested in it."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}{key}"
        subs = _models(field.annotation)
        meaning = field.description or (subs and (subs[0].__doc__ or "").strip().split("\n\n")[0]) or ""
        rows.append(f"| `{path}` | {_cell(_type(field.annotation))} | {_cell(_default(field))} | {_cell(meaning)} |")
        shapes = {typing.get_origin(a) for a in (field.annotation, *typing.get_args(field.annotation))}
        for sub in subs:
            nested.append((f"{path}[]." if list in shapes else f"{path}.<name>." if dict in shapes else f"{path}.", sub))
    lines = ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for sub_prefix, sub in nested:
        doc = (sub.__doc__ or "").strip().split("\n\n")[0]
        lines += [f"#### `{sub_prefix.rstrip('.').removesuffix('[]')}`", "", *([_cell(doc), ""] if doc else []),
                  *model_table(sub, sub_prefix)]
    return lines


def render() -> str:
    """The whole reference: every pipeline's config, then every step's parameters."""
    from lamflow.flows.pipelines import PIPELINES
    from lamflow.steps.registry import STEPS

    lines = [HEADER, "## Pipeline configs", ""]
    for name, pipeline in PIPELINES.items():
        lines += [f"### `lamflow {name}` ({pipeline.config.__name__})", "", _cell(pipeline.doc), "",
                  *model_table(pipeline.config)]
    lines += ["## Step parameters", "",
              "What `lamflow step NAME --set key=value` takes, and what the pipelines fill in.", ""]
    for name, spec in sorted(STEPS.items()):
        lines += [f"### `{name}` ({spec.params.__name__})", "", _cell(spec.doc), "", *model_table(spec.params)]
    return "\n".join(lines).rstrip() + "\n"
