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
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lamflow.flows.core.execute import lookup, validated
from lamflow.flows.core.records import RECORD_SUFFIX, StepRecord, cache_key, set_job_id, write_record
from lamflow.flows.core.resources import Resources, dpdispatcher
from lamflow.steps.artifacts import write_json
from lamflow.steps.errors import InputError, StepFailed, StepInterrupted
from lamflow.steps.registry import STEPS
from lamflow.steps.runtime import stopping

log = logging.getLogger(__name__)

#: written by the job's command: the exit status of ``lamflow step`` (2: bad input)
EXIT_FILE = "exit_status"
#: the task folder inside the job folder (dpdispatcher's task_work_path)
TASK = "task"


def job_folder(params: BaseModel) -> Path:
    """Where a step's job keeps its parameters and, by default, its scripts and logs."""
    return Path(f"{params.output}.job")


def _memory(value: str, field: str) -> tuple[float, str]:
    """``16Gi``/``16G``/``500Mi`` as (number, unit letter); a bare number is bytes, as Kubernetes
    reads the same key (a scheduler would take it as megabytes)."""
    found = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?[Bb]?\s*", value)
    if not found:
        raise InputError(field, f"expected a size such as 16Gi or 500M, got {value!r}")
    if not found.group(2):
        return float(math.ceil(float(found.group(1)) / 2**20)), "M"
    return float(found.group(1)), found.group(2)


def _scheduler_lines(batch_type: str, resources: Resources, field: str = "resources.memory") -> list[str]:
    """``memory`` and ``timeout`` (seconds) as header lines, where the batch system has a standard
    one (other systems: put them in ``custom_flags``)."""
    lines = []
    if resources.memory:
        amount, unit = _memory(resources.memory, field)
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


#: SSHContext: where a step's inputs and output sit in its remote task folder
INPUTS, OUTPUT, RESULT = "inputs", "out", "result.json"


def remote(params: BaseModel) -> tuple[dict[str, Any], dict[str, Path]]:
    """SSHContext: the step's parameters as the remote job sees them, and ``{path there: path
    here}`` for its inputs and its output (to stage the ones and map the result back).

    Every input path becomes ``inputs/I/NAME`` and the output ``out/NAME``, both relative to the
    job's task folder: the cluster need not have any path of this machine."""
    data = json.loads(params.model_dump_json())
    there: dict[Path, str] = {}

    def stage(path: Path) -> str:
        path = Path(path).resolve()
        return there.setdefault(path, f"{INPUTS}/{len(there)}/{path.name}")

    for name in type(params).model_fields:
        value = getattr(params, name)
        if name == "output":
            data[name] = f"{OUTPUT}/{Path(value).name}"
        elif isinstance(value, Path) and value.exists():
            data[name] = stage(value)
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            data[name] = [stage(v) if v.exists() else str(v) for v in value]
    return data, {**{where: path for path, where in there.items()}, data["output"]: Path(params.output).resolve()}


def _stage(task: Path, paths: dict[str, Path]) -> list[str]:
    """Links to the step's inputs in its local task folder (uploaded as their content); their names."""
    shutil.rmtree(task / INPUTS, ignore_errors=True)
    inputs = [where for where in paths if where.startswith(f"{INPUTS}/")]
    for where in inputs:
        (task / where).parent.mkdir(parents=True)
        (task / where).symlink_to(paths[where])
    return inputs


def _machine(executor: Any, base: Path) -> Any:
    """dpdispatcher's ``Machine`` (over SSH: connected) of a step whose job folder is ``base``."""
    machine = {**executor.machine_dict(str(base)), "remote_root": executor.remote_root or str(base / "submit")}
    if executor.context_type == "SSHContext":
        machine["create_remote_root"] = True
    return dpdispatcher().Machine.load_from_dict(machine)


