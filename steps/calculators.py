"""Reference calculators for the label step, chosen by name in a config.

Built in: ``emt`` (ASE's effective-medium theory: metals, fast, for demos and tests),
``xtb`` (GFN2-xTB through ``tblite``: a real quantum-mechanical method that runs on a CPU) and
``deepmd`` (any DeePMD-kit model through ``deepmd.calculator.DP``). Anything else is an import
path ``package.module:Class`` so that a user's DFT calculator (VASP, CP2K, ...) plugs in without
a line of lamflow code.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import InputError

BUILTIN = ("emt", "xtb", "deepmd")


def make_calculator(name: str, kwargs: dict[str, Any] | None = None, field: str = "calculator"):
    kwargs = dict(kwargs or {})
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**kwargs)
    if name == "xtb":
        try:
            from tblite.ase import TBLite
        except ImportError as exc:  # pragma: no cover - tblite is a core dependency
            raise InputError(field, f"'xtb' needs the tblite package ({exc})") from None
        kwargs.setdefault("method", "GFN2-xTB")
        kwargs.setdefault("verbosity", 0)
        return TBLite(**kwargs)
    if name == "deepmd":
        from deepmd.calculator import DP

        if "model" not in kwargs:
            raise InputError(f"{field}_kwargs.model", "the 'deepmd' calculator needs a model file")
        return DP(**kwargs)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise InputError(field, f"cannot import calculator '{name}' ({exc})") from None
        return cls(**kwargs)
    raise InputError(
        field, f"unknown calculator '{name}'; expected one of {', '.join(BUILTIN)} or 'module:Class'"
    )
