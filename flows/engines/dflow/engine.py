"""The dflow engine: the same loop as an Argo Workflow of containerised steps (or dflow's local
debug mode where no cluster exists).

Argo wants a static DAG; the distillation decides its next steps from its results (how many
frames to label, whether the student converged). dpgen2 solves this with a hand-written
recursive ``Steps`` template per stage. lamflow uses the pattern once, generically::

    advance(level):  plan ─▶ [explore | select | teacher_label | train | ... ]  ─▶ advance(level+1)
                             (one runs: Slices fan-out over the planned calls)      when not done

``plan`` replays :func:`~lamflow.flows.pipelines.distill.loop.run_distill` (or the LAM pipeline) with a
:class:`~lamflow.flows.core.runner.PlanningRunner`: finished batches come back from their step
records, the first unfinished batch is returned as the calls to fan out. So the loop stays
written once in Python for every engine, each batch becomes one Argo fan-out with its own
image, GPU and retries, and the recursion ends when the loop does (``when: done == false``).

Every step kind is a dflow ``OP`` generated from the step registry (no per-step classes): its
input is the planned call (the step's pydantic parameters as JSON, validated in the pod), its
outputs are the step's result fields plus ``cached``. Steps exchange paths in the run
directory, which pods share on a ReadWriteMany volume (``/runs``), exactly like the Prefect
Kubernetes deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from dflow import InputParameter, Step, Steps, Workflow
from dflow import config as dflow_config
from dflow.python import (OP, OPIO, Artifact, FatalError, OPIOSign, Parameter, PythonOPTemplate, Slices,
                          TransientError)

from lamflow.steps.errors import InputError, StepFailed
from lamflow.steps.registry import STEPS

from lamflow.flows.core.execute import execute
from lamflow.flows.core.policy import retryable
from lamflow.flows.core.resources import LIGHT_STEPS, Resources
from lamflow.flows.core.runner import FailedReplay, Pending, PlanningRunner
from lamflow.flows.executors import run_step
from lamflow.flows.pipelines import PIPELINES

from .forkserver import CLIENT as FORK_CLIENT
from .forkserver import forking

RUNS_MOUNT = "/runs"


# --- OPs ------------------------------------------------------------------------------------


def _step_op(step: str) -> type[OP]:
    """The dflow OP of a registered step: ``call`` in, the step's result fields out."""
    spec = STEPS[step]

    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"call": Parameter(dict, description=f"{spec.params.__name__} as JSON, and resources")})

    def get_output_sign(cls) -> OPIOSign:
        fields = {name: Parameter(object, default=None) for name in spec.result.model_fields}
        return OPIOSign({**fields, "cached": Parameter(bool), "seconds": Parameter(float)})

    @OP.exec_sign_check
    def execute_op(self, ip: OPIO) -> OPIO:
        call = ip["call"]
        try:
            record = run_step(step, call["params"], Resources.model_validate(call.get("resources") or {}),
                              call.get("label", step))
        except Exception as exc:
            raise _policy_error(call.get("label", step), exc) from exc
        self.finished = True
        return OPIO({**record.to_json()["result"], "cached": record.cached, "seconds": float(record.seconds)})

    name = "".join(part.title() for part in step.split("_")) + "OP"
    cls = type(name, (QuickExit,), {"__doc__": spec.doc, "__module__": __name__, "__qualname__": name,
                                    "get_input_sign": classmethod(get_input_sign),
                                    "get_output_sign": classmethod(get_output_sign), "execute": execute_op})
    return cls


def _policy_error(label: str, exc: Exception) -> Exception:
    """The core's retry policy, in the exit codes Argo's retryStrategy reads."""
    kind = TransientError if retryable(exc) else FatalError
    return kind(f"{label}: {exc}")


class QuickExit(OP):
    """An OP whose process ends as soon as its outputs are written.

    A step's pod (in debug mode, its process) is a Python that ran one step: with torch,
    deepmd-kit and LAMMPS loaded, the interpreter's own teardown takes ~1.3 s (measured on 2
    cores) after the step's record and outputs are on disk, once per step and planning level.
    Only a successful OP run by dflow's generated script (its ``op_obj``) leaves early: a failure
    keeps the script's exit code and traceback, and a test calling the OP keeps its process.
    """

    finished = False

    def handle_outputs(self, outputs, symlink=False):
        done = super().handle_outputs(outputs, symlink)
        if self.finished and getattr(sys.modules.get("__main__"), "op_obj", None) is self:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return done


