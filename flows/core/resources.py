"""What a step needs to run: threads here; CPU, memory, GPU, image and retries on a cluster;
where it runs (``executor``: a Slurm/PBS/LSF job instead of this process).

One :class:`Resources` per step name in the config (``resources: {train: {gpu: 1}}``), with
``default`` for the rest. The same object drives every engine: ``execute`` runs every step with
its ``threads``; ``retries`` follow the core's one rule (:mod:`lamflow.flows.core.policy`);
Prefect, when a step is dispatched to its own deployment (its own pod), turns cpu/memory/gpu/image
into that flow run's job variables; dflow turns them into the container's requests. Resources
never enter a step's cache key: where and with what a step runs does not change what it computes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Retries when the config says nothing: the steps that run for hours on a node that may die
#: (training, MD, labelling) get one more attempt; so does the short LAMMPS run that times a
#: model, because LAMMPS with a model's C++ library aborts now and then (a DPA-4 ``.pt2`` speed
#: MD died once of glibc heap corruption in the suite, then ran clean in 39 reruns, 16 of them
#: two at a time) and it keeps nothing a rerun would lose; so does ``stability``'s NVE run, which
#: records a model that loses atoms as its finding (score 5) but raises when LAMMPS crashed (killed
#: by a signal without an error of its own). Fast, deterministic steps get none.
DEFAULT_RETRIES = {"label": 1, "train": 1, "explore": 1, "teacher_label": 1, "speed": 1, "stability": 1}


def _retry_defaults() -> str:
    """``DEFAULT_RETRIES`` in words, for the field's documentation (written from the dict, so the
    docs cannot drift from it)."""
    by_count: dict[int, list[str]] = {}
    for step, count in DEFAULT_RETRIES.items():
        by_count.setdefault(count, []).append(step)
    return ", ".join(f"{n} for {'/'.join(steps)}" for n, steps in sorted(by_count.items(), reverse=True)) + \
        ", 0 for the rest"


#: Steps that take seconds: dispatching them to a pod of their own would cost more than they do.
LIGHT_STEPS = frozenset({"perturb", "select"})

#: The one cluster scheduling policy, read by the Argo templates and the Prefect job variables
#: alike: the steps that compute with DeePMD-kit models (training, freezing, MD, inference) get
#: one GPU unless their resources say otherwise (``gpu: 0``); data preparation, selection,
#: labelling with an ASE calculator and the planner never hold one unless asked.
GPU_STEPS = frozenset({"train", "freeze", "change_bias", "explore", "teacher_label", "evaluate", "speed",
                       "stability"})
#: the images built from images/: a pod that holds a GPU runs the CUDA one
IMAGES = {"cpu": "lamflow/lamflow:0.1.0-cpu", "gpu": "lamflow/lamflow:0.1.0-cuda12"}
#: cores and memory of a pod whose resources leave them unset, by whether it holds a GPU
POD_SIZE = {True: (8.0, "32Gi"), False: (2.0, "8Gi")}
#: cores and memory of the pod of a step run as a batch job: it uploads, submits, polls, downloads
WAITER_POD = (0.5, "2Gi")
#: where a GPU pod may run: the label NVIDIA's GPU operator sets, the taint GPU node pools carry
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class Pod(BaseModel):
    """What one step's pod asks for on a cluster: the policy above with the config's resources
    laid over it. Both cluster engines build their pods from this and nothing else."""

    gpu: int
    cpu: float
    memory: str
    image: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]

    def job_variables(self) -> dict[str, object]:
        """As the variables of lamflow's Kubernetes job template (templates/prefect/k8s-job-template.json)."""
        return {"cpu_request": f"{self.cpu:g}", "memory_request": self.memory, "memory_limit": self.memory,
                "gpu_count": self.gpu, "image": self.image, "node_selector": self.node_selector,
                "tolerations": self.tolerations}


