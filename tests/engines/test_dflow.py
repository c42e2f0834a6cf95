"""dflow / Argo: OPs generated from the step registry, the planner (distill and LAM pipeline),
the exported Workflow (validated against Argo's JSON schema), and the whole LAM pipeline —
datasets, pretraining, finetuning and the distillation loop — in dflow's debug mode: it fails in
the distillation, is resumed with `lamflow resume` reusing every finished step, and ends with
the same numbers as the Prefect engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
from dflow.python import FatalError
import pytest
import yaml

from conftest import REPO, assert_same_lam, lam_config, tiny_config
from lamflow.flows.pipelines.distill.config import DistillConfig
from lamflow.flows.engines.dflow.engine import STEP_OPS, ArgoSettings, PlanOP, export
from lamflow.flows.core.faults import ENV as FAULTS_ENV
from lamflow.flows.core.execute import execute
from lamflow.steps.errors import InputError
from lamflow.steps.registry import STEPS

SCHEMA = Path(__file__).parents[1] / "data" / "argo-workflows.schema.json"  # Argo's api/jsonschema/schema.json
GPU = {"train": {"gpu": 1, "memory": "16Gi", "retries": 2, "timeout": 7200},
       "explore": {"gpu": 1, "node_selector": {"nvidia.com/gpu.present": "true"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
       "evaluate": {"gpu": 0}}


def test_every_step_is_an_op_whose_outputs_are_its_result_fields():
    assert set(STEP_OPS) == set(STEPS)
    for step, op in STEP_OPS.items():
        outputs = set(op.get_output_sign())
        assert set(STEPS[step].result.model_fields) <= outputs and "cached" in outputs
        assert set(op.get_input_sign()) == {"call"}
        assert op.__module__ == "lamflow.flows.engines.dflow.engine"  # importable in pods, not pickled


def test_planner_returns_the_first_unfinished_batch_then_the_next(tmp_path):
    cfg = DistillConfig.parse(tiny_config(tmp_path), tmp_path)
    ip = {"flow": "distill", "config": cfg.model_dump(mode="json"), "run_dir": str(tmp_path / "run"), "level": 0}
    first = PlanOP().execute(ip)
    # the light perturb step ran in the planner (its record is there); the labelling is planned
    assert (tmp_path / "run" / "init" / "reference-structures.result.json").is_file()
    assert first["done"] is False and first["step"] == "label" and len(first["calls"]) == 1
    assert first["calls"][0]["label"] == "init/reference/chunk-000"
    assert first["calls"][0]["params"]["calculator"] == "emt"
    # Argo names the step by its place in the run (its output), not by the planning level
    assert first["batch"] == [{"index": 0, "key": "init-reference-chunk-000"}]
    with pytest.raises(FatalError, match="init-reference-chunk-000: reused from the resumed workflow"):
        PlanOP().execute({**ip, "planned": first["batch"]})  # planned twice: its record is gone
    execute("label", first["calls"][0]["params"])  # what the fanned-out step does in its pod
    second = PlanOP().execute({**ip, "level": 1})
    assert second["step"] == "train" and second["next_level"] == 2
    assert second["calls"][0]["label"] == "init/teacher"


def test_light_steps_run_in_the_planner_unless_they_ask_for_a_pod(tmp_path):
    """A light step (select, perturb) costs a planning level and a pod: the planner runs it
    itself, unless its resources ask for what only a pod gives (a GPU, an image, a batch job)."""
    raw = tiny_config(tmp_path)
    raw["resources"] = {"perturb": {"gpu": 1}}
    cfg = DistillConfig.parse(raw, tmp_path)
    ip = {"flow": "distill", "config": cfg.model_dump(mode="json"), "run_dir": str(tmp_path / "run"), "level": 0}
    first = PlanOP().execute(ip)
    assert first["step"] == "perturb" and first["calls"][0]["label"] == "init/reference-structures"


def _manifest(tmp_path) -> dict:
    raw = tiny_config(tmp_path)
    raw["resources"] = GPU
    return export("distill", DistillConfig.parse(raw, tmp_path), Path("/runs/tiny"), ArgoSettings(image_pull_secrets=["regcred"]))


def test_exported_workflow_is_valid_argo_with_gpus_images_and_the_recursive_loop(tmp_path):
    manifest = _manifest(tmp_path)
    schema = json.loads(SCHEMA.read_text())
    schema = {**{k: v for k, v in schema.items() if k != "oneOf"},
              "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"}
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(manifest))
    assert not errors, [f"{list(e.path)}: {e.message[:150]}" for e in errors[:5]]

    templates = {t["name"].rsplit("-", 1)[0] if "op-" in t["name"] else t["name"]: t
                 for t in manifest["spec"]["templates"]}
    train, explore, select = templates["trainop"], templates["exploreop"], templates["selectop"]
    assert train["script"]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert train["script"]["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "1"}
    assert train["script"]["image"].endswith("cuda12") and select["script"]["image"].endswith("-cpu")
    assert "from lamflow.flows.engines.dflow.engine import TrainOP" in train["script"]["source"]
    assert train["retryStrategy"]["limit"] == "2" and train["timeout"] == "7200s"
    assert explore["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert explore["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert explore["volumes"][0]["persistentVolumeClaim"]["claimName"] == "lamflow-runs"
    # the policy: model steps get a GPU without being asked, `gpu: 0` takes it away, data steps
    # (and the planner) never hold one; private registries get their pull secret
    assert templates["teacherlabelop"]["script"]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in templates["evaluateop"]["script"]["resources"]["requests"]
    gpu_free = [t for name, t in templates.items() if name in ("selectop", "perturbop", "labelop", "planop")]
    assert len(gpu_free) == 4 and not [t["name"] for t in gpu_free if "nvidia.com/gpu" in str(t["script"]["resources"])]
    assert {t["script"]["image"] for t in gpu_free} == {"lamflow/lamflow:0.1.0-cpu"}
    assert manifest["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    # the loop: `advance` plans, fans out one step kind, and calls itself until the plan is done
    advance = templates["advance"]
    inner = [s for group in advance["steps"] for s in group]
    recursive = [s for s in inner if s["template"] == "advance"]
    assert len(recursive) == 1 and recursive[0]["when"].endswith("== false")
    fanned = [s for s in inner if s.get("withParam")]
    assert {s["name"] for s in fanned} >= {"explore", "teacher-label", "train", "select"}
    # each item is a planned call: its slice of the plan's calls, and its key (iter-001-explore-task-003)
    explore_step = next(s for s in fanned if s["name"] == "explore")
    assert explore_step["withParam"] == "{{=steps['plan'].outputs.parameters['batch']}}"
    params = {p["name"]: p["value"] for p in explore_step["arguments"]["parameters"]}
    assert params["dflow_key"] == "{{item.key}}" and "{{item.index}}" in params.values()  # the slice


def test_every_step_asks_argo_and_prefect_for_the_same_pod(tmp_path):
    """One policy: for each step, the Argo template and the Kubernetes job Prefect's worker would
    submit ask for the same GPUs, image, CPU and memory."""
    from lamflow.flows.engines.prefect.k8s import deployment_job_variables, render_job

    manifest = _manifest(tmp_path)
    cfg = DistillConfig.parse({**tiny_config(tmp_path), "resources": GPU}, tmp_path)
    base = deployment_job_variables(REPO / "prefect.yaml", "step/k8s-gpu")
    templates = {t["name"]: t for t in manifest["spec"]["templates"] if "script" in t}
    assert len(templates) == len(STEPS) + 1  # every step kind and the planner
    for step in STEPS:
        name = next(n for n in templates if n.startswith(step.replace("_", "") + "op"))
        argo = templates[name]["script"]
        job = render_job({**base, **cfg.resources_for(step).pod(step).job_variables()})
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert argo["image"] == container["image"], step
        assert argo["resources"]["requests"]["cpu"] == container["resources"]["requests"]["cpu"], step
        assert argo["resources"]["requests"]["memory"] == container["resources"]["requests"]["memory"], step
        gpus = int(argo["resources"]["requests"].get("nvidia.com/gpu", 0))
        assert gpus == int(container["resources"]["requests"].get("nvidia.com/gpu") or 0), step


def test_cli_exports_the_manifest(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "export", str(tmp_path / "config.yaml"),
                          "--engine", "argo", "-o", str(tmp_path / "wf.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wf = yaml.safe_load((tmp_path / "wf.yaml").read_text())
    assert wf["kind"] == "Workflow" and wf["spec"]["entrypoint"]


def _steps(workflow_dir: Path) -> dict[str, dict]:
    """Pod steps of a debug-mode workflow: key → step kind, phase and outputs."""
    out = {}
    for d in workflow_dir.iterdir():
        if (d / "type").is_file() and (d / "type").read_text() == "Pod" and not d.name.startswith("plan-"):
            outs = d / "outputs" / "parameters"
            out[d.name] = {"kind": (d / "name").read_text().split("(")[0], "phase": (d / "phase").read_text(),
                           "cached": (outs / "cached").read_text() if (outs / "cached").is_file() else None}
    return out


def test_planner_drives_the_lam_pipeline_too(tmp_path):
    from lamflow.flows.pipelines.lam.config import LamConfig

    cfg = LamConfig.parse(lam_config(tmp_path), tmp_path)
    ip = {"flow": "lam", "config": cfg.model_dump(mode="json", by_alias=True), "run_dir": str(tmp_path / "run"),
          "level": 0}
    first = PlanOP().execute(ip)
    assert first["step"] == "label" and first["calls"][0]["label"] == "data/cu_bulk/chunk-000"
    manifest = export("lam", cfg, Path("/runs/lam"))
    assert manifest["kind"] == "Workflow"


@pytest.mark.slow(seconds=600)
@pytest.mark.timeout(1800)  # a failed run and its resume, each a subprocess with its own 900 s limit
def test_lam_pipeline_in_debug_mode_fails_resumes_reusing_finished_steps_and_matches_prefect(
        tmp_path, monkeypatch, prefect_lam_run):
    """`lamflow lam --engine dflow`: the whole pipeline as one Argo workflow, run by dflow's debug
    mode, each step its own process. The distillation's teacher-label fails after the datasets,
    the pretraining, the finetuning and the first iteration's MD have run; `lamflow resume` runs
    only what had not finished, and the run ends with the embedded Prefect run's numbers."""
    (tmp_path / "lam.yaml").write_text(yaml.safe_dump(lam_config(tmp_path)))
    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump([{"step": "teacher_label", "where": "distill/iter-000/label", "times": 9}]))
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    cli = [sys.executable, "-m", "lamflow.flows.cli"]
    run = tmp_path / "run"

    failed = subprocess.run([*cli, "lam", str(tmp_path / "lam.yaml"), "--engine", "dflow", "--workdir", str(run)],
                            capture_output=True, text=True, timeout=900)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "lamflow resume" in failed.stderr
    (first_id,) = [p.name for p in (run / "dflow").iterdir() if p.is_dir()]
    before = _steps(run / "dflow" / first_id)
    done_before = {k for k, v in before.items() if v["phase"] == "Succeeded"}
    kinds = {before[k]["kind"] for k in done_before}
    # perturb and select ran in the planner (light steps): no pod of their own
    assert kinds == {"label", "import-data", "train", "freeze", "evaluate", "change-bias", "speed",
                     "teacher-label", "explore"}, kinds
    # each step is keyed by where it is in the run: a user finds the failed iteration at a glance
    assert {"lam-pretrain", "lam-finetune", "distill-iter-000-explore-task-000"} <= done_before, sorted(done_before)
    failed_keys = {k for k, v in before.items() if v["phase"] == "Failed"}
    assert failed_keys and all(k.startswith("distill-iter-000-label-chunk-") for k in failed_keys), failed_keys

    status = subprocess.run([*cli, "status", first_id, "--workdir", str(run)], capture_output=True, text=True,
                            timeout=300)
    assert status.returncode == 0 and f"workflow {first_id}: Failed" in status.stdout, status.stderr[-2000:]
    assert "failed: distill-iter-000-label-chunk-000 (teacher-label)" in status.stdout
    assert f"step pods finished: {len(done_before)} (0 read back" in status.stdout

    faults.write_text("[]\n")  # the cause is fixed
    # iteration 0's MD output is lost (deleted, or a volume swapped): reused by its key, its
    # record is missing; the planner says so in one line instead of planning it forever
    lost = run / "distill" / "iter-000" / "explore" / "task-000"
    lost.with_suffix(".result.json").unlink()
    shutil.rmtree(lost)
    stuck = subprocess.run([*cli, "resume", first_id, "--workdir", str(run)], capture_output=True, text=True,
                           timeout=900)
    assert stuck.returncode == 1 and stuck.stderr.count("\n") == 1, stuck.stdout[-2000:] + stuck.stderr[-2000:]
    assert "distill-iter-000-explore-task-000: reused from the resumed workflow, but its record is not" in stuck.stderr
    never = subprocess.run([*cli, "resume", first_id, "--workdir", str(run), "--from-iteration", "7"],
                           capture_output=True, text=True, timeout=300)
    assert never.returncode == 2 and never.stderr.count("\n") == 1 and "reached iteration 0" in never.stderr
    # restart from iteration 0: nothing of the loop is reused from the old workflow; the lost MD
    # runs again, everything before the loop is reused
    resumed = subprocess.run([*cli, "resume", first_id, "--workdir", str(run), "--from-iteration", "0"],
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    second_id = next(p.name for p in sorted((run / "dflow").iterdir(), key=lambda p: p.stat().st_mtime)[::-1]
                     if p.is_dir())
    after = _steps(run / "dflow" / second_id)
    assert all(v["phase"] == "Succeeded" for v in after.values())
    assert after["distill-iter-000-explore-task-000"]["cached"] == "false"  # the lost one ran again
    kept = {k for k in done_before if not k.startswith("distill-iter-")}
    assert kept <= set(after) and all(after[k]["cached"] == before[k]["cached"] for k in kept)
    # a finished step that ran again would have found its record and said cached=true
    assert not [k for k, v in after.items() if v["cached"] == "true"]

    assert_same_lam(run, prefect_lam_run.run)


def _ssh_executor(**profile) -> dict:
    return {"context_type": "SSHContext", "remote_root": "/scratch/me/lamflow", "queue_name": "gpu",
            "remote_profile": {"hostname": "login.cluster.example", "username": "me",
                               "key_filename": "/home/me/.ssh/id_ed25519", **profile}}


def test_on_argo_a_batch_job_step_waits_in_a_light_pod_that_reads_its_ssh_key_from_a_secret(tmp_path):
    """A pod has no scheduler: a step with an executor submits over SSH to the login node. Its pod
    holds no GPU (the job does), has no timeout (the queue's wait) and no Argo retries (lamflow's
    executor retries the job), and reads the key from the Secret, whose name the config carries
    (a resume finds it without the flag); the password-free key never enters the Workflow."""
    from lamflow.flows.engines.dflow.engine import SSH_MOUNT, for_pods

    raw = tiny_config(tmp_path)
    raw["resources"] = {"train": {"timeout": 3600, "retries": 2, "executor": _ssh_executor()}}
    cfg = DistillConfig.parse(raw, tmp_path)
    manifest = export("distill", cfg, Path("/runs/tiny"), ArgoSettings(ssh_secret="lamflow-ssh"))
    schema = json.loads(SCHEMA.read_text())
    schema = {**{k: v for k, v in schema.items() if k != "oneOf"},
              "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"}
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(manifest))
    assert not errors, [f"{list(e.path)}: {e.message[:150]}" for e in errors[:5]]

    templates = {t["name"].rsplit("-", 1)[0]: t for t in manifest["spec"]["templates"] if "script" in t}
    train, explore = templates["trainop"], templates["exploreop"]
    assert "nvidia.com/gpu" not in train["script"]["resources"]["requests"] and train["script"]["image"].endswith("-cpu")
    assert not train.get("retryStrategy") and not train.get("timeout") and not train.get("nodeSelector")
    key_dir = str(SSH_MOUNT / "lamflow-ssh")
    assert {"name": "ssh-key", "secret": {"secretName": "lamflow-ssh", "defaultMode": 0o400}} in train["volumes"]
    assert {"name": "ssh-key", "mountPath": key_dir, "readOnly": True} in train["script"]["volumeMounts"]
    # a step without an executor keeps its GPU pod, and no key
    assert explore["script"]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert "ssh-key" not in json.dumps(explore)
    # the planner is no step: an executor in `default` leaves it a planner's pod, not a waiter
    everywhere = export("distill", DistillConfig.parse({**raw, "resources": {"default": {"executor": _ssh_executor()}}},
                                                       tmp_path), Path("/runs/tiny"), ArgoSettings(ssh_secret="lamflow-ssh"))
    plan = next(t for t in everywhere["spec"]["templates"] if t["name"].startswith("planop"))
    assert plan["script"]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"} and "ssh-key" not in json.dumps(plan)
    start = next(s for group in manifest["spec"]["templates"] if group["name"] == manifest["spec"]["entrypoint"]
                 for s in sum(group["steps"], []) if s["name"] == "start")
    sent = json.loads(next(p["value"] for p in start["arguments"]["parameters"] if p["name"] == "config"))
    ex = sent["resources"]["train"]["executor"]
    assert ex["remote_profile"]["key_filename"] == f"{key_dir}/id_ed25519"
    # the job still gets the training's GPU and time; a resume rebuilds the same mount without the flag
    rebuilt = DistillConfig.model_validate(sent)
    assert rebuilt.resources_for("train").gpus("train") == 1
    assert for_pods(rebuilt, None).resources["train"].executor.remote_profile == ex["remote_profile"]

    for resources, field in (
            ({"train": {"executor": {**_ssh_executor(), "context_type": "LocalContext"}}},
             "resources.train.executor.context_type"),
            ({"default": {"executor": _ssh_executor(password="hunter2")}}, "resources.default.executor.remote_profile.password"),
            ({"train": {"executor": {**_ssh_executor(), "remote_profile": {"hostname": "h", "username": "u"}}}},
             "resources.train.executor.remote_profile.key_filename")):
        with pytest.raises(InputError) as err:
            for_pods(DistillConfig.parse({**raw, "resources": resources}, tmp_path), "lamflow-ssh")
        assert err.value.where == field, err.value


def test_exporting_ssh_batch_jobs_without_the_secret_is_one_line_and_exit_2(tmp_path):
    raw = tiny_config(tmp_path)
    raw["resources"] = {"default": {"executor": _ssh_executor()}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "export", str(tmp_path / "config.yaml"),
                          "--engine", "argo"], capture_output=True, text=True, env={**os.environ,
                                                                                 "LAMFLOW_ARGO_SSH_SECRET": ""})
    assert out.returncode == 2 and out.stderr.strip().startswith("lamflow: error: --ssh-secret: "), out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "kubectl create secret generic" in out.stderr


def test_restarting_from_an_iteration_never_reuses_the_final_training():
    """--from-iteration k reuses the stages before the loop and the iterations before k; the
    final training follows the last iteration, so it is planned again (its inputs change)."""
    from types import SimpleNamespace

    from lamflow.flows.engines.dflow.engine import before_iteration

    keys = ["init-train-00", "iter-000-select", "iter-001-select", "final-train", "distill-final-evaluate",
            "distill-iter-000-train-00"]
    kept = before_iteration([SimpleNamespace(key=k) for k in keys], 1, "wf")
    assert [s.key for s in kept] == ["init-train-00", "iter-000-select", "distill-iter-000-train-00"]