#: one OP class per step, importable by name (``lamflow.flows.engines.dflow.engine.ExploreOP``) so that
#: pods and debug-mode worker processes import them instead of unpickling them
STEP_OPS: dict[str, type[OP]] = {step: _step_op(step) for step in STEPS}
globals().update({cls.__name__: cls for cls in STEP_OPS.values()})


def _replay(flow: str, config: dict[str, Any], run_dir: str, check_inputs: bool,
            runner: PlanningRunner | None = None) -> Any:
    """Run the pipeline ``flow`` with the planning runner."""
    pipeline = PIPELINES[flow]
    return pipeline.run(pipeline.config.model_validate(config), Path(run_dir), runner or PlanningRunner(),
                        check_inputs=check_inputs)


def runs_in_planner(call: Any) -> bool:
    """A seconds-long step (:data:`~lamflow.flows.core.resources.LIGHT_STEPS`) that asks for
    nothing a pod of its own would give it: no GPU, no batch job, no image of its own. Its own
    pod would cost more than it computes: in debug mode two Python processes and a planning
    level (~5 s, measured), on Argo a pod start."""
    res = call.resources
    return call.step in LIGHT_STEPS and res.pod(call.step).gpu == 0 and res.executor is None and res.image is None


class InliningPlanner(PlanningRunner):
    """The planner's runner: a batch of light steps (:func:`runs_in_planner`) runs here, in the
    planner, and the replay goes on; any other batch is returned to be fanned out. The steps
    leave the same records and outputs as in a pod of their own; in Argo they are part of their
    planning level's pod."""

    def run_missing(self, calls: list[Any]) -> list[Any]:
        if not all(runs_in_planner(c) for c in calls):
            return super().run_missing(calls)
        records = []
        for c in calls:
            try:
                records.append(execute(c.step, c.params, c.resources))
            except Exception as exc:
                raise _policy_error(c.label, exc) from exc
        return records


class PlanOP(QuickExit):
    """Replays the loop from the step records; the next batch to fan out, or done.

    Only the first level checks the inputs (preflight): later levels re-enter a run whose
    inputs were already checked, and re-checking cost one teacher evaluation per level.

    ``planned`` is the batch the previous level fanned out. A step that succeeded always leaves
    its record, so planning the same batch twice in a row means its steps were reused from an
    old workflow by key (``lamflow resume``) while their records are gone from the run
    directory: reused again, they would be planned forever. That stops with one line instead.
    """

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"flow": str, "config": dict, "run_dir": str, "level": int,
                         "planned": Parameter(list, default=[])})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"done": bool, "step": str, "calls": list, "batch": list, "next_level": int, "status": str})

    @OP.exec_sign_check
    def execute(self, ip: OPIO) -> OPIO:
        try:
            report = _replay(ip["flow"], ip["config"], ip["run_dir"], check_inputs=ip["level"] == 0,
                             runner=InliningPlanner())
        except Pending as pending:
            # a level fans out one step kind (one template); a batch of several kinds takes a
            # level per kind, the replay returning what is left
            todo = [c for c in pending.calls if c.step == pending.calls[0].step]
            calls = [{"params": c.params.model_dump(mode="json"), "label": c.label,
                      "resources": c.resources.model_dump(mode="json", exclude_defaults=True)}
                     for c in todo]
            batch = [{"index": i, "key": key} for i, key in enumerate(step_keys(todo, Path(ip["run_dir"])))]
            if batch == ip["planned"]:
                raise FatalError(f"{batch[0]['key']}: reused from the resumed workflow, but its record is not in "
                                 f"{ip['run_dir']} (deleted, or another volume): resume with --from-iteration "
                                 "to run it again, or submit the config afresh")
            self.finished = True
            return OPIO({"done": False, "step": todo[0].step, "calls": calls, "batch": batch,
                         "next_level": ip["level"] + 1, "status": "running"})
        self.finished = True
        return OPIO({"done": True, "step": "none", "calls": [], "batch": [], "next_level": ip["level"] + 1,
                     "status": report.status})


