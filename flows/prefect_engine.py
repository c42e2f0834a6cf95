"""The Prefect engine: each step a Prefect task, the loop a Prefect flow.

Without ``PREFECT_API_URL`` Prefect runs in its local ephemeral mode (no server to start), which
is lamflow's embedded default; with it, the same flow reports to a Prefect server and its UI,
and ``prefect.yaml`` deploys it (``distill/local``, ``distill/k8s-gpu``).

Resume. Prefect's own result caching is off: every step is cached by lamflow's content hash
(:mod:`lamflow.flows.runner`), and its record lives next to its output in the run directory. A
flow run retried from the UI re-enters the loop from the top; each finished step finds its
record and returns at once, and the failed step runs again. Nothing is stored in Prefect's
database that the run directory doesn't already hold, so a retry also works after the server
was wiped.

GPU steps on Kubernetes. The flow itself is a CPU-only pod. A step whose resources name a
deployment (``resources: {train: {deployment: step/k8s-gpu, gpu: 1}}``, or every compute step
when the flow is given ``step_deployment``) runs as a flow run of :func:`step_flow` on that
deployment, in its own pod with its own image, CPU, memory and ``nvidia.com/gpu`` request taken
from its resources. The parent waits for it and reads the step's record from the shared run
directory (a ReadWriteMany volume), so a dispatched step is resumed exactly like a local one —
and a finished step is never dispatched again: no pod starts for it.
"""

from __future__ import annotations

import errno

import time
from pathlib import Path
from typing import Any, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from lamflow.steps.errors import InputError, StepFailed

from .config import DistillConfig, load_config, parse_config
from .distill import DistillReport, run_distill
from .run_lock import run_lock
from .resources import LIGHT_STEPS
from .runner import StepCall, StepRecord, execute, lookup

#: how often a parent polls a dispatched step's flow run (seconds)
POLL_SECONDS = 2.0


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Bad input fails the same way every time, and a full disk does not empty itself within a
    retry delay: retrying either only wastes time."""
    try:
        state.result()
    except InputError:
        return False
    except OSError as exc:
        return exc.errno not in (errno.ENOSPC, errno.EDQUOT)
    except BaseException:
        return True
    return True


@task(name="step", cache_policy=NO_CACHE, persist_result=False)
def step_task(step: str, params: dict[str, Any], threads: int | None) -> dict[str, Any]:
    record = execute(step, params, threads)
    return {"seconds": record.seconds, "cached": record.cached, "result": record.result,
            "finished": record.finished}


@task(name="dispatch", cache_policy=NO_CACHE, persist_result=False)
def dispatch_task(step: str, params: dict[str, Any], threads: int | None, deployment: str,
                  job_variables: dict[str, Any], label: str) -> dict[str, Any]:
    """Run a step as a flow run of ``deployment`` (its own pod) and return its record."""
    started = time.time()
    run = run_deployment(deployment, parameters={"step": step, "params": params, "threads": threads},
                         job_variables=job_variables, flow_run_name=label, poll_interval=POLL_SECONDS)
    if run.state is None or not run.state.is_completed():
        kind = run.state.type.value if run.state else "UNKNOWN"
        raise StepFailed(f"{label}: flow run '{run.name}' on {deployment} ended {kind}: "
                         f"{run.state.message if run.state else ''}")
    record = lookup(step, params, threads)
    if record is None:
        raise StepFailed(f"{label}: '{run.name}' on {deployment} completed but its record is not "
                         "visible here — is the run directory shared between the flow and the step?")
    return {"seconds": record.seconds, "cached": record.finished < started, "result": record.result,
            "finished": record.finished}


@flow(name="step", persist_result=False)
def step_flow(step: str, params: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """One step as a flow run of its own: what a dispatched step runs in its pod."""
    record = execute(step, params, threads)
    return {"seconds": record.seconds, "cached": record.cached}


class PrefectRunner:
    """Submits each batch as Prefect tasks, ``max_workers`` at a time.

    ``step_deployment``: dispatch every compute step (not the seconds-long ``LIGHT_STEPS``) to
    this deployment unless its resources name another one.
    """

    def __init__(self, max_workers: int = 1, on_done: Callable[[StepCall, StepRecord], None] | None = None,
                 step_deployment: str | None = None):
        self.max_workers = max_workers
        self.on_done = on_done
        self.step_deployment = step_deployment
        self._pool_variables: dict[str, set[str]] = {}

    def deployment_for(self, call: StepCall) -> str | None:
        if call.resources.deployment:
            return call.resources.deployment
        return None if call.step in LIGHT_STEPS else self.step_deployment

    def _job_variables(self, deployment: str, call: StepCall) -> dict[str, Any]:
        """The step's resources, as the variables the deployment's work pool template declares."""
        if deployment not in self._pool_variables:
            with get_client(sync_client=True) as client:
                dep = client.read_deployment_by_name(deployment)
                pool = client.read_work_pool(dep.work_pool_name)
            props = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
            self._pool_variables[deployment] = set(props)
        wanted = call.resources.job_variables()
        return {k: v for k, v in wanted.items() if k in self._pool_variables[deployment] and v is not None}

    def _submit(self, call: StepCall):
        params = call.params.model_dump(mode="json")
        res = call.resources
        options = dict(task_run_name=call.label.replace("/", " · "), retries=res.retries_for(call.step),
                       retry_delay_seconds=res.retry_delay, timeout_seconds=res.timeout,
                       retry_condition_fn=_retry_unless_bad_input)
        deployment = self.deployment_for(call)
        if deployment is None or lookup(call.step, params, call.threads) is not None:
            return step_task.with_options(name=call.step, **options).submit(call.step, params, call.threads)
        return dispatch_task.with_options(name=f"{call.step}@{deployment}", **options).submit(
            call.step, params, call.threads, deployment, self._job_variables(deployment, call), call.label)

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        records: list[StepRecord] = []
        for start in range(0, len(calls), self.max_workers):
            wave = calls[start : start + self.max_workers]
            futures = [self._submit(call) for call in wave]
            for call, fut in zip(wave, futures):
                out = fut.result()
                rec = StepRecord(call.step, call.label, out["seconds"], out["cached"], out["result"],
                                 out["finished"])
                if self.on_done:
                    self.on_done(call, rec)
                records.append(rec)
        return records


def run_in_flow(
    name: str,
    run: Callable[..., Any],
    cfg: Any,
    run_dir: Path,
    on_batch: Callable[[str], None] | None = None,
    on_iteration: Callable[[DistillReport], None] | None = None,
    on_done: Callable[[StepCall, StepRecord], None] | None = None,
) -> Any:
    """``run(cfg, run_dir, runner, on_batch, on_iteration)`` — the distill loop or the LAM
    pipeline — as a Prefect flow in this process, with the CLI's progress callbacks."""
    out: dict[str, Any] = {}

    @flow(name=name, flow_run_name=cfg.name, persist_result=False)
    def wrapper() -> None:
        out["report"] = run(cfg, run_dir, PrefectRunner(cfg.max_workers, on_done), on_batch, on_iteration)

    wrapper()
    return out["report"]