def submission(step: str, params: BaseModel, resources: Resources, label: str) -> Any:
    """The dpdispatcher ``Submission`` of one step: one job, one task, on one node."""
    executor = resources.executor
    assert executor is not None
    dpd = dpdispatcher()
    base = job_folder(params).resolve()
    (base / TASK).mkdir(parents=True, exist_ok=True)
    ssh = executor.context_type == "SSHContext"
    if ssh:
        data, paths = remote(params)
        uploads = _stage(base / TASK, paths)
    else:
        data, uploads = json.loads(params.model_dump_json()), []
    write_json(base / TASK / "params.json", data)
    python = executor.command or ("python3" if ssh else shlex.quote(sys.executable))
    command = (f"{python} -m lamflow.flows.cli step {step} --params params.json --threads {resources.threads}"
               f"{f' --result {RESULT}' if ssh else ''}; code=$?; echo $code > {EXIT_FILE}")
    if ssh:  # dpdispatcher refuses links in what it downloads (deepmd-kit's model.ckpt.pt is one): copies
        command += f"; [ -e {OUTPUT} ] && cp -rL {OUTPUT} {OUTPUT}.copy && rm -rf {OUTPUT} && mv {OUTPUT}.copy {OUTPUT}"
    command += "; exit $code"
    machine = _machine(executor, base)
    cpu = math.ceil(resources.cpu) if resources.cpu else resources.threads
    gpu = resources.gpus(step)  # the one cluster policy (GPU_STEPS), as for pods
    res = dpd.Resources.load_from_dict(
        executor.resources_dict(cpu, gpu, _scheduler_lines(executor.batch_type, resources)))
    task = dpd.Task(command=command, task_work_path=TASK, forward_files=["params.json", *uploads],
                    backward_files=[OUTPUT, RESULT, "err", EXIT_FILE] if ssh else [],
                    outlog="log", errlog="err", task_name=_job_name(label))
    return dpd.Submission(work_base=".", machine=machine, resources=res, task_list=[task])


def _remap(node: Any, paths: dict[str, Path], task: str) -> Any:
    """A result computed on the cluster, with its paths (relative to the task folder, or under it)
    turned back into this machine's."""
    if isinstance(node, dict):
        return {k: _remap(v, paths, task) for k, v in node.items()}
    if isinstance(node, list):
        return [_remap(v, paths, task) for v in node]
    if isinstance(node, str):
        rel = node[len(task) + 1:] if node.startswith(task + "/") else node
        for there, here in paths.items():
            if rel == there or rel.startswith(there + "/"):
                return str(here) + rel[len(there):]
    return node


def _bring_back(step: str, model: BaseModel, sub: Any, seconds_fallback: float) -> StepRecord:
    """SSHContext: the downloaded output moved into place and recorded here, under this machine's
    cache key (the cluster's paths and keys mean nothing here)."""
    task = job_folder(model).resolve() / TASK
    _, paths = remote(model)
    out = Path(model.output)
    if out.is_dir():
        shutil.rmtree(out)
    out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(task / OUTPUT / out.name), str(out))
    remote_task = f"{sub.machine.context.remote_root}/{TASK}"
    result = STEPS[step].result.model_validate(_remap(json.loads((task / RESULT).read_text()), paths, remote_task))
    saved = task / OUTPUT / f"{out.name}{RECORD_SUFFIX}"
    seconds = json.loads(saved.read_text())["seconds"] if saved.is_file() else seconds_fallback
    return write_record(step, model, cache_key(step, model), result, seconds)


def batch_script(step: str, params: dict[str, Any] | BaseModel, resources: Resources, label: str = "") -> str:
    """The script a step's job would be submitted with (nothing is submitted)."""
    sub = submission(step, validated(step, params), resources, label or step)
    sub.generate_jobs()
    return sub.machine.gen_script(sub.belonging_jobs[0])


def _has_state(sub: Any) -> bool:
    """Whether dpdispatcher saved this submission before (on the cluster, for SSH)."""
    return bool(sub.machine.context.check_file_exists(f"{sub.submission_hash}.json"))


def _forget(sub: Any) -> None:
    """Drop dpdispatcher's saved state of this submission, so that the next attempt (a retry, or
    a resumed run) submits a new job instead of adopting the failed one."""
    sub.machine.context.block_call(f"rm -f {shlex.quote(sub.submission_hash + '.json')}")


