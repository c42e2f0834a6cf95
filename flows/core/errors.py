"""One line per bad input: pydantic's validation errors in the words users think in.

``iterations[0].temps: expected a list of numbers, got '300K'`` rather than pydantic's
multi-line report; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

from pydantic import ValidationError


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _expected(err: dict) -> str:
    kind, msg = err.get("type", ""), err.get("msg", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; `lamflow config --schema` lists the keys)"
    if kind == "missing":
        return "required but missing"
    if kind in ("list_type", "tuple_type"):
        return "expected a list"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
        return "expected a number"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else kind


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """The first error of ``exc`` as ``field: what was expected, got X`` (+ how many more)."""
    # an unknown key first: a misspelt key usually also explains a "required but missing" one
    errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
    err = errors[0]
    loc = field_path(tuple(err.get("loc", ())))
    if loc == "(top level)":
        where = prefix
    else:
        where = f"{prefix}.{loc}" if prefix else loc
    got = err.get("input")
    text = f"{where}: {_expected(err)}" if where else _expected(err)
    if err.get("type") not in ("missing", "extra_forbidden", "value_error") and not isinstance(got, dict):
        text += f", got {got!r}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text
