"""A step as a batch job: dpdispatcher writes and submits the script, lamflow waits for it.

The job runs ``lamflow step NAME --params params.json`` on the compute node: the same
``execute`` as everywhere else, so the job leaves the step's usual record next to its output,
and the submitter reads it back and adds the job id. What lamflow adds to dpdispatcher:

- **one retry policy.** dpdispatcher's own resubmission is off (``retry_count: 0``); a failed or
  cancelled job is retried per ``resources.<step>.retries`` like a failed step on any engine,
  and a job whose ``lamflow step`` exited 2 (bad input) is not retried at all.
- **resume.** A run stopped by SIGKILL leaves its jobs running; the same command adopts them
  (dpdispatcher finds its submission by hash) instead of submitting twice. A job that failed
  while nobody watched is forgotten and submitted afresh, without using up a retry.
- **stopping.** SIGINT/SIGTERM cancels the run's jobs (``scancel``): stopping a run ends its
  running steps on a scheduler as it does here.
- **one line** when a job fails: its id, the last line of its error output and where its logs are.

Files: ``OUTPUT.job/task/params.json`` (the step's parameters), and under ``remote_root`` (default
``OUTPUT.job/submit``)/HASH the script, the scheduler's output file and the task's ``log``/``err``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lamflow.flows.core.execute import lookup, validated
from lamflow.flows.core.records import StepRecord, set_job_id
from lamflow.flows.core.resources import Resources, dpdispatcher
from lamflow.steps.artifacts import write_json
from lamflow.steps.errors import InputError, StepFailed, StepInterrupted
from lamflow.steps.runtime import stopping

log = logging.getLogger(__name__)

#: written by the job's command: the exit status of ``lamflow step`` (2: bad input)
EXIT_FILE = "exit_status"
#: the task folder inside the job folder (dpdispatcher's task_work_path)
TASK = "task"


def job_folder(params: BaseModel) -> Path:
    """Where a step's job keeps its parameters and, by default, its scripts and logs."""
    return Path(f"{params.output}.job")


def _memory(value: str) -> tuple[float, str]:
    """``16Gi``/``16G``/``500Mi`` as (number, unit letter)."""
    found = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?[Bb]?\s*", value)
    if not found:
        raise InputError("resources.memory", f"expected a size such as 16Gi or 500M, got {value!r}")
    return float(found.group(1)), found.group(2) or "M"