def step_keys(calls: list[Any], run_dir: Path) -> list[str]:
    """The Argo key of each planned call: its output's path in the run directory, in dashes
    (``iter-001-explore-task-003``, ``distill-iter-000-train-00``), so that the Argo UI, dflow's
    debug folders and ``reuse_step`` name a step by its iteration and task. Outputs are unique in
    a run (each is where its step's record lives), and so are the keys."""
    keys = []
    for call in calls:
        output = Path(call.params.output)
        try:
            where = output.relative_to(run_dir).with_suffix("") if output.is_absolute() else output
        except ValueError:  # an output outside the run directory (a package, a user's folder)
            where = Path(call.label)
        keys.append(re.sub(r"[^a-z0-9]+", "-", str(where).lower()).strip("-") or call.step)
    return keys


class StageOP(QuickExit):
    """Puts the inputs uploaded at submission (:mod:`.staging`) into ``RUN_DIR/inputs``, where
    the staged config points. A resubmission overwrites them: the config names what it staged."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"inputs": Artifact(Path), "run_dir": str})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"files": list})

    @OP.exec_sign_check
    def execute(self, ip: OPIO) -> OPIO:
        import shutil

        from .staging import INPUTS

        dest = Path(ip["run_dir"]) / INPUTS
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for item in sorted(Path(ip["inputs"]).iterdir()):
            if item.is_dir():
                shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dest / item.name)
            names.append(item.name)
        self.finished = True
        return OPIO({"files": names})


# --- the workflow ----------------------------------------------------------------------------


@dataclass
class ArgoSettings:
    """Where and how an Argo workflow runs (from CLI flags or ``LAMFLOW_ARGO_*`` / dflow's env)."""

    host: str | None = None
    token: str | None = None
    namespace: str | None = None
    runs_claim: str = "lamflow-runs"
    image_pull_secrets: list[str] = field(default_factory=list)  # names of docker-registry Secrets
    s3: dict[str, str] = field(default_factory=dict)  # endpoint, access_key, secret_key, bucket_name
    #: tasks of the workflow running at once; None: no limit (the cluster's quotas and the fan-out
    #: decide), not the local engine's ``max_workers``
    parallelism: int | None = None
    #: Kubernetes Secret holding the SSH key of the steps run as batch jobs (see :func:`for_pods`)
    ssh_secret: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> "ArgoSettings":
        env = os.environ.get
        s3 = {k: env(f"LAMFLOW_S3_{k.upper()}") for k in ("endpoint", "access_key", "secret_key", "bucket_name")}
        parallelism = env("LAMFLOW_ARGO_PARALLELISM")
        if parallelism is not None and not parallelism.strip().isdigit():
            raise InputError("LAMFLOW_ARGO_PARALLELISM", f"expected a positive whole number, got {parallelism!r}")
        base = cls(host=env("LAMFLOW_ARGO_HOST"), token=env("LAMFLOW_ARGO_TOKEN"),
                   namespace=env("LAMFLOW_ARGO_NAMESPACE"), runs_claim=env("LAMFLOW_RUNS_CLAIM", "lamflow-runs"),
                   image_pull_secrets=[n for n in env("LAMFLOW_IMAGE_PULL_SECRETS", "").split(",") if n],
                   s3={k: v for k, v in s3.items() if v},
                   parallelism=int(parallelism) if parallelism else None,
                   ssh_secret=env("LAMFLOW_ARGO_SSH_SECRET") or None)
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        if base.token and base.token.lower().startswith("bearer "):
            base.token = base.token[7:].strip()  # `argo auth token` prints "Bearer …"; dflow adds its own
        if base.parallelism is not None and base.parallelism < 1:
            raise InputError("--parallelism", f"expected at least 1 (leave it out for no limit), got {base.parallelism}")
        return base

    def apply(self) -> None:
        """Into dflow's ``config``/``s3_config``, the way dflow expects them."""
        from dflow import s3_config

        for key in ("host", "token", "namespace"):
            if getattr(self, key):
                dflow_config[key] = getattr(self, key)
        for key, value in self.s3.items():
            if key == "endpoint" and "://" in value:  # dflow's MinIO client wants host:port
                s3_config["secure"] = value.startswith("https")
                value = value.split("://", 1)[1]
            s3_config[key] = value


#: dflow settings that authenticate someone (the Argo token, S3 keys, passwords, private keys)
SECRET_SETTING = re.compile(r"token|secret|password|passphrase|access_key|private_key|authorization", re.IGNORECASE)


@contextlib.contextmanager
def credentials_hidden() -> Iterator[None]:
    """Blank every credential in dflow's settings while step templates are rendered.

    dflow writes its whole ``config`` and ``s3_config`` into the script of every step template,
    so a Workflow built with the submitter's token or S3 keys in those settings carries them in
    plain text, once per step kind, for anyone who can read workflows in the namespace. The pods
    need none of them: steps exchange paths on the shared volume, not dflow artifacts. The token
    only authenticates the submission (the Workflow's API client); Secrets give pods the rest.
    """
    from dflow import s3_config

    saved = [(settings, dict(settings)) for settings in (dflow_config, s3_config)]
    for settings, values in saved:
        for key in values:
            if SECRET_SETTING.search(key):
                settings[key] = None
        headers = settings.get("http_headers")
        if isinstance(headers, dict):
            settings["http_headers"] = {k: v for k, v in headers.items() if not SECRET_SETTING.search(k)}
    try:
        yield
    finally:
        for settings, values in saved:
            settings.clear()
            settings.update(values)


def _template(step: str, cfg: Any, claim: str | None) -> PythonOPTemplate:
    """The container of one step kind: image, requests, GPU, retries, timeout from its resources.

    A step run as a batch job (``executor``, over SSH: :func:`for_pods`) waits in a light pod
    that holds the SSH key; the job has the step's timeout, and lamflow's executor its retries
    (Argo retrying the pod as well would submit the job again after the executor gave up)."""
    op = {"plan": PlanOP, "stage": StageOP}.get(step) or STEP_OPS[step]
    res = cfg.resources_for("plan" if step == "stage" else step)  # staging: a light CPU pod as planning
    if step in ("plan", "stage"):  # no step: never a batch job, whatever ``default`` sends to one
        res = res.model_copy(update={"executor": None})
    job = res.executor
    pod = res.pod(step)  # the one policy: the same GPU, image, CPU and memory as under Prefect
    requests = {"cpu": f"{pod.cpu:g}", "memory": pod.memory}
    if pod.gpu:
        requests["nvidia.com/gpu"] = str(pod.gpu)
    limits = {k: v for k, v in requests.items() if k != "cpu"}
    kwargs: dict[str, Any] = {}
    if claim:  # on a cluster: the shared run directory volume, scheduling constraints
        from kubernetes.client import (V1PersistentVolumeClaimVolumeSource, V1SecretVolumeSource, V1Toleration,
                                       V1Volume, V1VolumeMount)

        volumes = [V1Volume(name="runs", persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
            claim_name=claim))]
        mounts = [V1VolumeMount(name="runs", mount_path=RUNS_MOUNT)]
        secret = ssh_secret_of(job) if job is not None else None
        if secret:
            volumes.append(V1Volume(name="ssh-key", secret=V1SecretVolumeSource(secret_name=secret,
                                                                                default_mode=0o400)))
            mounts.append(V1VolumeMount(name="ssh-key", mount_path=str(SSH_MOUNT / secret), read_only=True))
        kwargs = dict(volumes=volumes, mounts=mounts, node_selector=pod.node_selector or None,
                      tolerations=[V1Toleration(**t) for t in pod.tolerations] or None)
    timeout = int(res.timeout) if res.timeout and job is None else None
    return PythonOPTemplate(
        op, image=pod.image, requests=requests, limits=limits, timeout=timeout,
        # the core's retry policy: FatalError (exit 2: bad input, full disk) is never retried;
        # a TransientError, a kill or a timeout is, up to the step's retries
        retry_on_transient_error=(res.retries_for(step) or None) if job is None else None,
        timeout_as_transient_error=True,
        upload_dflow=False,
        envs={"OMP_NUM_THREADS": str(res.threads)},
        slices=None if step in ("plan", "stage") else Slices(slices="{{item.index}}", input_parameter=["call"]),
        # debug mode runs each step's script here, with this interpreter (not whatever python3
        # is), forked from a warm one where the run started a fork server (.forkserver)
        command=None if claim else [sys.executable, str(FORK_CLIENT)],
        **kwargs,
    )