def _failure(sub: Any, label: str, batch_type: str) -> Exception:
    """One line for a failed job: its id, the last line it wrote to stderr and where its logs are;
    an ``InputError`` when ``lamflow step`` refused its parameters (never worth a retry)."""
    job = sub.belonging_jobs[0]
    context = sub.machine.context
    where = Path(context.remote_root)
    host = getattr(context, "remote_profile", {}).get("hostname")

    def read(name: str) -> str:
        try:
            return context.read_file(name) if context.check_file_exists(name) else ""
        except Exception:  # noqa: BLE001 — a lost connection must not hide the job's failure
            return ""

    lines = [ln for ln in read(f"{TASK}/err").splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "no error output (killed or cancelled by the scheduler?)"
    logs = [f"{where / TASK / 'err'}"] + [str(where / n) for n in (f"slurm-{job.job_id}.out",) if read(n)]
    code = read(f"{TASK}/{EXIT_FILE}").strip()
    if code == "2":
        return InputError(label, f"{batch_type} job {job.job_id}: {last}")
    return StepFailed(f"{label}: {batch_type} job {job.job_id} failed{f' (exit {code})' if code else ''}: {last} "
                      f"— see {f'{host}:' if host else ''}{', '.join(logs)}")


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
    if _has_state(sub):  # a stopped run left a job: adopt it, unless it failed meanwhile
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
    except StepInterrupted:
        raise
    except RuntimeError:
        _forget(sub)
        raise _failure(sub, label, executor.batch_type) from None
    job_id = str(sub.belonging_jobs[0].job_id)
    if executor.context_type == "SSHContext":
        if not (job_folder(model).resolve() / TASK / OUTPUT).exists():  # not fetched by run_submission already
            try:  # once: dpdispatcher's own try_download_result retries for a day
                sub.download_jobs()
            except Exception as exc:  # noqa: BLE001 — SSH, archive and file errors alike
                raise StepFailed(f"{label}: {executor.batch_type} job {job_id} finished but its output could not "
                                 f"be downloaded: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None
        record = _bring_back(step, model, sub, time.time() - started)
    else:
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


def _probe(field: str, executor: Any) -> str:
    """The probe's output, or one line: the scheduler's commands are missing or it does not answer
    (over SSH: on the cluster, after connecting)."""
    batch_type = executor.batch_type
    probe = PROBES[batch_type]
    if executor.context_type == "SSHContext":
        profile = executor.remote_profile
        try:
            machine = _machine(executor, Path.cwd())
            _, stdout, stderr = machine.context.ssh_session.exec_command(shlex.join(probe))
            code, text, err = stdout.channel.recv_exit_status(), stdout.read().decode(), stderr.read().decode()
        except Exception as exc:  # noqa: BLE001 — paramiko's and dpdispatcher's many ways to fail
            raise InputError(field, f"cannot reach {profile.get('username')}@{profile.get('hostname')} over SSH: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        if code == 127:
            raise InputError(field, f"batch_type {batch_type}: `{probe[0]}` is not on the PATH of "
                                    f"{profile.get('hostname')}'s SSH shell")
        out = subprocess.CompletedProcess(probe, code, text, err)
    else:
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
    answers: dict[tuple[str, str, str], str] = {}
    for step in sorted(steps):
        res = cfg.resources_for(step)
        executor = res.executor
        if executor is None:
            continue
        entry = step if step in cfg.resources else "default"
        _scheduler_lines(executor.batch_type, res, f"resources.{entry}.memory")  # a size it can read
        if executor.batch_type not in PROBES:
            continue
        where = (executor.batch_type, executor.context_type, json.dumps(executor.remote_profile, sort_keys=True))
        if where not in answers:
            answers[where] = _probe(f"resources.{entry}.executor", executor)
        if executor.batch_type != "Slurm":
            continue
        gres, default = _slurm_partitions(answers[where])
        partition = executor.queue_name or default
        if partition not in gres:
            raise InputError(f"resources.{entry}.executor.queue_name",
                             f"Slurm has no partition {partition!r}; it has {sorted(gres)}")
        gpu = res.gpus(step)
        if gpu and "gpu" not in gres[partition] and not executor.kwargs.get("custom_gpu_line"):
            why = "" if res.gpu is not None else f" (the default for {step}: it computes with DeePMD-kit models)"
            raise InputError(f"resources.{entry}.gpu",
                             f"{step} asks for {gpu} GPU{why}, but Slurm partition {partition!r} has none "
                             f"(sinfo gres: {gres[partition]}); set gpu: 0, or a GPU partition as executor.queue_name")
