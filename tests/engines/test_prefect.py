"""Prefect: Kubernetes job templates, retry policy, fault injection — and, against a real
Prefect server on loopback, `prefect deployment run 'distill/local'` with a failed run retried
the way the UI's Retry button does it, which must recompute nothing that had finished, and
`prefect deployment run 'lam/local'`, the whole LAM pipeline."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import yaml
from prefect.states import Failed

from conftest import (REPO, assert_same_distillation, assert_same_lam, lam_config, run_in_use, tiny_config,
                      write_cu_frames)
from lamflow.flows.core.faults import ENV as FAULTS_ENV
from lamflow.flows.engines.prefect.flows import PrefectRunner
from lamflow.flows.engines.prefect.server import retry_flow_run
from lamflow.flows.engines.prefect.k8s import deployment_job_variables, job_template, render_job
from lamflow.flows.core.resources import Resources
from lamflow.flows.core.execute import execute
from lamflow.flows.core.records import StepCall
from lamflow.steps.errors import InputError, StepFailed
from lamflow.steps.label import LabelParams

K8S_VERSION = "1.33"


def _pod(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def test_gpu_step_job_is_a_valid_kubernetes_job_with_its_gpu():
    manifest = render_job(deployment_job_variables(REPO / "prefect.yaml", "step/k8s-gpu"))
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    container = _pod(manifest)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("cuda12")
    assert _pod(manifest)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert _pod(manifest)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert _pod(manifest)["volumes"][0]["persistentVolumeClaim"]["claimName"] == "lamflow-runs"
    assert container["volumeMounts"][0]["mountPath"] == "/runs"
    assert manifest["spec"]["completions"] == 1  # on the Job, not (as upstream has it) on the pod


@pytest.mark.parametrize("deployment", ["distill/k8s-gpu", "lam/k8s-gpu"])
def test_parent_flow_job_holds_no_gpu(deployment):
    manifest = render_job(deployment_job_variables(REPO / "prefect.yaml", deployment))
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    resources = _pod(manifest)["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert "nvidia.com/gpu" not in resources.get("requests", {})


def test_step_resources_become_the_pods_requests():
    """What the parent passes to run_deployment for `resources: {train: {gpu: 2, memory: 64Gi}}`."""
    base = deployment_job_variables(REPO / "prefect.yaml", "step/k8s-gpu")
    step = Resources(gpu=2, memory="64Gi", cpu=16, image="registry/lamflow:cuda")
    manifest = render_job({**base, **step.pod("train").job_variables()})
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    container = _pod(manifest)["containers"][0]
    assert container["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": 2}
    assert container["resources"]["requests"]["cpu"] == "16"
    assert container["image"] == "registry/lamflow:cuda"
    # nothing set: the policy decides, the same for every deployment a step is sent to
    assert Resources().pod("select").job_variables()["gpu_count"] == 0
    cpu_pod = render_job({**base, **Resources().pod("select").job_variables()})
    kubernetes_validate.validate(cpu_pod, K8S_VERSION, strict=True)
    assert _pod(cpu_pod)["containers"][0]["image"].endswith("-cpu") and not _pod(cpu_pod).get("tolerations")


def test_job_template_keeps_every_prefect_kubernetes_variable():
    from prefect_kubernetes.worker import KubernetesWorker

    upstream = set(KubernetesWorker.get_default_base_job_template()["variables"]["properties"])
    ours = set(job_template()["variables"]["properties"])
    assert upstream <= ours
    assert {"gpu_count", "node_selector", "tolerations", "runs_claim"} <= ours


def test_prefect_retries_by_the_core_policy():
    from lamflow.flows.engines.prefect.flows import retry_condition

    assert retry_condition(None, None, Failed(data=InputError("teacher.model", "file not found"))) is False
    assert retry_condition(None, None, Failed(data=OSError(28, "No space left on device"))) is False
    assert retry_condition(None, None, Failed(data=StepFailed("dp train: killed"))) is True
    assert retry_condition(None, None, Failed(data=MemoryError())) is True


def test_heavy_steps_get_a_retry_unless_the_config_says_otherwise():
    assert Resources().retries_for("train") == 1 and Resources().retries_for("select") == 0
    assert Resources().retries_for("speed") == 1  # LAMMPS with a model's library aborts now and then
    assert Resources().retries_for("stability") == 1  # raised only when LAMMPS crashed (tests/unit/test_stability.py)
    assert Resources(retries=0).retries_for("train") == 0


def test_compute_steps_dispatch_light_ones_stay_in_the_flow():
    runner = PrefectRunner(step_deployment="step/k8s-gpu")
    call = lambda step, **res: StepCall(step, None, step, Resources(**res))  # noqa: E731
    assert runner.deployment_for(call("train")) == "step/k8s-gpu"
    assert runner.deployment_for(call("select")) is None
    assert runner.deployment_for(call("select", deployment="step/cpu")) == "step/cpu"
    assert PrefectRunner().deployment_for(call("train")) is None


def test_a_batch_sent_to_the_cluster_is_not_capped_by_the_local_max_workers():
    call = lambda step, **res: StepCall(step, None, step, Resources(**res))  # noqa: E731
    cluster = PrefectRunner(max_workers=2, step_deployment="step/k8s-gpu")
    assert cluster.width([call("explore") for _ in range(9)]) == 9  # the work pool's limit paces them
    assert cluster.width([call("select"), call("select"), call("select")]) == 2  # runs in the flow's process
    assert PrefectRunner(max_workers=2).width([call("explore") for _ in range(9)]) == 2


def test_injected_fault_fails_the_step_once_then_lets_it_run(tmp_path, monkeypatch):
    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump([{"step": "label", "where": "lab-b", "times": 1}]))
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    frames = write_cu_frames(tmp_path / "s.extxyz", 2)
    a = execute("label", LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "lab-a"))
    assert not a.cached  # not matched: runs
    params = LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "lab-b")
    with pytest.raises(StepFailed, match="injected failure"):
        execute("label", params)
    assert not (tmp_path / "lab-b").exists()  # nothing half-written
    assert yaml.safe_load(faults.read_text())[0]["times"] == 0
    assert execute("label", params).result.n_frames == 2


# --- a real Prefect server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lamflow.flows.engines.prefect.server import LocalPrefect

    home = tmp_path_factory.mktemp("prefect-home")
    faults = home / "faults.yaml"
    faults.write_text("[]\n")
    local = LocalPrefect(project=REPO, home=home, port=_free_port(), worker_poll_seconds=1,
                         extra_env={FAULTS_ENV: str(faults), "OMP_NUM_THREADS": "2"})
    local.up()
    local.faults = faults
    yield local
    local.down()


def _run_deployment(server, config: Path, workdir: Path, name: str = "distill/local") -> uuid.UUID:
    """`prefect deployment run 'distill/local' -p config=… -p workdir=…`, as a user types it."""
    out = server.prefect("deployment", "run", name, "-p", f"config={config}",
                         "-p", f"workdir={workdir}")
    return uuid.UUID(re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1))


def _wait(server, run_id: uuid.UUID, timeout: float = 900):
    """The flow run once it is final *and* its process has exited: the process worker reports a
    run whose process exits non-zero as crashed, and that report must not land on the retry."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                pid = int(str(run.infrastructure_pid or "0").rsplit(":", 1)[-1] or 0)
                while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(2)
                return client.read_flow_run(run_id)
            time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s; logs in {server.home}")


