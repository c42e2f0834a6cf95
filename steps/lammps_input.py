"""A user's own LAMMPS input for exploration, in dpgen2's ``lmp-template`` convention.

A dpgen2 user who explores with a hand-written LAMMPS input (a custom fix, a deposition, a
shear, a temperature ramp) already has one that follows dpgen2's rules, and should be able to
bring it as it is rather than learn a second template language. LAMMPS' own ``$x`` and ``${x}``
variables stay untouched (a ``string.Template`` would take them for its fields), so lamflow
revises the input by the same lines dpgen2 revises (dpgen2/exploration/task/lmp_template_task_group.py):

- the one ``pair_style deepmd ...`` line becomes the models being compared, with their
  deviation written every ``trj_freq`` steps to ``model_devi.out``;
- the one ``dump dpgen_dump ...`` line (added before the first ``run`` when there is none)
  becomes the trajectory every ``trj_freq`` steps that selection reads (``traj.dump``);
- every key of ``revisions`` is replaced, as text, by one of its values; each combination of
  values is one MD task;
- the input must ``read_data conf.lmp``: the starting cell lamflow writes, with the elements'
  masses (a template's own ``mass`` lines, read later, win).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from .errors import InputError

#: the starting cell lamflow writes into each task, which a template reads (dpgen2's name too)
CONF = "conf.lmp"
DUMP_ID = "dpgen_dump"


def _words(line: str) -> list[str]:
    return line.split("#", 1)[0].split()


def _find(lines: list[str], key: list[str], where: str, required: bool = True) -> int | None:
    found = [i for i, line in enumerate(lines) if _words(line)[:len(key)] == key]
    if len(found) > 1:
        raise InputError(where, f"has {len(found)} '{' '.join(key)}' lines (lines "
                                f"{', '.join(str(i + 1) for i in found)}); lamflow replaces exactly one")
    if not found and required:
        raise InputError(where, f"has no '{' '.join(key)}' line: lamflow replaces it with the models being "
                                "compared and their deviation output (dpgen2's lmp-template convention)")
    return found[0] if found else None


def revision_points(revisions: dict[str, list]) -> list[dict]:
    """One mapping key → value per MD task: every combination of the revisions' values, in the
    order dpgen2 enumerates them (the first key varies slowest)."""
    keys = list(revisions)
    return [dict(zip(keys, values)) for values in itertools.product(*(revisions[k] for k in keys))]


def revise(text: str, point: dict) -> str:
    """The template with each revision key replaced by its value. Longer keys go first, so that a
    key that is the start of another (``V_T`` and ``V_TEMP``) does not eat into it."""
    for key in sorted(point, key=len, reverse=True):
        text = text.replace(key, str(point[key]))
    return text


def run_steps(text: str) -> int | None:
    """The MD steps the input's ``run`` lines ask for, or None where one of them is not a number
    (a LAMMPS variable)."""
    total = 0
    for line in text.splitlines():
        words = _words(line)
        if words[:1] == ["run"]:
            if len(words) < 2 or not words[1].isdigit():
                return None
            total += int(words[1])
    return total


def check(path: Path, revisions: dict[str, list], trj_freq: int, prefix: str = "") -> str:
    """Everything that can be known before any MD: the file, its lines lamflow revises, the
    revision keys it holds, and whether its MD dumps a frame after the start. One line, naming
    the template or the key (``prefix``: where the settings sit in a config), for each problem.
    The template's text, once it passes (what :func:`render` revises).

    Not a validator of the settings model: a cluster run validates the model where the file is
    not (yet) there, so the pipelines call this before any work and the step before its MD."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{prefix}lammps_template", f"file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"cannot be read as a LAMMPS input ({exc})") from None
    lines = text.splitlines()
    _find(lines, ["pair_style", "deepmd"], str(path))
    _find(lines, ["dump", DUMP_ID], str(path), required=False)
    if not any(_words(line)[:2] == ["read_data", CONF] for line in lines):
        raise InputError(str(path), f"has no 'read_data {CONF}' line: each task's starting cell is written to {CONF}")
    for key in revisions:
        if key not in text:
            raise InputError(f"{prefix}revisions.{key}", f"does not occur in {path.name}: each of its values would "
                                                         "run the same MD")
    for point in revision_points(revisions):
        revised = revise(text, point)
        if not any(_words(line)[:1] == ["run"] for line in revised.splitlines()):
            raise InputError(str(path), "has no 'run' line: it explores nothing")
        steps = run_steps(revised)
        if steps is not None and steps < trj_freq:
            raise InputError(str(path), f"runs {steps} MD steps{f' with {point}' if point else ''}, fewer than "
                                        f"trj_freq ({trj_freq}): no frame would be explored")
    return text


def render(text: str, point: dict, models: list[str], trj_freq: int) -> str:
    """The LAMMPS input of one task: ``text`` (a template :func:`check` accepted) revised by
    ``point``, with the models and the trajectory dump lamflow's selection needs."""
    lines = revise(text, point).splitlines()
    lines[_find(lines, ["pair_style", "deepmd"], "lammps_template")] = (
        f"pair_style      deepmd {' '.join(models)} out_freq {trj_freq} out_file model_devi.out")
    dump = [f"dump            {DUMP_ID} all custom {trj_freq} traj.dump id type x y z fx fy fz",
            f"dump_modify     {DUMP_ID} sort id"]
    at = _find(lines, ["dump", DUMP_ID], "lammps_template", required=False)
    if at is None:
        at = next(i for i, line in enumerate(lines) if _words(line)[:1] == ["run"])
        lines[at:at] = dump
    else:
        lines[at:at + 1] = dump
    return "\n".join(lines) + "\n"