#: where a pod finds the SSH key of a step run as a batch job: the Secret named by ``--ssh-secret``
#: is mounted at ``SSH_MOUNT/SECRET``, so the config the pods get names its Secret (a resume needs
#: no flag to find it again)
SSH_MOUNT = PurePosixPath("/etc/lamflow/ssh")


def ssh_secret_of(executor: Any) -> str | None:
    """The Secret a pod reads ``executor``'s SSH key from (see :data:`SSH_MOUNT`), if any."""
    key = PurePosixPath(str(executor.remote_profile.get("key_filename") or ""))
    return key.parent.name if key.parent.parent == SSH_MOUNT else None


def for_pods(cfg: Any, ssh_secret: str | None) -> Any:
    """``cfg`` as the pods of an Argo workflow run it, with its batch executors checked.

    A step's pod has no scheduler: it submits its job over SSH to the cluster's login node
    (``SSHContext``; inputs uploaded, outputs downloaded, as from a laptop). Its key comes from
    the Kubernetes Secret ``ssh_secret``, mounted read-only; a password or passphrase in the
    config would be written into the Workflow in plain text, for anyone who can read it, and is
    refused."""
    changed = {}
    for name, res in cfg.resources.items():
        ex = res.executor
        if ex is None:
            continue
        where = f"resources.{name}.executor"
        if ex.context_type != "SSHContext":
            raise InputError(f"{where}.context_type", "on Argo a step's pod submits its job over SSH to the "
                             "cluster's login node: SSHContext (LocalContext submits from a login node: run "
                             "lamflow there with --engine local, prefect or dflow)")
        exposed = [k for k in ex.remote_profile if SECRET_SETTING.search(k)]
        if exposed:
            raise InputError(f"{where}.remote_profile.{exposed[0]}", "would be written into the Workflow in plain "
                             "text: the pods log in with a key without a passphrase, from the Secret --ssh-secret")
        key = ex.remote_profile.get("key_filename")
        if not key:
            raise InputError(f"{where}.remote_profile.key_filename", "required on Argo: the SSH key the pods "
                             "read from the Secret named by --ssh-secret")
        key_name = PurePosixPath(str(key)).name
        secret = ssh_secret or ssh_secret_of(ex)
        if not secret:
            raise InputError("--ssh-secret", f"{where} logs in over SSH with {key}: give the pods that key as a "
                             f"Secret (kubectl create secret generic lamflow-ssh --from-file={key_name}="
                             f"{os.path.expanduser(str(key))}) and "
                             "name it with --ssh-secret or LAMFLOW_ARGO_SSH_SECRET")
        profile = {**ex.remote_profile, "key_filename": str(SSH_MOUNT / secret / key_name)}
        changed[name] = res.model_copy(update={"executor": ex.model_copy(update={"remote_profile": profile})})
    return cfg.model_copy(update={"resources": {**cfg.resources, **changed}}) if changed else cfg