def _scheduler_lines(batch_type: str, resources: Resources) -> list[str]:
    """``memory`` and ``timeout`` (seconds) as header lines, where the batch system has a standard
    one (other systems: put them in ``custom_flags``)."""
    lines = []
    if resources.memory:
        amount, unit = _memory(resources.memory)
        if batch_type == "Slurm":
            lines.append(f"#SBATCH --mem={amount:g}{unit}")
        elif batch_type in ("PBS", "Torque"):
            lines.append(f"#PBS -l mem={amount:g}{unit.lower()}b")
    if resources.timeout:
        if batch_type == "Slurm":
            lines.append(f"#SBATCH --time={math.ceil(resources.timeout / 60)}")
        elif batch_type in ("PBS", "Torque"):
            seconds = math.ceil(resources.timeout)
            lines.append(f"#PBS -l walltime={seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    return lines


def _job_name(label: str) -> str:
    return "lamflow-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


def submission(step: str, params: BaseModel, resources: Resources, label: str) -> Any:
    """The dpdispatcher ``Submission`` of one step: one job, one task, on one node."""
    executor = resources.executor
    assert executor is not None
    dpd = dpdispatcher()
    base = job_folder(params).resolve()
    (base / TASK).mkdir(parents=True, exist_ok=True)
    write_json(base / TASK / "params.json", json.loads(params.model_dump_json()))
    python = executor.command or shlex.quote(sys.executable)
    command = (f"{python} -m lamflow.flows.cli step {step} --params params.json --threads {resources.threads}; "
               f"code=$?; echo $code > {EXIT_FILE}; exit $code")
    machine = dpd.Machine.load_from_dict({
        "batch_type": executor.batch_type, "context_type": executor.context_type, "local_root": str(base),
        "remote_root": str(executor.remote_root or base / "submit"), "retry_count": 0})
    cpu = math.ceil(resources.cpu) if resources.cpu else resources.threads
    gpu = resources.pod(step).gpu  # the one cluster policy (GPU_STEPS), as for pods
    res = dpd.Resources.load_from_dict(
        executor.resources_dict(cpu, gpu, _scheduler_lines(executor.batch_type, resources)))
    task = dpd.Task(command=command, task_work_path=TASK, forward_files=["params.json"], backward_files=[],
                    outlog="log", errlog="err", task_name=_job_name(label))
    return dpd.Submission(work_base=".", machine=machine, resources=res, task_list=[task])


def batch_script(step: str, params: dict[str, Any] | BaseModel, resources: Resources, label: str = "") -> str:
    """The script a step's job would be submitted with (nothing is submitted)."""
    sub = submission(step, validated(step, params), resources, label or step)
    sub.generate_jobs()
    return sub.machine.gen_script(sub.belonging_jobs[0])


def _state_file(sub: Any) -> Path:
    return Path(sub.machine.context.remote_root) / f"{sub.submission_hash}.json"


def _forget(sub: Any) -> None:
    """Drop dpdispatcher's saved state of this submission, so that the next attempt (a retry, or
    a resumed run) submits a new job instead of adopting the failed one."""
    _state_file(sub).unlink(missing_ok=True)


def _failure(sub: Any, label: str, batch_type: str) -> Exception:
    """One line for a failed job: its id, the last line it wrote to stderr and where its logs are;
    an ``InputError`` when ``lamflow step`` refused its parameters (never worth a retry)."""
    job = sub.belonging_jobs[0]
    folder = Path(sub.machine.context.remote_root)
    err, status = folder / TASK / "err", folder / TASK / EXIT_FILE
    lines = [ln for ln in (err.read_text(errors="replace").splitlines() if err.is_file() else []) if ln.strip()]
    last = lines[-1].strip() if lines else "no error output (killed or cancelled by the scheduler?)"
    outputs = [str(err)] + [str(p) for p in sorted(folder.glob(f"*{job.job_id}*.out"))]
    code = status.read_text().strip() if status.is_file() else ""
    if code == "2":
        return InputError(label, f"{batch_type} job {job.job_id}: {last}")
    return StepFailed(f"{label}: {batch_type} job {job.job_id} failed"
                      f"{f' (exit {code})' if code else ''}: {last} — see {', '.join(outputs)}")


def _wait(seconds: float) -> bool:
    """Sleep, waking early when the run is stopping; whether it is."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if stopping():
            return True
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    return stopping()


def run_as_job(step: str, params: dict[str, Any] | BaseModel, resources: Resources, label: str) -> StepRecord:
    """Run ``step`` as a batch job and return its record (or the record it already has)."""
    model = validated(step, params)
    done = lookup(step, model)
    if done is not None:
        return done
    executor = resources.executor
    assert executor is not None
    sub = submission(step, model, resources, label)
    from dpdispatcher.utils.job_status import JobStatus as jobs

    started = time.time()
    if _state_file(sub).is_file():  # a stopped run left a job: adopt it, unless it failed meanwhile
        sub.try_recover_from_json()
        sub.update_submission_state()
        if sub.belonging_jobs and sub.belonging_jobs[0].job_state in (jobs.terminated, jobs.failed, jobs.unknown):
            log.warning("%s: %s job %s of an earlier run ended without finishing: submitting it again",
                        label, executor.batch_type, sub.belonging_jobs[0].job_id)
            _forget(sub)
            sub = submission(step, model, resources, label)
        else:
            started = 0.0
    try:
        sub.run_submission(exit_on_submit=True, clean=False, check_interval=executor.check_interval)
        job = sub.belonging_jobs[0]
        log.info("%s: %s job %s", label, executor.batch_type, job.job_id)
        while not sub.check_all_finished():
            if _wait(executor.check_interval):
                job.machine.kill(job)
                _forget(sub)
                raise StepInterrupted(f"{label}: stopped; {executor.batch_type} job {job.job_id} cancelled")
            sub.update_submission_state()
            sub.handle_unexpected_submission_state()  # raises once the job ended without finishing
    except RuntimeError as exc:
        if isinstance(exc, StepInterrupted):
            raise
        _forget(sub)
        raise _failure(sub, label, executor.batch_type) from None
    job_id = str(sub.belonging_jobs[0].job_id)
    record = lookup(step, model)
    if record is None:
        raise StepFailed(f"{label}: {executor.batch_type} job {job_id} finished but left no record of the step "
                         f"next to {model.output}: do the compute nodes see this run directory?")
    set_job_id(model, job_id)
    record.job_id, record.cached = job_id, record.finished < started
    return record


#: a command that answers when the batch system is up, per batch type (Shell needs none)
PROBES = {"Slurm": ["sinfo", "-h", "-o", "%P %G"], "PBS": ["qstat", "-Q"], "Torque": ["qstat", "-q"],
          "LSF": ["bqueues"], "SGE": ["qstat", "-g", "c"]}


def _probe(field: str, batch_type: str) -> str:
    """The probe's output, or one line: the scheduler's commands are missing or it does not answer."""
    probe = PROBES[batch_type]
    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise InputError(field, f"batch_type {batch_type}: `{probe[0]}` is not on this machine's PATH; lamflow "
                         f"submits from a login node of the cluster, where {probe[0]} works") from None
    except subprocess.TimeoutExpired:
        raise InputError(field, f"{batch_type} does not answer: `{' '.join(probe)}` timed out after 60 s") from None
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        raise InputError(field, f"{batch_type} cannot be reached: `{' '.join(probe)}` said: "
                                f"{lines[-1] if lines else f'exit {out.returncode}'}")
    return out.stdout


def _slurm_partitions(sinfo: str) -> tuple[dict[str, str], str | None]:
    """``{partition: its nodes' gres}`` and the default partition, from ``sinfo -h -o "%P %G"``."""
    gres: dict[str, str] = {}
    default = None
    for line in sinfo.splitlines():
        name, _, value = line.strip().partition(" ")
        if not name:
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        gres[name] = f"{gres[name]},{value}" if name in gres else value
    return gres, default


def check_schedulers(cfg: Any, steps: Any) -> None:
    """Preflight of every batch executor the run's steps use: the scheduler answers, the queue
    exists and, on Slurm, a step given GPUs goes to a partition that has some (a job asking
    for a GPU that no node has would otherwise wait in the queue forever)."""
    answers: dict[str, str] = {}
    for step in sorted(steps):
        res = cfg.resources_for(step)
        executor = res.executor
        if executor is None or executor.batch_type not in PROBES:
            continue
        entry = step if step in cfg.resources else "default"
        if executor.batch_type not in answers:
            answers[executor.batch_type] = _probe(f"resources.{entry}.executor", executor.batch_type)
        if executor.batch_type != "Slurm":
            continue
        gres, default = _slurm_partitions(answers["Slurm"])
        partition = executor.queue_name or default
        if partition not in gres:
            raise InputError(f"resources.{entry}.executor.queue_name",
                             f"Slurm has no partition {partition!r}; it has {sorted(gres)}")
        gpu = res.pod(step).gpu
        if gpu and "gpu" not in gres[partition] and not executor.kwargs.get("custom_gpu_line"):
            why = "" if res.gpu is not None else f" (the default for {step}: it computes with DeePMD-kit models)"
            raise InputError(f"resources.{entry}.gpu",
                             f"{step} asks for {gpu} GPU{why}, but Slurm partition {partition!r} has none "
                             f"(sinfo gres: {gres[partition]}); set gpu: 0, or a GPU partition as executor.queue_name")
