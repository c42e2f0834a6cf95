"""The science of lamflow: plain functions over files, no workflow engine imported here.

Every step is a function ``run(params) -> result`` whose parameters and result are pydantic
models (see :mod:`lamflow.steps.registry`). Paths go in, paths come out, so that the very same
function runs inside a Prefect task, a dflow OP in a Kubernetes pod, or ``lamflow step NAME``.
"""
