"""DFT output files written by the tests, as the codes write them, from labelled ASE frames.

The walkthrough for users' own data (docs/own-data.md) starts from VASP OUTCARs. A test cannot
run VASP, so it writes the OUTCAR of a short "AIMD" whose energies and forces come from ASE's
EMT: the lines dpdata's ``vasp/outcar`` reader looks for (POTCAR titles, NELM, ions per type,
the lattice vectors after ``VOLUME and BASIS``, the ``POSITION … TOTAL-FORCE`` table, and
``free  energy   TOTEN``), in VASP's layout, one ionic step per frame.
"""

from __future__ import annotations

from pathlib import Path


def write_outcar(frames: list, path: Path) -> Path:
    """``frames`` (ASE Atoms with a calculator, one composition, atoms grouped by element in
    the order they first appear) as a VASP OUTCAR."""
    first = frames[0]
    symbols = first.get_chemical_symbols()
    species = list(dict.fromkeys(symbols))
    if symbols != sorted(symbols, key=species.index):
        raise ValueError("atoms must be grouped by element, as VASP orders them")
    counts = [symbols.count(s) for s in species]
    lines = [" vasp.6.3.0 18Jan22 (build Nov 25 2026) complex", f" POSCAR = {' '.join(species)}"]
    lines += [f"   POTCAR:    PAW_PBE {s} 06Sep2000" for s in species]
    lines += [f"   TITEL  = PAW_PBE {s} 06Sep2000" for s in species]
    lines += ["   NELM   =     60;   NELMIN=  2; NELMDL= -5     # of ELM steps",
              "   NWRITE =      2    write-flag & timer",
              f"   ions per type =               {'  '.join(str(c) for c in counts)}"]
    for step, atoms in enumerate(frames, start=1):
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        lines += ["", f"--------------------------------------- Iteration {step:6d}(   8)  ---------------------------------------",
                  "", "  VOLUME and BASIS-vectors are now :",
                  " -----------------------------------------------------------------------------",
                  "  energy-cutoff  :      400.00",
                  f"  volume of cell :  {atoms.get_volume():12.2f}",
                  "      direct lattice vectors                 reciprocal lattice vectors"]
        lines += [f"  {a[0]:14.9f}{a[1]:14.9f}{a[2]:14.9f}     0.000000000  0.000000000  0.000000000"
                  for a in atoms.cell]
        lines += ["", " POSITION                                       TOTAL-FORCE (eV/Angst)",
                  " -----------------------------------------------------------------------------------"]
        lines += [f" {p[0]:12.5f}{p[1]:12.5f}{p[2]:12.5f}   {f[0]:14.6f}{f[1]:14.6f}{f[2]:14.6f}"
                  for p, f in zip(atoms.positions, forces)]
        lines += [" -----------------------------------------------------------------------------------",
                  "", "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)", "  ---------------------------------------------------",
                  f"  free  energy   TOTEN  = {energy:18.8f} eV", "",
                  f"  energy  without entropy= {energy:18.8f}  energy(sigma->0) = {energy:18.8f}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