def _records(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): p.read_text() for p in run_dir.rglob("*.result.json")}


def _step_runs_for(server, run_dir: Path) -> list[str]:
    """Outputs of the `step` flow runs (dispatched steps) that belong to this run directory."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with server.client() as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["step"])), limit=200)
    return sorted(r.parameters["params"]["output"] for r in runs
                  if str(r.parameters["params"]["output"]).startswith(str(run_dir)))


def _artifacts(server, flow_run_id) -> tuple[list[list[dict]], list[str]]:
    """The table artifacts (rows) and markdown artifacts of a flow run, oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import ArtifactSort

    with server.client() as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                      sort=ArtifactSort.CREATED_DESC)[::-1]
    tables = [json.loads(a.data) if isinstance(a.data, str) else a.data for a in found if a.type == "table"]
    return tables, [a.data for a in found if a.type == "markdown"]


def _student_forces(report: dict) -> np.ndarray:
    from deepmd.infer import DeepPot

    import ase.io

    atoms = ase.io.read(Path(report["run_dir"]).parent / "start.extxyz")
    dp = DeepPot(report["final_student"])
    _, forces, _ = dp.eval(atoms.positions[None], atoms.cell.array[None], [0] * len(atoms))
    return forces


@pytest.mark.slow(seconds=180)
def test_deployment_run_then_a_failed_run_retried_from_the_ui_recomputes_nothing(server, tmp_path, prefect_cli_run):
    cfg = tiny_config(tmp_path)
    # teacher-label fails the flow at once (no task retry); speed runs as its own flow run of
    # step/local — how GPU steps reach their own pods on Kubernetes.
    cfg["resources"] = {"teacher_label": {"retries": 0}, "speed": {"deployment": "step/local"}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))

    listed = server.prefect("deployment", "ls")
    for name in ("distill/local", "lam/local", "step/local", "distill/k8s-gpu", "lam/k8s-gpu", "step/k8s-gpu"):
        assert name in listed

    # 1. `prefect deployment run 'distill/local'`; iteration 2's teacher-label fails once
    run_b = tmp_path / "run-b"
    server.faults.write_text(yaml.safe_dump(
        [{"step": "teacher_label", "where": f"{run_b.name}/iter-001/label", "times": 1}]))
    flow_b = _wait(server, _run_deployment(server, config, run_b))
    assert flow_b.state.is_failed(), flow_b.state
    done_before = _records(run_b)
    assert "iter-000/train-00.result.json" in done_before
    assert not any(k.startswith("iter-001/label") for k in done_before)
    assert len(_step_runs_for(server, run_b)) == 2  # iteration 2's speed was never reached
    tables, summaries = _artifacts(server, flow_b.id)
    failed_report = json.loads((run_b / "report.json").read_text())  # as the failure left it
    assert [row["iter"] for row in tables[-1]] == [str(it["iteration"]) for it in failed_report["iterations"]]
    assert "**failed:**" in summaries[-1] and "injected" in summaries[-1]

    # 2. Retry, as the UI's button does it (`lamflow prefect retry <id>`): back to Scheduled
    with server.client() as client:
        retry_flow_run(client, str(flow_b.id))
    flow_b = _wait(server, flow_b.id)
    assert flow_b.state.is_completed(), flow_b.state.message
    assert flow_b.run_count == 2

    done_after = _records(run_b)
    unchanged = {k for k in done_before if done_after.get(k) == done_before[k]}
    assert unchanged == set(done_before), "a finished step ran again"
    assert set(done_after) - set(done_before) >= {"iter-001/label/chunk-000.result.json",
                                                   "iter-001/speed.result.json"}
    assert len(_step_runs_for(server, run_b)) == 3  # finished steps were not dispatched again
    # the UI tells the story: the iteration table (one version per iteration and attempt) and
    # the summary as artifacts of the flow run, which `lamflow report` points to
    tables, summaries = _artifacts(server, flow_b.id)
    report_b = json.loads((run_b / "report.json").read_text())
    last = tables[-1]
    assert [row["iter"] for row in last] == ["0", "1"]
    assert last[1]["RMSE F (eV/Å)"] == f"{report_b['iterations'][1]['rmse_f']:.4f}"
    assert "max_iterations after 2 iterations" in summaries[-1] and "failed" not in summaries[-1].split("```")[0]
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "report", str(run_b)], capture_output=True,
                         text=True, timeout=300)
    assert f"prefect: {server.ui_url}/runs/flow-run/{flow_b.id} " in out.stdout, out.stdout[-1500:]

    # 3. the resumed run ends where an uninterrupted one (`lamflow distill`, embedded) did
    with run_in_use(prefect_cli_run) as reference:
        report_a = json.loads((reference / "report.json").read_text())
    assert report_a["status"] == "max_iterations" and Path(report_b["final_student"]).is_file()
    assert_same_distillation(report_b, report_a)
    np.testing.assert_allclose(_student_forces(report_b), _student_forces(report_a), rtol=1e-6, atol=1e-8)


