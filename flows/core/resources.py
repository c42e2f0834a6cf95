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


class Resources(BaseModel):
    """Per-step resources; the local engine uses ``threads``, cluster engines all of them."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(2, ge=1)
    cpu: float | None = Field(None, gt=0, description="cores requested on a cluster (default: the deployment's)")
    memory: str | None = Field(None, description="e.g. 16Gi (default: the deployment's)")
    gpu: int | None = Field(None, ge=0, description="GPUs (default: the deployment's)")
    image: str | None = Field(None, description="container image (default: the deployment's)")
    retries: int | None = Field(None, ge=0, description="task retries (default: 1 for label/train/explore/teacher_label)")
    retry_delay: float = Field(30, ge=0, description="seconds between task retries")
    timeout: float | None = Field(None, gt=0, description="seconds")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Kubernetes node selector")
    tolerations: list[dict[str, str]] = Field(default_factory=list, description="Kubernetes tolerations")
    deployment: str | None = Field(
        None, description="Prefect: run this step as a flow run of this deployment (e.g. step/k8s-gpu)")

    def retries_for(self, step: str) -> int:
        return self.retries if self.retries is not None else DEFAULT_RETRIES.get(step, 0)

    def job_variables(self) -> dict[str, object]:
        """Variables of lamflow's Kubernetes job template (templates/prefect/k8s-job-template.json);
        what the config leaves unset is left to the deployment's job variables."""
        out: dict[str, object] = {"cpu_request": None if self.cpu is None else f"{self.cpu:g}",
                                  "memory_request": self.memory, "memory_limit": self.memory,
                                  "gpu_count": self.gpu, "image": self.image,
                                  "node_selector": self.node_selector or None, "tolerations": self.tolerations or None}
        return {k: v for k, v in out.items() if v is not None}
