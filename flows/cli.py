"""The ``lamflow`` command.

Every bad input ends in one line on stderr and exit code 2 (``--debug`` shows the traceback);
a failing library call (dp, LAMMPS) ends with its log's tail and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lamflow.steps.errors import InputError, StepFailed

from .errors import one_line


def _load_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(str(path), "file not found")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(str(path), f"is not valid YAML/JSON{where}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "expected a mapping of keys to values")
    return data


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError("--set", f"expected key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def cmd_step(args: argparse.Namespace) -> int:
    from lamflow.steps.dp_input import deep_merge
    from lamflow.steps.registry import STEPS

    step = STEPS[args.name]
    raw = _load_mapping(Path(args.params)) if args.params else {}
    raw = deep_merge(raw, _parse_sets(args.set or []))
    try:
        params = step.params.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"step {args.name}", one_line(exc)) from None
    result = step.run(params)
    text = result.model_dump_json(indent=2)
    if args.result:
        Path(args.result).write_text(text)
    print(text)
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from lamflow.steps.dp_input import load_template, template_names

    if args.name:
        print(json.dumps(load_template(args.name), indent=2))
    else:
        print("\n".join(template_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lamflow.steps.registry import STEPS

    parser = argparse.ArgumentParser(prog="lamflow", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("step", help="run one step (how a container on Kubernetes calls it)")
    p.add_argument("name", choices=sorted(STEPS))
    p.add_argument("--params", help="YAML/JSON file with the step's parameters")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set/override a parameter")
    p.add_argument("--result", help="also write the result JSON here")
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("templates", help="list the DeePMD-kit templates, or print one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_templates)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"lamflow: error: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        if args.debug:
            raise
        print(f"lamflow: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