@pytest.mark.slow(seconds=190)
def test_lam_deployment_runs_the_whole_pipeline_like_the_cli(server, tmp_path, prefect_lam_run):
    """`prefect deployment run 'lam/local'`: label → pretrain → finetune → evaluate → distill as
    one Prefect flow run on a worker, ending with the numbers of `lamflow lam` (embedded)."""
    config = tmp_path / "lam.yaml"
    config.write_text(yaml.safe_dump(lam_config(tmp_path)))
    run = tmp_path / "run"
    flow = _wait(server, _run_deployment(server, config, run, name="lam/local"))
    assert flow.state.is_completed(), flow.state.message
    ours = assert_same_lam(run, prefect_lam_run.run)
    assert ours["datasets"] == {"cu_bulk": 10, "cuau": 10, "alloy": 12}
    assert Path(json.loads((run / "distill/report.json").read_text())["final_student"]).is_file()
    assert {"pretrain", "finetune", "change-bias"} <= {p.name for p in (run / "lam").iterdir()}
    # the distillation's table after each of its iterations, then once more with the summary
    distilled = json.loads((run / "distill/report.json").read_text())["iterations"]
    tables, summaries = _artifacts(server, flow.id)
    assert len(tables) == len(distilled) + 1 and [r["iter"] for r in tables[0]] == ["0"]
    assert [r["iter"] for r in tables[-1]] == [str(it["iteration"]) for it in distilled]
    assert len(summaries) == 1 and "finetuned on" in summaries[0]