class Executor(BaseModel):
    """A step run as a batch job (Slurm, PBS, LSF, ...) through dpdispatcher, the library dpgen and
    dpgen2 submit with: its keys are dpdispatcher's own, so a ``machine.json``/``resources.json``
    a dpgen user has carries over. Cores, GPUs, memory, time and retries are not repeated here:
    they are the step's ``cpu``/``threads``, ``gpu``, ``memory``, ``timeout`` and ``retries``, the
    same keys every engine reads."""

    model_config = ConfigDict(extra="forbid")

    batch_type: Literal["Slurm", "PBS", "Torque", "LSF", "SGE", "Shell"] = Field(
        "Slurm", description="dpdispatcher's batch system (Shell: a plain background process, no scheduler)")
    context_type: Literal["LocalContext", "SSHContext"] = Field(
        "LocalContext", description="LocalContext: lamflow runs on a login node whose file system the compute "
                                    "nodes share (the run directory is read and written in place); SSHContext: "
                                    "lamflow runs elsewhere (a laptop), each step's inputs are uploaded to the "
                                    "cluster over SSH and its output downloaded")
    remote_root: str | None = Field(None, description="folder of the job scripts, their logs and (SSH) the "
                                                      "uploaded inputs, created if missing; LocalContext default: "
                                                      "next to each step's output, in OUTPUT.job/; SSHContext: "
                                                      "required, a path on the cluster")
    remote_profile: dict[str, Any] = Field(
        default_factory=dict, description="SSHContext: dpdispatcher's SSH keys (hostname, username, port, "
                                          "key_filename, ...)")
    queue_name: str = Field("", description="partition (Slurm) or queue; empty: the scheduler's default")
    custom_flags: list[str] = Field(default_factory=list,
                                    description="extra header lines, e.g. '#SBATCH --account=abc123'")
    module_list: list[str] = Field(default_factory=list, description="`module load` these first, e.g. cuda/12.4")
    source_list: list[str] = Field(default_factory=list, description="files to `source` first, e.g. a venv's "
                                                                     "bin/activate")
    envs: dict[str, str] = Field(default_factory=dict, description="environment variables of the job")
    prepend_script: list[str] = Field(default_factory=list, description="shell lines before the step")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="dpdispatcher's batch-specific keys (Slurm: custom_gpu_line)")
    command: str | None = Field(None, description="how a job starts lamflow's Python (default: LocalContext, the "
                                                  "interpreter this lamflow runs in; SSHContext, python3)")
    check_interval: float = Field(10, gt=0, description="seconds between two polls of the scheduler")

    @model_validator(mode="after")
    def _dpdispatcher_accepts(self) -> "Executor":
        """dpdispatcher's own argument tree, strict: a misspelt key inside ``kwargs`` fails here,
        at load time, not in a job that waited hours in the queue."""
        from dargs.dargs import ArgumentError

        dpd = dpdispatcher()
        if self.context_type == "SSHContext" and not self.remote_root:
            raise ValueError("remote_root: required with SSHContext (a folder on the cluster)")
        checks = [(dpd.Resources.arginfo(detail_kwargs=True), self.resources_dict(cpu=1, gpu=0))]
        if self.context_type == "SSHContext":
            checks.append((dpd.Machine.arginfo(), self.machine_dict("/")))
        for tree, value in checks:
            try:
                tree.check_value(tree.normalize_value(value, trim_pattern="_*"), strict=True)
            except ArgumentError as exc:
                raise ValueError(str(exc).replace("[at root location] ", "").strip().splitlines()[0]) from None
        return self

    def machine_dict(self, local_root: str) -> dict[str, Any]:
        """dpdispatcher's ``Machine``; its own resubmission is off (lamflow's ``retries`` rule)."""
        out: dict[str, Any] = {"batch_type": self.batch_type, "context_type": self.context_type,
                               "local_root": local_root, "remote_root": self.remote_root, "retry_count": 0}
        if self.context_type == "SSHContext":
            out["remote_profile"] = self.remote_profile
        return out

    def resources_dict(self, cpu: int, gpu: int, extra_flags: list[str] = ()) -> dict[str, Any]:
        """dpdispatcher's ``Resources`` of one job: one node, the step's cores and GPUs."""
        return {"batch_type": self.batch_type, "number_node": 1, "cpu_per_node": cpu, "gpu_per_node": gpu,
                "queue_name": self.queue_name, "group_size": 1, "custom_flags": [*self.custom_flags, *extra_flags],
                "module_list": self.module_list, "source_list": self.source_list, "envs": self.envs,
                "prepend_script": self.prepend_script, "kwargs": self.kwargs}