def build_workflow(flow: str, cfg: Any, run_dir: Path, cluster: bool = False,
                   settings: ArgoSettings | None = None, staged: Any = None) -> Workflow:
    """The workflow of ``flow`` (``distill`` or ``lam``) for ``cfg``, writing to ``run_dir``;
    ``staged``: the artifact of inputs uploaded at submission, put into place first."""
    settings = settings or ArgoSettings()
    claim = settings.runs_claim if cluster else None
    if cluster:
        cfg = for_pods(cfg, settings.ssh_secret)
    with credentials_hidden():
        advance = _advance(cfg, claim)
    pull_secrets = None
    if cluster and settings.image_pull_secrets:
        from argo.workflows.client import V1LocalObjectReference

        pull_secrets = [V1LocalObjectReference(name=n) for n in settings.image_pull_secrets]
    # on a cluster the fan-out is limited by settings.parallelism (default: none), in debug mode
    # by the local max_workers (the processes of this machine)
    wf = Workflow(name=f"lamflow-{flow}-{cfg.name}".lower().replace("_", "-"),
                  parallelism=settings.parallelism if cluster else cfg.max_workers,
                  image_pull_secrets=pull_secrets)
    if staged is not None:
        with credentials_hidden():
            stage = _template("stage", cfg, claim)
        wf.add(Step("stage", template=stage, artifacts={"inputs": staged},
                    parameters={"run_dir": str(run_dir)}, key="stage-inputs"))
    wf.add(Step("start", template=advance, parameters={
        "flow": flow, "config": cfg.model_dump(mode="json", by_alias=True), "run_dir": str(run_dir),
        "level": 0}))
    return wf