def _lam_config_from(config: str | dict[str, Any]):
    from .lam_config import load_lam_config, parse_lam_config

    if isinstance(config, dict):
        return parse_lam_config(config, Path.cwd(), "config")
    return load_lam_config(Path(config))


@flow(name="lam", persist_result=False)
def lam_flow(config: str | dict[str, Any], workdir: str | None = None,
             step_deployment: str | None = None) -> dict[str, Any]:
    """The full pipeline (label → pretrain → finetune → distill): ``prefect deployment run 'lam/local'``."""
    from dataclasses import asdict

    from .lam import run_lam

    cfg = _lam_config_from(config)
    runner = PrefectRunner(cfg.max_workers, step_deployment=step_deployment)
    with run_lock(cfg.run_dir(workdir)):
        return asdict(run_lam(cfg, cfg.run_dir(workdir), runner))


def config_from(config: str | dict[str, Any]) -> DistillConfig:
    """A flow parameter: a config file's path, or the config itself (paths relative to the cwd)."""
    if isinstance(config, dict):
        return parse_config(config, Path.cwd(), "config")
    return load_config(Path(config))


@flow(name="distill", persist_result=False)
def distill_flow(config: str | dict[str, Any], workdir: str | None = None,
                 step_deployment: str | None = None) -> dict[str, Any]:
    """The deployable flow: ``prefect deployment run 'distill/local' -p config=path.yaml``.

    ``step_deployment`` (e.g. ``step/k8s-gpu``) runs each compute step as its own flow run
    there, with the step's resources; without it every step runs in this flow's process.
    """
    cfg = config_from(config)
    run_dir = cfg.run_dir(workdir)
    runner = PrefectRunner(cfg.max_workers, step_deployment=step_deployment)
    with run_lock(run_dir):
        return run_distill(cfg, run_dir, runner).as_dict()