def dpdispatcher() -> Any:
    """The dpdispatcher module, imported on first use (the ``hpc`` extra), its log sent through
    lamflow's logging rather than INFO lines on stdout and a ``dpdispatcher.log`` in the user's
    current folder."""
    fresh = "dpdispatcher" not in sys.modules and not Path("dpdispatcher.log").exists()
    try:
        import dpdispatcher as module
        from dpdispatcher.dlog import dlog
    except ImportError:
        raise ValueError("a batch executor needs the dpdispatcher package, which is not installed "
                         "(pip install 'lamflow[hpc]')") from None
    if fresh:  # its import wrote one line ("LOG INIT") there
        Path("dpdispatcher.log").unlink(missing_ok=True)
    for handler in list(dlog.handlers):
        dlog.removeHandler(handler)
    dlog.propagate = True
    dlog.setLevel(logging.ERROR)  # its warnings repeat what lamflow says in one line
    return module


class Resources(BaseModel):
    """Per-step resources; the local engine uses ``threads``, cluster engines all of them."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(2, ge=1, description="cores of the step and of its dp/LAMMPS processes, on every engine")
    cpu: float | None = Field(None, gt=0, description="cores requested on a cluster (default: 8 with a GPU, else 2)")
    memory: str | None = Field(None, description="e.g. 16Gi (default: 32Gi with a GPU, else 8Gi)")
    gpu: int | None = Field(None, ge=0, description="GPUs on a cluster (default: 1 for the steps in GPU_STEPS, else 0)")
    image: str | None = Field(None, description="container image (default: lamflow's CUDA image with a GPU, else the CPU one)")
    retries: int | None = Field(None, ge=0, description=f"task retries (default: {_retry_defaults()})")
    retry_delay: float = Field(30, ge=0, description="seconds between task retries")
    timeout: float | None = Field(None, gt=0, description="seconds")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Kubernetes node selector")
    tolerations: list[dict[str, str]] = Field(default_factory=list, description="Kubernetes tolerations")
    deployment: str | None = Field(
        None, description="Prefect: run this step as a flow run of this deployment (e.g. step/k8s-gpu)")
    executor: Executor | None = Field(
        None, description="run this step as a batch job (Slurm, PBS, LSF, ...; dpdispatcher's keys), on every "
                          "engine; none: in the engine's own process or pod")

    def elsewhere(self) -> bool:
        """The step is sent to other machines: a batch job, a Prefect deployment, or an explicit
        GPU request for a cluster's pod (what this machine lacks, they may have)."""
        return self.executor is not None or self.deployment is not None or bool(self.gpu)

    def retries_for(self, step: str) -> int:
        return self.retries if self.retries is not None else DEFAULT_RETRIES.get(step, 0)

    def gpus(self, step: str) -> int:
        """The GPUs ``step`` computes with, in its pod or its batch job (see :data:`GPU_STEPS`)."""
        return self.gpu if self.gpu is not None else int(step in GPU_STEPS)

    def pod(self, step: str) -> Pod:
        """The pod of ``step`` on a cluster (see :data:`GPU_STEPS`). A step run as a batch job
        (``executor``) only submits the job and waits in its pod: the job gets the GPUs, cores and
        memory, the pod neither a GPU nor a GPU node (an idle GPU for the queue's wait)."""
        if self.executor is not None:
            cpu, memory = WAITER_POD
            return Pod(gpu=0, cpu=cpu, memory=memory, image=self.image or IMAGES["cpu"],
                       node_selector=self.node_selector, tolerations=self.tolerations)
        gpu = self.gpus(step)
        cpu, memory = POD_SIZE[gpu > 0]
        return Pod(gpu=gpu, cpu=self.cpu or cpu, memory=self.memory or memory,
                   image=self.image or IMAGES["gpu" if gpu else "cpu"],
                   node_selector=self.node_selector or (GPU_NODE_SELECTOR if gpu else {}),
                   tolerations=self.tolerations or (GPU_TOLERATIONS if gpu else []))
