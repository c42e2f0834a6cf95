"""Errors a user can act on.

Users hand us wrong files and mismatched models; they should get one line that names the field
or file and what was expected, never a traceback from deep inside deepmd-kit or LAMMPS. Steps
raise :class:`InputError` for such cases; the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input that the user must fix (a file, a field, a type map)."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class StepFailed(RuntimeError):
    """A library call (dp, LAMMPS) failed; the message ends with the tail of its log."""


class StepInterrupted(RuntimeError):
    """The run is stopping (SIGINT/SIGTERM): the step's child process was ended on purpose.

    Never retried and never recorded: the interrupted step is simply not finished, and the
    next run of the same command starts it again."""