def test_flow_takes_the_config_itself_with_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    from lamflow.flows.pipelines import load_any, parse_any

    raw = tiny_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    _, cfg = parse_any(raw, Path.cwd(), expect="distill")
    assert cfg.configurations.files == [tmp_path / "start.extxyz"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**raw, "max_iterations": "two"}))
    with pytest.raises(InputError, match="max_iterations"):
        load_any(tmp_path / "c.yaml", expect="distill")


RUN_LOGS = """
import sys
from pathlib import Path
from lamflow.flows.cli.main import quiet_libraries
quiet_libraries(debug=False)  # what `lamflow distill --engine prefect` and `lamflow prefect up` set
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker
from lamflow.flows.engines.prefect.flows import step_task

params = {"structures": [sys.argv[1]], "type_map": ["Cu"], "output": sys.argv[2]}

@flow(name="logs")
def twice():
    step_task.submit("label", params, {}, "label emt").result()
    step_task.submit("label", params, {}, "label emt").result()

state = twice(return_state=True)
APILogWorker.drain_all()
with get_client(sync_client=True) as client:
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
Path(sys.argv[3]).write_text("\\n".join(log.message for log in logs))
"""


def test_each_step_tells_the_prefect_ui_whether_it_ran_or_was_read_back(tmp_path):
    """The UI's Logs tab says, at INFO, which steps ran and which came back from their records,
    with their figures, while the terminal stays lamflow's (Prefect's console at WARNING)."""
    frames = write_cu_frames(tmp_path / "cu.extxyz", 2, seed=5)
    out = subprocess.run([sys.executable, "-c", RUN_LOGS, str(frames), str(tmp_path / "emt"), str(tmp_path / "logs")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")})
    assert out.returncode == 0, out.stderr[-3000:]
    logs = (tmp_path / "logs").read_text()
    assert re.search(r"label emt: ran in [\d.]+ s; n_frames=2, n_dropped=0", logs), logs
    assert "label emt: read back from its record" in logs, logs
    assert "ran in" not in out.stdout + out.stderr  # the run logger feeds the UI, not the terminal
