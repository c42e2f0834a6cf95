"""The Prefect engine: each step a Prefect task, the loop a Prefect flow.

Without ``PREFECT_API_URL`` the flow reports to Prefect's temporary server, which lamflow starts
for the run so that it dies with it (:func:`~lamflow.flows.engines.prefect.server.temporary_api`):
lamflow's embedded default. With it, the same flow reports to a Prefect server and its UI, and
``prefect.yaml`` deploys it (``distill/local``, ``distill/k8s-gpu``).

Resume. Prefect's own result caching is off: every step is cached by lamflow's content hash
(:mod:`lamflow.flows.core.records`), and its record lives next to its output in the run directory. A
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

import time
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from lamflow.steps.errors import StepFailed

from lamflow.flows.core.execute import execute, lookup
from lamflow.flows.core.policy import retryable
from lamflow.flows.core.records import StepCall, StepRecord
from lamflow.flows.core import stopping
from lamflow.flows.core.resources import LIGHT_STEPS, Resources
from lamflow.flows.core.run_lock import run_lock
from lamflow.flows.executors import run_step, submitted
from lamflow.flows.pipelines import load_any, parse_any

from .artifacts import publish_iteration, publish_outcome
from .server import temporary_api

#: how often a parent polls a dispatched step's flow run (seconds)
POLL_SECONDS = 2.0


def retry_condition(task, task_run, state) -> bool:
    """The core's retry policy (:func:`~lamflow.flows.core.policy.retryable`) as Prefect's hook."""
    try:
        state.result()
    except BaseException as exc:
        return retryable(exc)
    return True


@task(name="step", cache_policy=NO_CACHE, persist_result=False)
def step_task(step: str, params: dict[str, Any], resources: dict[str, Any] | None, label: str = "") -> dict[str, Any]:
    record = run_step(step, params, Resources.model_validate(resources or {}), label)
    record.label = label or record.label
    get_run_logger().info(record.summary())  # the UI's Logs tab: ran, or read back, and what came out
    return record.to_json()


@task(name="dispatch", cache_policy=NO_CACHE, persist_result=False)
def dispatch_task(step: str, params: dict[str, Any], resources: dict[str, Any] | None, deployment: str,
                  job_variables: dict[str, Any], label: str) -> dict[str, Any]:
    """Run a step as a flow run of ``deployment`` (its own pod) and return its record."""
    started = time.time()
    run = run_deployment(deployment, parameters={"step": step, "params": params, "resources": resources},
                         job_variables=job_variables, flow_run_name=label, poll_interval=POLL_SECONDS)
    if run.state is None or not run.state.is_completed():
        kind = run.state.type.value if run.state else "UNKNOWN"
        raise StepFailed(f"{label}: flow run '{run.name}' on {deployment} ended {kind}: "
                         f"{run.state.message if run.state else ''}")
    record = lookup(step, params)
    if record is None:
        raise StepFailed(f"{label}: '{run.name}' on {deployment} completed but its record is not "
                         "visible here — is the run directory shared between the flow and the step?")
    record.cached = record.finished < started
    record.label = label
    get_run_logger().info(f"{record.summary()} [flow run {run.name} on {deployment}]")
    return record.to_json()


@flow(name="step", persist_result=False)
def step_flow(step: str, params: dict[str, Any], resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """One step as a flow run of its own: what a dispatched step runs in its pod."""
    record = execute(step, params, Resources.model_validate(resources or {}))
    get_run_logger().info(record.summary())
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
        wanted = call.resources.pod(call.step).job_variables()  # the one policy, as under Argo
        return {k: v for k, v in wanted.items() if k in self._pool_variables[deployment]}

    def _submit(self, call: StepCall):
        params = call.params.model_dump(mode="json")
        res = call.resources
        resources = res.model_dump(mode="json", exclude_defaults=True)
        options = dict(task_run_name=call.label.replace("/", " · "), retries=res.retries_for(call.step),
                       retry_delay_seconds=res.retry_delay, timeout_seconds=res.timeout,
                       retry_condition_fn=retry_condition)
        deployment = self.deployment_for(call)
        if deployment is None or lookup(call.step, params) is not None:
            return step_task.with_options(name=call.step, **options).submit(call.step, params, resources, call.label)
        return dispatch_task.with_options(name=f"{call.step}@{deployment}", **options).submit(
            call.step, params, resources, deployment, self._job_variables(deployment, call), call.label)

    def width(self, calls: list[StepCall]) -> int:
        """Calls submitted at once. Steps that run here go ``max_workers`` at a time (this
        machine's cores); a batch dispatched to deployments goes out whole, and the work pool's
        concurrency limit (``prefect work-pool set-concurrency-limit``) paces it on the cluster; so
        does a batch of batch jobs (``executor``), paced by their scheduler."""
        if calls and all(self.deployment_for(call) is not None or submitted(call.resources) for call in calls):
            return len(calls)
        return self.max_workers

    def map(self, calls: list[StepCall]) -> list[StepRecord]:
        records: list[StepRecord] = []
        width = self.width(calls)
        for start in range(0, len(calls), width):
            wave = calls[start : start + width]
            futures = [self._submit(call) for call in wave]
            for call, fut in zip(wave, futures):
                rec = StepRecord.from_json(fut.result())
                rec.label = call.label
                if self.on_done:
                    self.on_done(call, rec)
                records.append(rec)
        return records


def _told(pipeline: Any, cfg: Any, run_dir: Path, runner: PrefectRunner, on_server: bool,
          on_batch: Callable[[str], None] | None = None, on_iteration: Callable[[Any], None] | None = None) -> Any:
    """``pipeline.run`` inside a flow run, its story published as the flow run's artifacts
    (:mod:`.artifacts`): the table after each iteration, the table and summary at the end, also
    when it fails. Publishing never fails the run; a warning in the run's log says it failed."""
    def iteration_done(report: Any) -> None:
        if on_iteration:
            on_iteration(report)
        _quietly(publish_iteration, pipeline, cfg, report)

    try:
        report = pipeline.run(cfg, run_dir, runner, on_batch, iteration_done)
    except Exception as exc:
        try:
            partial = pipeline.read_report(run_dir)
        except Exception:  # failed before its report was first written: nothing to tell
            partial = None
        if partial is not None:
            _quietly(publish_outcome, pipeline, cfg, partial, run_dir, on_server, failed=str(exc)[:500])
        raise
    _quietly(publish_outcome, pipeline, cfg, report, run_dir, on_server)
    return report


def _quietly(publish: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        publish(*args, **kwargs)
    except Exception as exc:  # the UI's extras must never cost a run
        get_run_logger().warning(f"could not publish the run's artifacts: {type(exc).__name__}: {exc}")


def run_pipeline(pipeline: Any, cfg: Any, run_dir: Path, hooks: Any) -> Any:
    """The pipeline as a Prefect flow in this process (embedded, or on ``PREFECT_API_URL``'s
    server), with the CLI's progress hooks: the engine's entry in the registry."""
    from prefect.settings import PREFECT_API_URL

    out: dict[str, Any] = {}
    on_server = bool(PREFECT_API_URL.value())  # else a temporary server: no address to keep

    @flow(name=pipeline.name, flow_run_name=cfg.name, persist_result=False)
    def wrapper() -> None:
        stopping.reclaim()  # Prefect's SIGTERM handler would wait for the running steps to end
        out["report"] = _told(pipeline, cfg, run_dir, PrefectRunner(cfg.max_workers, hooks.on_done), on_server,
                              hooks.on_batch, hooks.on_iteration)

    with temporary_api():
        wrapper()
    return out["report"]


def _deployed(name: str, config: str | dict[str, Any], workdir: str | None, step_deployment: str | None) -> Any:
    """A pipeline run by a deployment: ``config`` is a file's path or the config mapping itself
    (its relative paths relative to the working directory)."""
    if isinstance(config, dict):
        pipeline, cfg = parse_any(config, Path.cwd(), expect=name)
    else:
        pipeline, cfg = load_any(Path(config), expect=name)
    run_dir = cfg.run_dir(workdir)
    with run_lock(run_dir):
        return _told(pipeline, cfg, run_dir, PrefectRunner(cfg.max_workers, step_deployment=step_deployment),
                     on_server=True)


def _as_dict(report: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(report)


@flow(name="distill", persist_result=False)
def distill_flow(config: str | dict[str, Any], workdir: str | None = None,
                 step_deployment: str | None = None) -> dict[str, Any]:
    """The deployable flow: ``prefect deployment run 'distill/local' -p config=path.yaml``.

    ``step_deployment`` (e.g. ``step/k8s-gpu``) runs each compute step as its own flow run
    there, with the step's resources; without it every step runs in this flow's process.
    """
    return _as_dict(_deployed("distill", config, workdir, step_deployment))


@flow(name="lam", persist_result=False)
def lam_flow(config: str | dict[str, Any], workdir: str | None = None,
             step_deployment: str | None = None) -> dict[str, Any]:
    """The full pipeline (label → pretrain → finetune → distill): ``prefect deployment run 'lam/local'``."""
    return _as_dict(_deployed("lam", config, workdir, step_deployment))


@flow(name="version", persist_result=False)
def version_flow(config: str | dict[str, Any], workdir: str | None = None,
                 step_deployment: str | None = None) -> dict[str, Any]:
    """Model versions (each verified dataset a new version, scored on the standard datasets):
    ``prefect deployment run 'version/local'``; after a dataset is added to the config, the same
    command trains only the new version."""
    return _deployed("version", config, workdir, step_deployment).model_dump(mode="json")

