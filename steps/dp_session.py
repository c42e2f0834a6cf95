"""``python -m lamflow.steps.dp_session SPEC.json``: several ``dp`` commands in one process.

Every ``dp`` process spends its first ~8 s (2 CPU cores) importing PyTorch and DeePMD-kit
before it does any work; a student's train, freeze and compress as three processes paid that
three times, more than the training itself on a small system. This runs the commands of SPEC in
order through DeePMD-kit's own entry point (``deepmd.main.main``, what ``dp`` calls), each with
its stdout and stderr in its own log file, and stops at the first that fails. It writes each
command's exit code and seconds to SPEC's ``results`` file as it goes, so the caller knows which
one failed and reads that log. Started by :func:`lamflow.steps.runtime.run_dp`.

SPEC: ``{"commands": [{"args": [...], "log": "train.log"}, ...], "results": "path.json"}``.
An argument ``{frozen}`` is replaced by the model the preceding ``dp freeze`` wrote
(``model.pth``, or ``model.pt2`` for DPA-4).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

FROZEN = "{frozen}"
#: what ``dp freeze`` writes: TorchScript, or for DPA-4 an AOTInductor package
FROZEN_NAMES = ("model.pth", "model.pt2")


def frozen_model(folder: Path) -> Path | None:
    """The model ``dp freeze`` wrote in ``folder``, if it wrote one."""
    return next((folder / name for name in FROZEN_NAMES if (folder / name).is_file()), None)


def _frozen() -> str:
    return (frozen_model(Path(".")) or Path(FROZEN_NAMES[0])).name


def _run(args: list[str], log: Path) -> int:
    """``dp ARGS`` with fd 1 and 2 in ``log`` (DeePMD-kit's C++ and OpenMP write there too)."""
    from deepmd.main import main as dp

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            dp(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the log gets the traceback, the caller the exit code
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    return code


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    results: list[dict[str, float | int]] = []
    for command in spec["commands"]:
        args = [_frozen() if a == FROZEN else a for a in command["args"]]
        t0 = time.perf_counter()
        code = _run(args, Path(command["log"]))
        results.append({"code": code, "seconds": time.perf_counter() - t0})
        Path(spec["results"]).write_text(json.dumps(results))
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
