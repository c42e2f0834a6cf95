"""Reading structures and labelled data, in every format users bring, through dpdata and ASE.

Users arrive with extxyz trajectories, POSCARs, LAMMPS data or dump files, or DeePMD-kit
``deepmd/npy`` folders. One function turns any of them into ASE ``Atoms`` (for calculators and
LAMMPS inputs) and one into dpdata systems (for training data), so no step parses formats itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import InputError


#: DeePMD-kit's mixed-type systems (dpgen2 and ``dp`` write them): frames of several compositions
#: in one folder, their atoms' types per frame in ``set.*/real_atom_types.npy``
MIXED = "deepmd/npy/mixed"


def guess_format(path: Path) -> str:
    """Guess the format from the path; ``ase`` means "let ASE decide".

    DFT outputs are named the way their codes name them (``OUTCAR``, ``vasprun.xml``, an ABACUS
    folder with ``INPUT`` and ``OUT.*``); a CP2K or QE log has no telling name, so those need
    ``fmt``.
    """
    if path.is_dir():
        if (path / "type.raw").exists():
            if any(path.glob("set.*/real_atom_types.npy")):
                return MIXED  # its type.raw is a placeholder: read as deepmd/npy, every atom is one element
            return "deepmd/npy" if any(path.glob("set.*")) else "deepmd/raw"
        if (path / "INPUT").exists() and any(path.glob("OUT.*")):
            return "abacus/scf"
        raise InputError(str(path), "is a folder but neither a deepmd/npy system (no type.raw) nor an ABACUS run "
                                    "(INPUT and OUT.*); give fmt for other dpdata formats")
    name = path.name.lower()
    if name.endswith((".lmp", ".data")) or name.startswith("data."):
        return "lammps/lmp"
    if name.endswith((".dump", ".lammpstrj")):
        return "lammps/dump"
    if name.startswith("outcar") or name.endswith("outcar"):
        return "vasp/outcar"
    if name.startswith("vasprun") and name.endswith(".xml"):
        return "vasp/xml"
    return "ase"


def check_format(fmt: str | None) -> str | None:
    """``fmt`` if dpdata (or lamflow's ``ase``/``extxyz``) reads it; else one line with the nearest names."""
    if fmt is None or fmt in ("ase", "extxyz"):
        return fmt
    from dpdata.format import Format

    known = Format.get_formats()
    if fmt.lower() not in known:
        import difflib

        near = difflib.get_close_matches(fmt.lower(), sorted(known), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else " (see dpdata's list of formats)"
        raise ValueError(f"'{fmt}' is not a dpdata format{hint}")
    return fmt


def _labelled(path: Path, fmt: str) -> bool:
    """Whether ``path`` holds labels: the format only reads labelled data (an OUTCAR, a CP2K
    log), or a deepmd folder has energies. dpdata's own format registry says which formats
    read only labelled data, so a code dpdata learns to read needs no change here."""
    if fmt.startswith("deepmd/"):
        return any(path.glob("set.*/energy.npy") if fmt in ("deepmd/npy", MIXED) else path.glob("energy.raw"))
    from dpdata.format import Format

    cls = Format.get_formats().get(fmt.lower())
    return (cls is not None and cls.from_labeled_system is not Format.from_labeled_system
            and cls.from_system is Format.from_system)


def _check_exists(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "file not found")
    return path


def read_atoms(path: Path, type_map: list[str], fmt: str | None = None) -> list:
    """All frames of ``path`` as a list of ``ase.Atoms``."""
    import ase.io

    path = _check_exists(path)
    fmt = fmt or guess_format(path)
    if fmt == "ase":
        try:
            frames = ase.io.read(str(path), index=":")
        except Exception as exc:  # ASE raises many types for unreadable files
            raise InputError(str(path), f"could not be read as a structure file ({exc})") from None
        frames = frames if isinstance(frames, list) else [frames]
        check_ordered(frames, path)
    else:
        frames = read_system(path, type_map, fmt).to("ase/structure")
    if not frames:
        raise InputError(str(path), "contains no structure")
    unknown = sorted({s for a in frames for s in a.get_chemical_symbols()} - set(type_map))
    if unknown:
        raise InputError(str(path), f"has elements {unknown} that are not in type_map {type_map}")
    return frames


def check_ordered(frames: list, path: Path) -> None:
    """A CIF with partially occupied sites (a disordered alloy, a site with vacancies) is read by
    ASE with one species per site, silently: Cu0.5Au0.5 on every site of fcc became ordered AuCu3.
    MD needs an ordered cell, and which one is the user's physics: one line saying so."""
    for atoms in frames:
        partial = [(site, occ) for site, occ in (atoms.info.get("occupancy") or {}).items()
                   if len(occ) > 1 or abs(sum(occ.values()) - 1) > 1e-3]
        if partial:
            site, occ = partial[0]
            shares = " + ".join(f"{el} {x:g}" for el, x in occ.items())
            raise InputError(str(path), f"has {len(partial)} partially occupied site(s) (site {site}: {shares}), "
                                        "which ASE reads as one species each, not your composition; give an "
                                        "ordered cell (a supercell with the species placed: pymatgen's "
                                        "OrderDisorderedStructureTransformation, or a special quasirandom structure)")


def read_system(path: Path, type_map: list[str] | None, fmt: str | None = None):
    """``path`` as a dpdata ``System``/``LabeledSystem`` whose atom names follow ``type_map``
    (``None``: the file's own elements, in its own order)."""
    import dpdata

    path = _check_exists(path)
    fmt = fmt or guess_format(path)
    cls = dpdata.LabeledSystem if _labelled(path, fmt) else dpdata.System
    kwargs = {}
    if fmt in ("lammps/lmp", "lammps/dump") and type_map:
        kwargs["type_map"] = type_map  # LAMMPS files carry type numbers only
    if fmt == "lammps/lmp" and type_map:
        check_lammps_types(path, type_map)
    try:
        if fmt == "ase":
            import ase.io

            frames = ase.io.read(str(path), ":")
            check_ordered(frames, path)
            formulas = list(dict.fromkeys(a.get_chemical_formula() for a in frames))
            if len(formulas) > 1:  # dpdata's System holds one composition
                raise InputError(str(path), f"holds frames of {len(formulas)} compositions ({', '.join(formulas[:3])}"
                                            f"{', …' if len(formulas) > 3 else ''}) where one structure or system "
                                            "is read; write each composition to its own file (a pattern such as "
                                            "confs/*.extxyz lists them all)")
            systems = [dpdata.System(a, fmt="ase/structure") for a in frames]
            system = systems[0]
            for other in systems[1:]:
                system.append(other)
        elif fmt == MIXED:
            multi = read_mixed(path, labeled=cls is dpdata.LabeledSystem)
            if len(multi) != 1:
                raise InputError(str(path), f"holds {len(multi)} compositions (DeePMD-kit's mixed-type system) "
                                            "where one structure or system is read; give its compositions as "
                                            "deepmd/npy systems (dpdata: MultiSystems.from_file(path, "
                                            "fmt='deepmd/npy/mixed').to('deepmd/npy', folder))")
            system = multi[0]
        else:
            system = cls(str(path), fmt=fmt, **kwargs)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(str(path), f"could not be read as {fmt} ({type(exc).__name__}: {exc})") from None
    if len(system) == 0 or len(system["atom_types"]) == 0:  # dpdata reads a wrong format as nothing at all
        raise InputError(str(path), f"holds no frame readable as {fmt}")
    return system if type_map is None else _follow_type_map(system, path, type_map)


#: how close (u) a LAMMPS mass must be to an element's to be read as that element: isotopes and
#: the heavy hydrogen some use for a longer timestep stay apart from every neighbour element
MASS_MATCH = 0.1


def check_lammps_types(path: Path, type_map: list[str]) -> None:
    """A LAMMPS data file's types are numbers that lamflow (as dpdata and ``pair_style deepmd``)
    reads in ``type_map``'s order; a file written in another order would run every atom as
    another element, silently. Its header's type count and its ``Masses`` (an element in a
    comment, as ASE and OVITO write it, or a mass that is another ``type_map`` element's and not
    this one's) are checked against ``type_map``: one line naming the type, else nothing."""
    from ase.data import atomic_masses, atomic_numbers

    def mass(element: str) -> float | None:
        return float(atomic_masses[atomic_numbers[element]]) if element in atomic_numbers else None

    lines = path.read_text(errors="replace").splitlines()
    hint = f"a LAMMPS data file's types are numbered in type_map's order ({', '.join(type_map)})"
    for line in lines[1:40]:
        words = line.split("#")[0].split()
        if words[1:3] == ["atom", "types"] and words[0].isdigit() and int(words[0]) > len(type_map):
            raise InputError(str(path), f"has {words[0]} atom types, type_map names {len(type_map)}: {hint}")
    start = next((i for i, line in enumerate(lines) if line.split("#")[0].strip() == "Masses"), None)
    if start is None:
        return
    body_started = False
    for line in lines[start + 1:]:
        body, _, comment = line.partition("#")
        words = body.split()
        if not words and not body_started:
            continue  # the blank line after the section's title
        body_started = True
        try:
            kind, weight = int(words[0]), float(words[1])
        except (IndexError, ValueError):
            break  # the section ended (or is not a mass: dpdata's reader says what is wrong with the file)
        if not 1 <= kind <= len(type_map):
            continue
        named = type_map[kind - 1]
        said = comment.strip().split()[0] if comment.strip() else ""
        if said in atomic_numbers and said != "X" and said != named:
            raise InputError(str(path), f"atom type {kind} is {said} (its Masses comment), but type_map[{kind - 1}] "
                                        f"is {named}: {hint}")
        near = [e for e in type_map if mass(e) is not None and abs(mass(e) - weight) < MASS_MATCH]
        if near and named not in near:
            raise InputError(str(path), f"atom type {kind} has mass {weight:g}, {near[0]}'s, but "
                                        f"type_map[{kind - 1}] is {named}: {hint}")


def name_unnamed_types(system, path: Path, type_map: list[str]) -> None:
    """A deepmd/npy system without ``type_map.raw`` (older DP-GEN data; dpdata calls its types
    ``Type_0``…) named as DeePMD-kit reads it: its type numbers in the training's ``type_map``
    order; one line when it holds more types than ``type_map`` names."""
    names = list(system["atom_names"])
    if not names or not all(re.fullmatch(r"Type_\d+", n) for n in names):
        return
    if len(names) > len(type_map):
        raise InputError(str(path), f"has {len(names)} atom types and no type_map.raw: DeePMD-kit reads them "
                                    f"in type_map's order, which names {len(type_map)} ({', '.join(type_map)})")
    system.data["atom_names"] = [type_map[int(n.split("_")[1])] for n in names]


def read_mixed(path: Path, labeled: bool = True):
    """A mixed-type system as dpdata's ``MultiSystems``: one system per composition."""
    import dpdata

    return dpdata.MultiSystems.from_file(str(path), fmt=MIXED, labeled=labeled)


def _follow_type_map(system, path: Path, type_map: list[str]):
    """``system`` with its atom types in ``type_map``'s order; one line naming the elements it
    holds that ``type_map`` lacks (names listed with no atom, as multi-system files list every
    system's elements, are dropped)."""
    name_unnamed_types(system, path, type_map)
    unknown = [n for n, c in zip(system["atom_names"], system["atom_numbs"]) if c and n not in type_map]
    if unknown:
        raise InputError(str(path), f"has elements {unknown} that are not in type_map {type_map}")
    system.apply_type_map(list(type_map))
    return system


#: labelled extxyz (energy and forces per frame, as ASE writes them) in dpdata's name
EXTXYZ = "quip/gap/xyz"


def read_labelled(path: Path, type_map: list[str] | None, fmt: str | None = None) -> list:
    """The labelled systems of one file or folder: a labelled extxyz holds one per composition
    (read by dpdata's ``quip/gap/xyz``, where ASE would drop the labels); anything else is
    :func:`read_system`. ``type_map=None``: the file's own elements."""
    import dpdata

    path = _check_exists(Path(path))
    if (fmt or "").lower() in (EXTXYZ, "extxyz") or (fmt is None and path.suffix in (".xyz", ".extxyz")):
        try:
            multi = dpdata.MultiSystems.from_file(str(path), fmt=EXTXYZ)
        except Exception as exc:
            raise InputError(str(path), f"could not be read as labelled extxyz ({type(exc).__name__}: {exc})") from None
        for system in multi:
            # dpdata's extxyz reader names elements with numpy strings ("np.str_('O')" in messages)
            system.data["atom_names"] = [str(name) for name in system.data["atom_names"]]
        return [system if type_map is None else _follow_type_map(system, path, type_map) for system in multi]
    if (fmt or guess_format(path)) == MIXED:
        try:
            multi = read_mixed(path)
        except Exception as exc:
            raise InputError(str(path), f"could not be read as {MIXED} ({type(exc).__name__}: {exc})") from None
        return [system if type_map is None else _follow_type_map(system, path, type_map) for system in multi]
    return [read_system(path, type_map, fmt)]


def load_labeled(paths: list[Path], type_map: list[str]):
    """Labelled systems (deepmd/npy folders or DFT outputs) as one dpdata ``MultiSystems``."""
    import dpdata

    multi = dpdata.MultiSystems(type_map=list(type_map))
    for path in paths:
        for system in read_labelled(Path(path), type_map):
            multi.append(check_labelled(system, path))
    return multi


def check_labelled(system, path: Path | str):
    """``system`` if it has frames with finite energies and forces, else one line naming ``path``."""
    if "energies" not in system.data or len(system) == 0:
        raise InputError(str(path), "has no labelled frames (energies and forces)")
    for key in ("energies", "forces"):
        if not np.all(np.isfinite(system.data[key])):
            raise InputError(str(path), f"contains NaN or infinite {key}")
    return system


def deepmd_systems(root: Path) -> list[Path]:
    """The deepmd/npy system folders below ``root`` (a folder holding ``type.raw``)."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob("type.raw"))


def count_frames(systems: list[Path]) -> int:
    """Frames in deepmd/npy systems, labelled or not."""
    return sum(int(np.load(s).shape[0]) for p in systems for s in Path(p).glob("set.*/coord.npy"))


def check_systems(systems: list[Path], type_map: list[str], field: str) -> list[Path]:
    """Fail early, naming the folder, when training data cannot be used with ``type_map``."""
    if not systems:
        raise InputError(field, "no training systems given")
    for system in map(Path, systems):
        if not (system / "type.raw").is_file():
            raise InputError(str(system), f"({field}) is not a deepmd/npy system: no type.raw")
        names_file = system / "type_map.raw"
        if names_file.is_file():
            names = names_file.read_text().split()
            unknown = sorted(set(names) - set(type_map))
            mixed = sorted(system.glob("set.*/real_atom_types.npy"))  # a mixed-type system's real types
            types = ({int(t) for f in mixed for t in np.unique(np.load(f))} if mixed
                     else {int(t) for t in (system / "type.raw").read_text().split()})
            used = {names[t] for t in types}
            if unknown and used & set(unknown):
                raise InputError(
                    str(system), f"({field}) has elements {sorted(used & set(unknown))} not in type_map {type_map}"
                )
        sets = sorted(system.glob("set.*"))
        if not sets:
            raise InputError(str(system), f"({field}) has no set.* folders (empty dataset)")
        for s in sets:
            for key in ("energy", "force", "coord"):
                f = s / f"{key}.npy"
                if key != "coord" and not f.exists():
                    continue
                arr = np.load(f)
                if arr.size == 0:
                    raise InputError(str(f), f"({field}) is empty")
                if not np.all(np.isfinite(arr)):
                    raise InputError(str(f), f"({field}) contains NaN or infinite values")
    return [Path(s) for s in systems]


#: atoms closer than this fraction of the sum of their covalent radii overlap: no real structure
#: comes near it (bonds are ~0.8–1.1 of the sum), and MD started from it blows up at once
OVERLAP_FRACTION = 0.5


def overlaps(atoms_list: list, fraction: float = OVERLAP_FRACTION) -> list[tuple[int, str]]:
    """Every frame with two atoms closer than ``fraction`` of their covalent radii (periodic
    images included): (frame, the closest such pair in words)."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    found = []
    for index, atoms in enumerate(atoms_list):
        radii = fraction * covalent_radii[atoms.numbers]
        i, j, d = neighbor_list("ijd", atoms, radii)
        if len(d):
            k = int(np.argmin(d))
            a, b = int(i[k]), int(j[k])
            sym = atoms.get_chemical_symbols()
            limit = fraction * (covalent_radii[atoms.numbers[a]] + covalent_radii[atoms.numbers[b]])
            found.append((index, f"atoms {a} ({sym[a]}) and {b} ({sym[b]}) are {d[k]:.3f} Å apart, closer than "
                                 f"{fraction} of their covalent radii ({limit:.2f} Å)"))
    return found


def check_overlaps(atoms_list: list, where: str, fraction: float = OVERLAP_FRACTION) -> None:
    """One line naming the first frame with two atoms closer than ``fraction`` of their covalent
    radii (periodic images included), before any MD or labelling is spent on it."""
    found = overlaps(atoms_list, fraction)
    if found:
        index, pair = found[0]
        raise InputError(where, f"frame {index}: {pair}: overlapping atoms")


def periodic(atoms, where: str):
    """``atoms`` as lamflow's MD runs it: periodic in all three directions (LAMMPS' ``boundary p p
    p``; the frames it dumps carry no other flag). A slab's non-periodic direction is run periodic
    across its vacuum, as plane-wave DFT runs slabs; a frame without a cell cannot be."""
    if atoms.cell.rank < 3 or atoms.get_volume() < 1e-6:
        raise InputError(where, "has no periodic cell (a molecule or a cluster?): lamflow's MD runs in a periodic "
                                "box; give it one with vacuum around it (ASE: atoms.center(vacuum=...))")
    atoms = atoms.copy()
    atoms.pbc = True
    return atoms


def vacuum_gap(atoms, axis: int) -> float:
    """Å between the atoms and their periodic images along cell vector ``axis``: the cell's height
    normal to the other two vectors less the atoms' extent along that normal."""
    normal = np.cross(atoms.cell[(axis + 1) % 3], atoms.cell[(axis + 2) % 3])
    normal /= np.linalg.norm(normal)
    height = abs(float(np.dot(atoms.cell[axis], normal)))
    heights = atoms.positions @ normal
    return height - float(heights.max() - heights.min())


def check_periodic(atoms_list: list, where: str, reach: float) -> list[str]:
    """Every frame can run periodic (:func:`periodic`), and where a file marks a direction
    non-periodic (a slab's vacuum, a boxed molecule), its vacuum keeps the atoms further than
    ``reach`` (the student's cut-off) from their images: run periodic, a thinner vacuum lets the
    student and the teacher's labels see the other side, which the file said is not there.
    Returns the non-periodic directions found (``["c"]`` for a slab), for checks that depend on them."""
    found: set[str] = set()
    for index, atoms in enumerate(atoms_list):
        periodic(atoms, f"{where} frame {index}" if len(atoms_list) > 1 else where)
        for name in open_axes(atoms):
            axis = "abc".index(name)
            gap = vacuum_gap(atoms, axis)
            if gap < reach:
                raise InputError(where, f"frame {index}: not periodic along {'abc'[axis]}, and only {gap:.1f} Å of "
                                        f"vacuum separates its atoms from their images there; lamflow runs it "
                                        f"periodic, so the student (cut-off {reach:g} Å) would see across it: give "
                                        f"it at least {reach:g} Å (ASE: atoms.center(vacuum={reach / 2:g}, "
                                        f"axis={axis}))")
            found.add(name)
    return sorted(found)


def open_axes(atoms) -> list[str]:
    """The cell directions a frame's file marks non-periodic (``["c"]`` for a slab as ASE builds
    it), which lamflow runs periodic across their vacuum."""
    return ["abc"[a] for a in np.flatnonzero(~np.asarray(atoms.pbc))]


def slab_barostat(open_axes: list[str], where: str) -> None:
    """A barostat runs on a cell periodic along every direction, or on a slab whose vacuum lies
    along c (its in-plane directions then); other open directions (a boxed molecule, a slab cut
    along a) have no pressure to hold. One line naming the file, else nothing."""
    if open_axes and open_axes != ["c"]:
        raise InputError(where, f"npt: not periodic along {', '.join(open_axes)}: a barostat holds the pressure of a "
                                "bulk cell, or in the plane of a slab whose vacuum lies along c; use nvt, or "
                                "turn the slab so its vacuum lies along c")
