"""One line per bad input: pydantic's validation errors in the words users think in.

``iterations[0].temps: expected a list of numbers, got '300K'`` rather than pydantic's
multi-line report; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError

#: dpgen2's (and DP-GEN's) names for what lamflow calls otherwise: a dpgen2 user's first config
#: writes them, and "unknown key" alone would send them to the schema to guess
DPGEN_NAMES = {
    "press": "pressures", "ens": "ensemble", "temp": "temps", "numb_models": "student.count",
    "level_f_lo": "selection.trust_lo", "level_f_hi": "selection.trust_hi",
    "model_devi_f_trust_lo": "selection.trust_lo", "model_devi_f_trust_hi": "selection.trust_hi",
    "conv_accuracy": "convergence.accurate_ratio", "max_numb_iter": "max_iterations",
    "task_max": "selection.max_candidates", "fp_task_max": "selection.max_candidates",
    "stages": "iterations", "model_devi_jobs": "iterations", "sys_configs": "configurations.files",
    "configuration_prefix": "configurations.files", "init_data_sys": "initial_data.systems",
    "conf_idx": "n_sample", "lmp_template_fname": "lammps_template", "lmp_template": "lammps_template",
}


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict, tuple, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _siblings(model: type[BaseModel] | None, loc: tuple) -> set[str]:
    """The keys the model at ``loc``'s parent accepts (empty where the path leaves the models)."""
    current = [model] if model is not None else []
    for part in loc[:-1]:
        fields = [m.model_fields[part].annotation for m in current
                  if isinstance(part, str) and part in m.model_fields]
        if fields:
            current = [m for f in fields for m in _models_in(f)]
        # else a list index, or a dict's key (a step of resources, a dataset's name): its value is
        # the model already reached
        if not current:
            return set()
    return {name for m in current for name in m.model_fields}


def _unknown_key(key, siblings: set[str]) -> str:
    """``unknown key`` with the closest accepted key, or lamflow's name for a dpgen2 key."""
    hint = ""
    if isinstance(key, str) and key in DPGEN_NAMES:
        hint = f" (dpgen2's name; lamflow's is {DPGEN_NAMES[key]})"
    elif isinstance(key, str) and siblings:
        close = difflib.get_close_matches(key, sorted(siblings), n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]}?)"
    return "unknown key" + (hint or " (check the spelling; `lamflow config --schema` lists the keys)")


def _expected(err: dict, model: type[BaseModel] | None = None) -> str:
    kind, msg = err.get("type", ""), err.get("msg", "")
    if kind == "extra_forbidden":
        loc = tuple(err.get("loc", ()))
        return _unknown_key(loc[-1] if loc else None, _siblings(model, loc))
    if kind == "missing":
        return "required but missing"
    if kind in ("list_type", "tuple_type"):
        return "expected a list"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
        return "expected a number"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else kind


def one_line(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """The first error of ``exc`` as ``field: what was expected, got X`` (+ how many more);
    ``model`` (the one validated) lets an unknown key name the closest key it accepts."""
    # an unknown key first: a misspelt key usually also explains a "required but missing" one
    errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
    err = errors[0]
    loc = field_path(tuple(err.get("loc", ())))
    if loc == "(top level)":
        where = prefix
    else:
        where = f"{prefix}.{loc}" if prefix else loc
    got = err.get("input")
    expected = _expected(err, model)
    text = f"{where}: {expected}" if where else expected
    if err.get("type") not in ("missing", "extra_forbidden", "value_error") and not isinstance(got, dict):
        text += f", got {got!r}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text
