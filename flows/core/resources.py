"""What a step needs to run: threads here; CPU, memory, GPU, image and retries on a cluster.

One :class:`Resources` per step name in the config (``resources: {train: {gpu: 1}}``), with
``default`` for the rest. The same object drives every engine: ``execute`` runs every step with
its ``threads``; ``retries`` follow the core's one rule (:mod:`lamflow.flows.core.policy`);
Prefect, when a step is dispatched to its own deployment (its own pod), turns cpu/memory/gpu/image
into that flow run's job variables; dflow turns them into the container's requests. Resources
never enter a step's cache key: where and with what a step runs does not change what it computes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: Retries when the config says nothing: the steps that run for hours on a node that may die
#: (training, MD, labelling) get one more attempt; fast, deterministic ones get none.
DEFAULT_RETRIES = {"label": 1, "train": 1, "explore": 1, "teacher_label": 1}

#: Steps that take seconds: dispatching them to a pod of their own would cost more than they do.
LIGHT_STEPS = frozenset({"perturb", "select"})

#: The one cluster scheduling policy, read by the Argo templates and the Prefect job variables
#: alike: the steps that compute with DeePMD-kit models (training, freezing, MD, inference) get
#: one GPU unless their resources say otherwise (``gpu: 0``); data preparation, selection,
#: labelling with an ASE calculator and the planner never hold one unless asked.
GPU_STEPS = frozenset({"train", "freeze", "change_bias", "explore", "teacher_label", "evaluate", "speed"})
#: the images built from images/: a pod that holds a GPU runs the CUDA one
IMAGES = {"cpu": "lamflow/lamflow:0.1.0-cpu", "gpu": "lamflow/lamflow:0.1.0-cuda12"}
#: cores and memory of a pod whose resources leave them unset, by whether it holds a GPU
POD_SIZE = {True: (8.0, "32Gi"), False: (2.0, "8Gi")}
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


class Resources(BaseModel):
    """Per-step resources; the local engine uses ``threads``, cluster engines all of them."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(2, ge=1, description="cores of the step and of its dp/LAMMPS processes, on every engine")
    cpu: float | None = Field(None, gt=0, description="cores requested on a cluster (default: 8 with a GPU, else 2)")
    memory: str | None = Field(None, description="e.g. 16Gi (default: 32Gi with a GPU, else 8Gi)")
    gpu: int | None = Field(None, ge=0, description="GPUs on a cluster (default: 1 for the steps in GPU_STEPS, else 0)")
    image: str | None = Field(None, description="container image (default: lamflow's CUDA image with a GPU, else the CPU one)")
    retries: int | None = Field(None, ge=0, description="task retries (default: 1 for label/train/explore/teacher_label)")
    retry_delay: float = Field(30, ge=0, description="seconds between task retries")
    timeout: float | None = Field(None, gt=0, description="seconds")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Kubernetes node selector")
    tolerations: list[dict[str, str]] = Field(default_factory=list, description="Kubernetes tolerations")
    deployment: str | None = Field(
        None, description="Prefect: run this step as a flow run of this deployment (e.g. step/k8s-gpu)")

    def retries_for(self, step: str) -> int:
        return self.retries if self.retries is not None else DEFAULT_RETRIES.get(step, 0)

    def pod(self, step: str) -> Pod:
        """The pod of ``step`` on a cluster (see :data:`GPU_STEPS`)."""
        gpu = self.gpu if self.gpu is not None else int(step in GPU_STEPS)
        cpu, memory = POD_SIZE[gpu > 0]
        return Pod(gpu=gpu, cpu=self.cpu or cpu, memory=self.memory or memory,
                   image=self.image or IMAGES["gpu" if gpu else "cpu"],
                   node_selector=self.node_selector or (GPU_NODE_SELECTOR if gpu else {}),
                   tolerations=self.tolerations or (GPU_TOLERATIONS if gpu else []))
