"""Steps as Slurm jobs (``resources.<step>.executor``), against a real single-node Slurm that the
module starts and stops (:mod:`slurm_cluster`). One xdist group: one cluster, one worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_same_distillation, run_in_use, tiny_config, write_cu_frames
from slurm_cluster import SlurmCluster, free_port

from lamflow.flows.core.resources import Resources
from lamflow.flows.executors.batch import batch_script

pytestmark = pytest.mark.xdist_group("slurm")

CLI = [sys.executable, "-m", "lamflow.flows.cli"]
#: the compute steps of a distillation, sent to Slurm (the light ones stay in the flow's process)
ON_SLURM = {"train": {"gpu": 0, "retries": 0, "executor": {"batch_type": "Slurm", "check_interval": 0.5}},
            "explore": {"gpu": 0, "executor": {"batch_type": "Slurm", "check_interval": 0.5}},
            "teacher_label": {"gpu": 0, "executor": {"batch_type": "Slurm", "check_interval": 0.5}}}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    yield cluster
    cluster.stop()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def _config(tmp_path: Path, resources: dict, **changes) -> Path:
    cfg = {**tiny_config(tmp_path), "resources": resources, **changes}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_gpu_step_script_asks_slurm_for_its_gpus_memory_and_time(tmp_path):
    """The batch script as dpdispatcher writes it, from the same keys every engine reads."""
    frames = write_cu_frames(tmp_path / "cu.extxyz", 1)
    params = {"output": str(tmp_path / "t"), "type_map": ["Cu"], "template": "se_e2_a", "train": [str(frames)],
              "numb_steps": 10, "compress": False}
    gpu = Resources.model_validate({"threads": 4, "memory": "16Gi", "timeout": 5400,
                                    "executor": {"queue_name": "gpu", "module_list": ["cuda/12.4"],
                                                 "custom_flags": ["#SBATCH --account=abc"]}})
    lines = batch_script("train", params, gpu, "iter-000/train-00").splitlines()
    for wanted in ("#SBATCH --gres=gpu:1", "#SBATCH --ntasks-per-node 4", "#SBATCH --partition gpu",
                   "#SBATCH --mem=16G", "#SBATCH --time=90", "#SBATCH --account=abc",
                   "#SBATCH --job-name lamflow-iter-000-train-00", "module load cuda/12.4"):
        assert wanted in lines, (wanted, lines)
    in_bytes = Resources.model_validate({"memory": "17179869184", "executor": {}})  # Kubernetes' reading: bytes
    assert "#SBATCH --mem=16384M" in batch_script("train", params, in_bytes).splitlines()
    cpu_only = Resources.model_validate({"executor": {}})  # perturb is no GPU step: no GPU line
    script = batch_script("perturb", {"output": str(tmp_path / "p"), "structures": [str(frames)],
                                      "type_map": ["Cu"]}, cpu_only)
    assert "--gres" not in script and "#SBATCH --nodes 1" in script.splitlines()


def _check(tmp_path: Path, resources: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "config", "--check", str(_config(tmp_path, resources))],
                          capture_output=True, text=True, timeout=300)


def test_wrong_executors_and_an_unreachable_slurm_are_one_line_and_exit_2(tmp_path, slurm):
    cases = [
        ({"train": {"executor": {"batch_type": "Slrum"}}}, "resources.train.executor.batch_type"),
        ({"train": {"executor": {"queue_nmae": "gpu"}}}, "resources.train.executor.queue_nmae"),
        ({"train": {"executor": {"kwargs": {"custom_gpu_lin": "x"}}}}, "custom_gpu_lin"),
        ({"default": {"gpu": 0, "executor": {"queue_name": "nosuch"}}}, "no partition 'nosuch'"),
        ({"default": {"gpu": 0, "memory": "lots", "executor": {}}}, "resources.default.memory: expected a size"),
        # train gets a GPU by default (the one cluster policy): this Slurm has none
        ({"train": {"executor": {}}}, "resources.train.gpu: train asks for 1 GPU"),
    ]
    for resources, expected in cases:
        out = _check(tmp_path, resources)
        assert out.returncode == 2 and expected in out.stderr, (resources, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert _check(tmp_path, {"default": {"gpu": 0, "executor": {}}}).returncode == 0

    dead = tmp_path / "dead.conf"  # a controller that does not answer
    dead.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", slurm.conf.read_text()))
    out = subprocess.run([*CLI, "config", "--check", str(_config(tmp_path, {"default": {"gpu": 0, "executor": {}}}))],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "SLURM_CONF": str(dead)})
    assert out.returncode == 2 and "resources.default.executor: Slurm cannot be reached" in out.stderr, out.stderr
    no_slurm = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run([*CLI, "config", "--check", str(_config(tmp_path, {"default": {"gpu": 0, "executor": {}}}))],
                         capture_output=True, text=True, timeout=300, env=no_slurm)
    assert out.returncode == 2 and "`sinfo` is not on this machine's PATH" in out.stderr, out.stderr


def _records(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): json.loads(p.read_text()) for p in run.rglob("*.result.json")}


@pytest.mark.slow(seconds=240)
def test_distillation_with_training_md_and_labelling_as_slurm_jobs_matches_the_embedded_run(
        tmp_path, slurm, prefect_cli_run):
    """On the Prefect engine (the default): each job is submitted and awaited by a Prefect task."""
    run = tmp_path / "run"
    out = subprocess.run([*CLI, "distill", str(_config(tmp_path, ON_SLURM)), "--workdir", str(run)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == prefect_cli_run.returncode, out.stdout[-3000:] + out.stderr[-3000:]
    records = _records(run)
    jobs = {name: r["job_id"] for name, r in records.items() if r.get("job_id")}
    kinds = {r["step"] for r in records.values() if r.get("job_id")}
    assert kinds == {"train", "explore", "teacher_label"}, kinds
    assert not {r["step"] for r in records.values() if not r.get("job_id")} & kinds
    # Slurm knows every one of them, finished
    known = dict(line.split() for line in slurm.run("squeue", "-h", "-t", "all", "-o", "%i %T").splitlines())
    assert all(known.get(job) == "COMPLETED" for job in jobs.values()), (jobs, known)
    with run_in_use(prefect_cli_run) as reference:
        assert_same_distillation(json.loads((run / "report.json").read_text()),
                                 json.loads((reference / "report.json").read_text()))


def _running_training(slurm: SlurmCluster, proc: subprocess.Popen) -> str | None:
    for _ in range(600):
        lines = slurm.run("squeue", "-h", "-t", "R", "-o", "%i %j").split("\n")
        job = next((ln.split()[0] for ln in lines if "train" in ln), None)
        if job or proc.poll() is not None:
            return job
        time.sleep(0.5)
    return None


@pytest.mark.slow(seconds=220)
def test_a_job_cancelled_with_scancel_or_by_sigterm_to_the_run_then_the_run_resumes(tmp_path, slurm):
    """On the local engine, one iteration (what is checked is the stops and the resume): a
    training job cancelled with scancel stops the run in one line naming it and its logs; SIGTERM
    to the next run cancels its running job; the third run finishes, redoing nothing finished."""
    config = _config(tmp_path, {"train": ON_SLURM["train"]}, max_iterations=1)
    run = tmp_path / "run"
    cmd = [*CLI, "distill", str(config), "--engine", "local", "--workdir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = _running_training(slurm, proc)
    assert job, proc.communicate()
    time.sleep(2)
    slurm.run("scancel", job)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout[-2000:] + stderr[-2000:]
    line = next(ln for ln in stderr.splitlines() if f"Slurm job {job} failed" in ln)
    assert "see " in line and "/task/err" in line, line  # where its logs are
    before = _records(run)
    assert before, "the steps before the training keep their records"

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = _running_training(slurm, proc)
    assert second and second != job, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert slurm.run("squeue", "-h", "-t", "all", "-j", second, "-o", "%T").strip() == "CANCELLED"

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert again.returncode in (0, 3), again.stdout[-3000:] + again.stderr[-3000:]
    after = _records(run)
    assert all(after[name]["finished"] == rec["finished"] for name, rec in before.items())  # not rerun
    trainings = [r for r in after.values() if r["step"] == "train"]
    assert trainings and all(r["job_id"] and r["job_id"] not in (job, second) for r in trainings)


@pytest.fixture(scope="module")
def ssh(tmp_path_factory, slurm):
    from ssh_server import SSHServer

    server = SSHServer(tmp_path_factory.mktemp("sshd"), env=slurm.env).start()
    yield server
    server.stop()


def test_over_ssh_inputs_go_up_outputs_come_back_and_the_numbers_are_those_of_here(tmp_path, slurm, ssh):
    """lamflow on a 'laptop', Slurm behind SSH (127.0.0.1): labelling, then a training on those
    labels, as Slurm jobs that see none of this machine's paths; the records are written here
    with this machine's paths and keys, and equal the same steps run in process."""
    from conftest import TINY_SE_E2_A
    from lamflow.flows.engines.local import LocalRunner
    from lamflow.flows.core.records import StepCall
    from lamflow.steps.label import LabelParams
    from lamflow.steps.train import TrainParams

    frames = write_cu_frames(tmp_path / "cu.extxyz", 4, seed=5)
    cluster = tmp_path / "cluster"  # the cluster's own folder: nothing of the run is there
    on_ssh = Resources.model_validate({"threads": 1, "gpu": 0, "executor": {
        "context_type": "SSHContext", "remote_root": str(cluster), "remote_profile": ssh.profile,
        "command": sys.executable, "check_interval": 0.5}})
    here = Resources(threads=1)

    def steps(root: Path, res: Resources):
        (label,) = LocalRunner().map([StepCall("label", LabelParams(structures=[frames], type_map=["Cu"],
                                                                    output=root / "labels"), "label", res)])
        (train,) = LocalRunner().map([StepCall("train", TrainParams(
            output=root / "student", type_map=["Cu"], template="se_e2_a", overrides=TINY_SE_E2_A,
            train=label.result.systems, numb_steps=20, compress=False), "train", res)])
        return label, train

    label, train = steps(tmp_path / "remote", on_ssh)
    assert label.job_id and train.job_id
    assert all(Path(s).is_dir() and str(s).startswith(str(tmp_path / "remote")) for s in label.result.systems)
    assert train.result.model.is_file() and str(train.result.model).startswith(str(tmp_path / "remote"))
    assert any(cluster.rglob("inputs/*/cu.extxyz"))  # uploaded to the cluster's folder

    ref_label, ref_train = steps(tmp_path / "local", here)
    assert label.result.n_frames == ref_label.result.n_frames == 4
    for a, b in zip(label.result.systems, ref_label.result.systems):
        for name in ("energy.npy", "force.npy"):
            assert np.array_equal(np.load(Path(a) / "set.000" / name), np.load(Path(b) / "set.000" / name))
    lcurve = [np.loadtxt(t.result.lcurve) for t in (train, ref_train)]
    assert np.allclose(lcurve[0], lcurve[1], rtol=1e-6)  # same seeds, same numbers

    again, _ = steps(tmp_path / "remote", on_ssh)  # finished: read back here, nothing submitted
    assert again.cached and again.job_id == label.job_id


