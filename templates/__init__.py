"""Input templates users edit: DeePMD-kit JSON and LAMMPS inputs (package data)."""
