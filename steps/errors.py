"""Errors a user can act on.

Users hand us wrong files and mismatched models; they should get one line that names the field
or file and what was expected, never a traceback from deep inside deepmd-kit or LAMMPS. Steps
raise :class:`InputError` for such cases; the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations


def first_sentence(exc: BaseException) -> str:
    """What a library exception says, cut to one short line for a one-line error."""
    text = str(exc).strip()
    if not any(c.isalpha() for c in text):  # torch.load on a foreign file: KeyError(174812789) says "174812789"
        return f"{type(exc).__name__} {text}".strip()
    return text.splitlines()[0].split(". ")[0][:200]


class InputError(ValueError):
    """Bad input that the user must fix (a file, a field, a type map)."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class StepFailed(RuntimeError):
    """A library call (dp, LAMMPS) failed; the message ends with the tail of its log."""


class LammpsUnavailable(StepFailed):
    """No LAMMPS can start in this installation (:func:`lamflow.steps.runtime.lammps_cannot_start`):
    the installation's fault, not a model's or an MD's, so a caller that turns a failed MD into a
    result (``speed``) lets it through."""


class StepInterrupted(RuntimeError):
    """The run is stopping (SIGINT/SIGTERM): the step's child process was ended on purpose.

    Never retried and never recorded: the interrupted step is simply not finished, and the
    next run of the same command starts it again."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the machine ran out of memory (host, or a GPU's: torch's
    ``OutOfMemoryError``, or CUDA/HIP's "out of memory" in a ``RuntimeError``). Such a failure is
    the machine's, not the frame's: a step that drops frames its calculator cannot evaluate (a
    failed SCF) must not drop these, or a busy GPU silently costs labels a retry would have made."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "out of memory" in str(exc).lower())


#: why a labeller left a frame out, as the ``drop_reasons`` of its result count them: a run whose
#: teacher drops many frames says why (an SCF that does not converge on hot frames wants other
#: calculator settings; forces beyond ``max_force`` say the students' MD broke)
NON_FINITE = "a non-finite energy, force or virial"
ABOVE_MAX_FORCE = "a force above max_force"


def above_max_force(max_force: float) -> str:
    return f"{ABOVE_MAX_FORCE} ({max_force:g} eV/Å)"


def count_drop(reasons: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        reasons[reason] = reasons.get(reason, 0) + n