def test_an_ssh_host_that_does_not_answer_is_one_line_and_exit_2(tmp_path, slurm, ssh):
    profile = {**ssh.profile, "port": free_port(), "timeout": 5}
    executor = {"context_type": "SSHContext", "remote_root": str(tmp_path / "c"), "remote_profile": profile}
    out = _check(tmp_path, {"default": {"gpu": 0, "executor": executor}})
    assert out.returncode == 2 and "resources.default.executor: cannot reach" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert _check(tmp_path, {"default": {"gpu": 0, "executor": {**executor, "remote_profile": ssh.profile}}}
                  ).returncode == 0


def test_an_argo_pod_plans_and_submits_its_step_over_ssh_with_the_key_from_its_secret(tmp_path, slurm, ssh):
    """What the pods of an Argo workflow do with a step sent to Slurm: the planner (level 0:
    preflight, the cluster must answer) plans the labelling; the step's OP submits it over SSH
    with the key where the Secret is mounted, and its outputs and record come back into the run
    directory. The mount is a link here (no Kubernetes); the config is the one the Workflow carries."""
    from lamflow.flows.engines.dflow.engine import SSH_MOUNT, STEP_OPS, PlanOP, for_pods
    from lamflow.flows.pipelines.distill.config import DistillConfig

    secret = f"lamflow-test-{os.getpid()}"
    mount = Path(str(SSH_MOUNT / secret))
    mount.parent.mkdir(parents=True, exist_ok=True)
    mount.symlink_to(ssh.root, target_is_directory=True)
    try:
        executor = {"context_type": "SSHContext", "remote_root": str(tmp_path / "cluster"),
                    "remote_profile": ssh.profile, "command": sys.executable, "check_interval": 0.5}
        raw = {**tiny_config(tmp_path), "resources": {"label": {"gpu": 0, "executor": executor}}}
        cfg = for_pods(DistillConfig.parse(raw, tmp_path), secret)
        assert cfg.resources["label"].executor.remote_profile["key_filename"] == str(mount / "client_key")
        run = tmp_path / "run"
        plan = PlanOP().execute({"flow": "distill", "config": cfg.model_dump(mode="json", by_alias=True),
                                 "run_dir": str(run), "level": 0})
        assert plan["step"] == "label", plan
        out = STEP_OPS["label"]().execute({"call": plan["calls"][0]})
        assert out["n_frames"] > 0 and out["cached"] is False
        record = json.loads(next(run.rglob("chunk-000.result.json")).read_text())
        assert record["job_id"] and slurm.run("squeue", "-h", "-t", "all", "-j", record["job_id"],
                                              "-o", "%T").strip() == "COMPLETED"
        assert any((tmp_path / "cluster").rglob("inputs/*/*"))  # went up; the cluster has no path of the run
    finally:
        mount.unlink()