def _advance(cfg: Any, claim: str | None) -> Steps:
    """The recursive ``advance`` template: plan, fan out the planned batch, advance again."""
    steps_used = sorted(STEPS)
    advance = Steps("advance")
    for name in ("flow", "config", "run_dir", "level"):
        advance.inputs.parameters[name] = InputParameter()
    advance.inputs.parameters["planned"] = InputParameter(value=[])
    level = advance.inputs.parameters["level"]
    plan = Step("plan", template=_template("plan", cfg, claim), key=f"plan-{level}",
                parameters={k: advance.inputs.parameters[k] for k in ("flow", "config", "run_dir", "level", "planned")})
    advance.add(plan)
    calls, kind = plan.outputs.parameters["calls"], plan.outputs.parameters["step"]
    # one item per planned call: its index in ``calls`` (the slice the pod runs) and its key;
    # one step per kind, of which the planned one runs
    fan_out = [Step(step.replace("_", "-"), template=_template(step, cfg, claim), parameters={"call": calls},
                    with_param=plan.outputs.parameters["batch"], when=f"{kind} == {step}", key="{{item.key}}")
               for step in steps_used]
    if claim:
        advance.add(fan_out)  # one group: one row of skipped steps per level in Argo's UI
    else:
        # debug mode hands each member of a group to a worker process with a copy of the whole
        # template (~0.2 s per skipped kind and level, measured); in sequence it skips them here
        for step in fan_out:
            advance.add(step)
    advance.add(Step("next", template=advance, when=f"{plan.outputs.parameters['done']} == false",
                     parameters={"flow": advance.inputs.parameters["flow"],
                                 "config": advance.inputs.parameters["config"],
                                 "run_dir": advance.inputs.parameters["run_dir"],
                                 "level": plan.outputs.parameters["next_level"],
                                 "planned": plan.outputs.parameters["batch"]}))
    return advance


# --- running, exporting, resuming --------------------------------------------------------------


@contextlib.contextmanager
def dflow_mode(mode: str, workdir: Path | None = None, workers: int = 1) -> Iterator[None]:
    """dflow keeps its mode in a module-level dict; set it for one call and put it back.

    ``debug``: no Argo, steps run as local processes, workflows kept in ``workdir``.
    """
    keys = ("mode", "debug_workdir", "debug_pool_workers")
    saved = {k: dflow_config.get(k) for k in keys}
    dflow_config["mode"] = mode
    if mode == "debug":
        workdir.mkdir(parents=True, exist_ok=True)
        dflow_config["debug_workdir"] = str(workdir)
        dflow_config["debug_pool_workers"] = workers
    try:
        yield
    finally:
        dflow_config.update(saved)


def _finish(wf: Workflow, run_dir: Path) -> "DflowRun":
    status = wf.query_status()
    return DflowRun(workflow_id=wf.id, status=status, run_dir=run_dir)


@dataclass
class DflowRun:
    workflow_id: str
    status: str
    run_dir: Path


def run_debug(flow: str, cfg: Any, run_dir: Path) -> DflowRun:
    """Run the workflow here in dflow's debug mode; returns when it has finished or failed."""
    run_dir = Path(run_dir).resolve()
    with dflow_mode("debug", run_dir / "dflow", cfg.max_workers):
        wf = build_workflow(flow, cfg, run_dir)
        _submit_here(wf, run_dir)
        return _finish(wf, run_dir)


