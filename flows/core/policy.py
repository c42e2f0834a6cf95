"""One execution policy for every engine: which failures are worth another attempt.

Bad input fails the same way every time, and a full disk does not empty itself within a retry
delay: retrying either only wastes a node. A killed or failed computation (a lost node, an OOM,
a LAMMPS crash, an injected fault) is retried per ``resources.<step>.retries``. The rule is
written once, here, and mapped to each engine: Prefect's ``retry_condition_fn``, dflow's
``TransientError``/``FatalError`` (Argo retries only the former), and the local runner's loop.
"""

from __future__ import annotations

import errno

from lamflow.steps.errors import InputError, StepInterrupted

#: errno values of a full disk or quota: not cured by trying again
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def retryable(error: BaseException) -> bool:
    if isinstance(error, (InputError, StepInterrupted)):  # a stopping run is not a failing step
        return False
    if isinstance(error, OSError) and error.errno in _FULL_DISK:
        return False
    return not isinstance(error, (KeyboardInterrupt, SystemExit))


def attempts(retries: int) -> int:
    return 1 + max(0, retries)
