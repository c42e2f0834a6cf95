"""The Kubernetes Job a Prefect deployment of lamflow would create, rendered offline.

``lamflow prefect job step/k8s-gpu`` prints the manifest the kubernetes worker will submit for a
flow run of that deployment — lamflow's job template (``templates/prefect/k8s-job-template.json``)
filled with the deployment's job variables from ``prefect.yaml`` and any per-step overrides —
so a GPU request, node selector or volume can be checked before anything reaches a cluster.
Rendering uses prefect-kubernetes' own job configuration class: what is printed is what the
worker would send.
"""

from __future__ import annotations

import copy
import json
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from lamflow.steps.errors import InputError

#: the installed template (package data of lamflow.templates.prefect), as a file for `prefect work-pool create`
TEMPLATE = Path(str(files("lamflow.templates.prefect").joinpath("k8s-job-template.json")))


def job_template(path: Path | None = None) -> dict[str, Any]:
    """lamflow's base job template for a kubernetes work pool (for ``--base-job-template``)."""
    return json.loads(Path(path or TEMPLATE).read_text())


def deployment_job_variables(prefect_yaml: Path, deployment: str) -> dict[str, Any]:
    """The job variables ``prefect.yaml`` gives ``flow/deployment`` (e.g. ``step/k8s-gpu``)."""
    flow_name, _, dep_name = deployment.partition("/")
    entry_suffix = f"{flow_name}_flow"  # distill_flow, lam_flow, version_flow, step_flow
    spec = yaml.safe_load(Path(prefect_yaml).read_text())
    for dep in spec.get("deployments", []):
        if dep.get("name") == dep_name and str(dep.get("entrypoint", "")).endswith(entry_suffix):
            return dict((dep.get("work_pool") or {}).get("job_variables") or {})
    raise InputError(str(prefect_yaml), f"no deployment '{deployment}'")


def render_job(job_variables: dict[str, Any], template: dict[str, Any] | None = None,
               flow_run_name: str = "preview") -> dict[str, Any]:
    """The Job manifest for a flow run with these job variables."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration as Config

    template = template or job_template()
    # What Config.from_template_and_values does, minus resolving `{{ prefect.blocks/variables }}`
    # references, which would need a server (lamflow's template has none).
    values = Config._get_base_config_defaults(template["variables"].get("properties", {}))
    values.update(job_variables)
    config = Config(**apply_values(template=copy.deepcopy(template["job_configuration"]), values=values))
    run = FlowRun(id=uuid.uuid4(), name=flow_run_name, flow_id=uuid.uuid4())
    config.prepare_for_flow_run(run)
    return config.job_manifest