def _submit_here(wf: Workflow, run_dir: Path, reuse: list[Any] | None = None) -> None:
    """Submit in debug mode, where the steps run here: their output and dflow's tracebacks of a
    failed step (several screens, one per nesting level) go to ``RUN/dflow/debug.log``, not to
    the terminal, which gets lamflow's one line naming the failed step (from its pod's log)."""
    log = run_dir / "dflow" / "debug.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "a") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                with forking():
                    wf.submit(reuse_step=reuse)
            except RuntimeError:
                pass  # debug mode raises when a step fails; the workflow's status says so
            finally:
                sys.stderr.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def export(flow: str, cfg: Any, run_dir: Path, settings: ArgoSettings | None = None,
           staged: Any = None) -> dict[str, Any]:
    """The Argo ``Workflow`` manifest, without submitting it."""
    with dflow_mode("default"):
        manifest = build_workflow(flow, cfg, run_dir, cluster=True, settings=settings, staged=staged).to_dict()
    manifest.pop("status", None)
    manifest = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", **manifest}  # `argo submit`-able
    for template in manifest["spec"]["templates"]:
        retry = template.get("retryStrategy")
        if retry and isinstance(retry.get("limit"), int):
            retry["limit"] = str(retry["limit"])  # IntOrString: Argo's schema wants the string form
    return manifest


def submit(flow: str, cfg: Any, run_dir: Path, settings: ArgoSettings, staged: Any = None) -> str:
    settings.apply()
    with dflow_mode("default"):
        wf = build_workflow(flow, cfg, run_dir, cluster=True, settings=settings, staged=staged)
        wf.submit()
        return wf.id


def _inputs_of_start(wf: Workflow) -> dict[str, Any]:
    plan = wf.query_step(key="plan-0")
    if not plan:
        raise InputError(f"workflow {wf.id}", "has no planner step: not a lamflow workflow")
    params = plan[0].inputs.parameters
    return {k: _plain(params[k].value) for k in ("flow", "config", "run_dir")}


def _plain(value: Any) -> Any:
    """A step parameter as plain Python: Argo gives JSON text, debug mode dflow's dict wrappers."""
    if isinstance(value, (str, bytes)):
        with contextlib.suppress(ValueError):
            return json.loads(value)
        return value
    return value.recover() if hasattr(value, "recover") else value


def _mode_of(workflow_id: str, workdir: Path | None, settings: ArgoSettings | None) -> Any:
    """dflow's mode for an existing workflow: debug mode in ``workdir``'s ``dflow`` folder, else
    the Argo server of ``settings`` (or of the environment)."""
    if workdir is not None:
        wf_dir = Path(workdir).resolve() / "dflow"
        if not (wf_dir / workflow_id).is_dir():
            raise InputError(workflow_id, f"no such workflow in {wf_dir}")
        return dflow_mode("debug", wf_dir)
    (settings or ArgoSettings.from_env()).apply()
    return dflow_mode("default")


@dataclass
class PodStep:
    """One step pod of a workflow, as ``lamflow status WORKFLOW_ID`` shows it."""

    key: str  # where it is in the run: iter-001-explore-task-003
    kind: str  # the step: explore, teacher-label, ...
    phase: str  # Argo's: Pending, Running, Succeeded, Failed, Error
    cached: bool  # read back from its record instead of computed


@dataclass
class WorkflowState:
    workflow_id: str
    status: str
    run_dir: Path  # as the pods see it
    steps: list[PodStep]


def workflow_state(workflow_id: str, workdir: Path | None = None,
                   settings: ArgoSettings | None = None) -> WorkflowState:
    """Where a workflow stands, from Argo (or debug mode's folder): its phase and step pods."""
    with _mode_of(workflow_id, workdir, settings):
        wf = Workflow(id=workflow_id)
        start = _inputs_of_start(wf)
        steps = []
        for s in wf.query_step(type="Pod"):
            if not s.key or s.key.startswith("plan-"):
                continue
            outputs = getattr(getattr(s, "outputs", None), "parameters", None) or {}  # none yet while pending
            cached = outputs["cached"].value if "cached" in outputs else False
            steps.append(PodStep(s.key, str(s.displayName).split("(")[0], s.phase, _plain(cached) is True))
        return WorkflowState(workflow_id, wf.query_status(), Path(start["run_dir"]),
                             sorted(steps, key=lambda p: p.key))


