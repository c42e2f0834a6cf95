"""Reference calculators, chosen by name in a config: for labelling and as a distillation teacher.

Built in:
- ``emt``: ASE's effective-medium theory (metals; fast, for demos and tests);
- ``xtb``: GFN2-xTB through ``tblite``, a real quantum-mechanical method that runs on a CPU;
- ``deepmd``: any DeePMD-kit model through ``deepmd.calculator.DP``;
- ``sevenn``: SevenNet-0 (``sevenn``), a universal potential trained on MPtrj (PBE);
- ``chgnet``: CHGNet (``chgnet``), another MPtrj universal potential.

The universal potentials ship their weights inside their wheels, so they need no download at run
time; they come with the ``lam`` extra. Anything else is an import path ``package.module:Class``,
so a user's DFT calculator (VASP, CP2K, ...) plugs in without a line of lamflow code.

:func:`check_calculator` is the cheap half of :func:`make_calculator` (is the name known, is its
package installed) so preflight can refuse a misspelt or missing calculator before any work,
without loading a model's weights.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import InputError, first_sentence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Named:
    """A calculator known by name: the package it needs and how to build it from kwargs."""

    package: str
    build: Callable[[dict[str, Any], str], Any]
    extra: str = ""


def _emt(kwargs, field):
    from ase.calculators.emt import EMT

    return EMT(**kwargs)


def _xtb(kwargs, field):
    from tblite.ase import TBLite

    kwargs.setdefault("method", "GFN2-xTB")
    kwargs.setdefault("verbosity", 0)
    return TBLite(**kwargs)


def _deepmd(kwargs, field):
    from deepmd.calculator import DP

    if "model" not in kwargs:
        raise InputError(f"{field}_kwargs.model", "the 'deepmd' calculator needs a model file")
    return DP(**kwargs)


def _sevenn(kwargs, field):
    from sevenn.calculator import SevenNetCalculator

    kwargs.setdefault("model", "7net-0")
    kwargs.setdefault("device", "cpu")
    return SevenNetCalculator(**kwargs)


def _chgnet(kwargs, field):
    from chgnet.model.dynamics import CHGNetCalculator

    kwargs.setdefault("use_device", "cpu")
    # CHGNet prints its size and device on every load, unasked (a run loads it in every label
    # chunk): the lines would sit between lamflow's step lines, so they go to the debug log
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        calc = CHGNetCalculator(**kwargs)
    log.debug("chgnet: %s", " / ".join(said.getvalue().split("\n")).strip(" /"))
    return calc


NAMED: dict[str, Named] = {
    "emt": Named("ase", _emt),
    "xtb": Named("tblite", _xtb),
    "deepmd": Named("deepmd", _deepmd),
    "sevenn": Named("sevenn", _sevenn, extra="lam"),
    "chgnet": Named("chgnet", _chgnet, extra="lam"),
}
BUILTIN = tuple(NAMED)


def check_calculator(name: str, field: str = "calculator") -> None:
    """One line, before any work, when ``name`` is unknown or its package is not installed."""
    if ":" in name:
        package = name.partition(":")[0].split(".")[0]
        if importlib.util.find_spec(package) is None:
            raise InputError(field, f"cannot import calculator '{name}': no module named '{package}'")
        return
    named = NAMED.get(name)
    if named is None:
        raise InputError(field, f"unknown calculator '{name}'; expected one of {', '.join(BUILTIN)} "
                                "or 'module:Class'")
    if importlib.util.find_spec(named.package) is None:
        hint = f" (pip install 'lamflow[{named.extra}]')" if named.extra else ""
        raise InputError(field, f"calculator '{name}' needs the {named.package} package, which is not "
                                f"installed{hint}")


def known_calculator(name: str | None) -> str | None:
    """Pydantic validator for every ``calculator`` field: a misspelt or missing calculator fails
    when the config or parameters are read, not when labelling starts (None: none chosen)."""
    if name is not None:
        try:
            check_calculator(name)
        except InputError as exc:
            raise ValueError(exc.problem) from None
    return name


def asks_missing_gpu(kwargs: dict[str, Any] | None) -> bool:
    """``kwargs`` put the calculator on a CUDA device (``device: cuda`` / ``cuda:1``, SevenNet's and
    CHGNet's keyword) and this machine has none that torch can use."""
    device = str((kwargs or {}).get("device", ""))
    if not device.startswith("cuda"):
        return False
    import torch

    return not torch.cuda.is_available()


def check_evaluates(name: str, kwargs: dict[str, Any] | None, frames: list[tuple[str, Any]], field: str) -> None:
    """Calculator ``name`` gives finite energies and forces on one frame of each element set among
    ``frames`` (``(file name, Atoms)``), with one line naming ``field`` and the file otherwise. A
    calculator without one of the elements (a universal potential's gaps, EMT's eleven) would
    otherwise be found by the label step, which drops a frame it cannot evaluate (a failed SCF)
    and goes on: it would drop them all, and the run would train on what is left."""
    calc = make_calculator(name, kwargs, field=field)
    seen: set[frozenset[str]] = set()
    for where, atoms in frames:
        elements = frozenset(atoms.get_chemical_symbols())
        if elements in seen:
            continue
        seen.add(elements)
        atoms = atoms.copy()
        atoms.calc = calc
        try:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        except Exception as exc:  # every calculator raises its own types
            raise InputError(field, f"'{name}' could not evaluate {where}: {first_sentence(exc)}") from None
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            raise InputError(field, f"'{name}' returns NaN or infinite values on {where}")


def make_calculator(name: str, kwargs: dict[str, Any] | None = None, field: str = "calculator"):
    """The ASE calculator ``name`` built with ``kwargs``; bad kwargs are one line naming the field."""
    check_calculator(name, field)
    kwargs = dict(kwargs or {})
    if asks_missing_gpu(kwargs):  # else torch's "Found no NVIDIA driver" traceback from deep inside
        raise InputError(f"{field}_kwargs", f"device '{kwargs['device']}' asked, but torch finds no CUDA GPU "
                                            "on this machine; use device: cpu, or run this step on a GPU node")
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise InputError(field, f"cannot import calculator '{name}' ({exc})") from None
        build = lambda kw, f: cls(**kw)  # noqa: E731
    else:
        build = NAMED[name].build
    try:
        return build(kwargs, field)
    except InputError:
        raise
    except TypeError as exc:  # an unexpected keyword: the user's kwargs, not a library bug
        raise InputError(f"{field}_kwargs", f"not accepted by '{name}' ({exc})") from None
    except Exception as exc:
        # building depends on the kwargs alone (a device 'gpu', a model name or file that does not
        # exist): the user's to fix, in one line. Running out of memory is not, and stays retryable.
        if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
            raise
        raise InputError(f"{field}_kwargs", f"'{name}' could not be built with {kwargs}: "
                                            f"{first_sentence(exc)}") from None


def fresh_after_failure(name: str, kwargs: dict[str, Any] | None = None):
    """A new calculator to go on with after one failed on a frame: a calculator keeps state between
    frames (an SCF starts from the last density), and after a failure that state is the failure's.
    Measured (tblite's GFN2-xTB on 16-atom LiF frames from a first student's MD): after one SCF that
    did not converge, the same calculator "converged" the next frame to forces of 1.5e4 eV/Å where
    a fresh one does not converge, then failed on two frames a fresh one labels (2.3 and 12.1 eV/Å):
    frames lost, and wrong labels that are learnt wherever they fall below max_force."""
    return make_calculator(name, kwargs)