def resume(workflow_id: str, workdir: Path | None = None, settings: ArgoSettings | None = None,
           from_iteration: int | None = None) -> DflowRun:
    """Resubmit a failed workflow, reusing every step that succeeded (dflow's ``reuse_step``).

    ``workdir`` (a run directory) selects debug mode, where the workflow lives in
    ``RUN/dflow/<id>``; without it the workflow is looked up on the Argo server.
    ``from_iteration``: reuse only the steps before that iteration (see :func:`before_iteration`).
    """
    with _mode_of(workflow_id, workdir, settings):
        old = Workflow(id=workflow_id)
        start = _inputs_of_start(old)
        reused = [s for s in old.query_step(phase="Succeeded", type="Pod")
                  if s.key and not s.key.startswith("plan-")]
        if from_iteration is not None:
            reused = before_iteration(reused, from_iteration, workflow_id)
        flow, raw, run_dir = start["flow"], start["config"], Path(start["run_dir"])
        cfg = PIPELINES[flow].config.model_validate(raw)
        wf = build_workflow(flow, cfg, run_dir, cluster=workdir is None, settings=settings)
        if workdir is None:
            wf.submit(reuse_step=reused)
        else:
            _submit_here(wf, run_dir, reused)
        return _finish(wf, run_dir)


#: the iteration in a step's key (``iter-001-explore-task-003``, ``distill-iter-001-select``)
ITERATION_KEY = re.compile(r"(?:^|-)iter-(\d+)-")
#: the steps after the loop (``final-train``, ``distill-final-evaluate``): they follow every iteration
FINAL_KEY = re.compile(r"(?:^|-)final-")


def before_iteration(steps: list[Any], iteration: int, workflow_id: str) -> list[Any]:
    """The steps to reuse when restarting from ``iteration``: those of earlier iterations and
    of the stages before the loop (``init``, a ``lam`` run's datasets and trainings), never the
    final training (it follows the last iteration). The others are not carried over: the planner
    reads back those whose record is in the run directory and plans, and runs, those whose output
    and record are gone (see :class:`PlanOP`'s ``planned``)."""
    found = {int(m.group(1)) for s in steps if (m := ITERATION_KEY.search(s.key))}
    if not found:
        raise InputError("--from-iteration", f"workflow {workflow_id} has no iteration that finished a step "
                         "(a `lamflow version` run has none)")
    if iteration not in range(max(found) + 2):
        raise InputError("--from-iteration", f"workflow {workflow_id} reached iteration {max(found)}: "
                         f"expected 0 to {max(found) + 1}, got {iteration}")
    return [s for s in steps if not (((m := ITERATION_KEY.search(s.key)) and int(m.group(1)) >= iteration)
                                     or FINAL_KEY.search(s.key))]


def pod_error(run: "DflowRun") -> str | None:
    """The error a failed step's pod ended with (debug mode: the last line of its log.txt)."""
    for phase in sorted((run.run_dir / "dflow" / run.workflow_id).glob("*/phase")):
        log = phase.parent / "log.txt"
        if phase.read_text().strip() == "Failed" and log.is_file():
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            if lines:  # "dflow.python...TransientError: v002/train: ...": the message, not the class
                return re.sub(r"^[\w.]+(Error|Exception|Failed): ", "", lines[-1])[:500]
    return None


def run_pipeline(pipeline: Any, cfg: Any, run_dir: Path, hooks: Any) -> Any:
    """The engine's entry in the registry: the workflow in debug mode, then its report. A failed
    workflow is replayed once more with the failure (:class:`FailedReplay`), so its report and
    history say what failed, as under the other engines."""
    run = run_debug(pipeline.name, cfg, run_dir)
    if run.status != "Succeeded":
        error = pod_error(run) or f"workflow {run.workflow_id} {run.status.lower()}"
        with contextlib.suppress(StepFailed):
            _replay(pipeline.name, cfg.model_dump(mode="json", by_alias=True), str(run.run_dir), False,
                    FailedReplay(error))
        raise StepFailed(f"{error}; workflow {run.workflow_id} {run.status.lower()}: fix the cause, then "
                         f"`lamflow resume {run.workflow_id} --workdir {run.run_dir}` reuses every finished step")
    return pipeline.read_report(run.run_dir)
