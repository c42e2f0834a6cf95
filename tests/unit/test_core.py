"""The execution core that every engine shares: one source of truth for step parameters, a cache
key without resources, one retry policy, ``lamflow step`` through the runner, typed records."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from conftest import write_cu_frames
from lamflow.flows.core.execute import execute
from lamflow.flows.core.faults import ENV as FAULTS_ENV
from lamflow.flows.core.policy import retryable
from lamflow.flows.core.records import StepCall
from lamflow.flows.core.resources import Resources
from lamflow.flows.engines.local import LocalRunner
from lamflow.flows.pipelines import PIPELINES
from lamflow.steps.errors import InputError, StepFailed
from lamflow.steps.label import LabelParams, LabelResult
from lamflow.steps.registry import STEPS


def _sections(model: type[BaseModel], seen: set | None = None) -> list[type[BaseModel]]:
    """Every pydantic model reachable from a config model's fields."""
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    out = [model]
    for info in model.model_fields.values():
        for arg in [info.annotation, *typing.get_args(info.annotation)] + [
                a for t in typing.get_args(info.annotation) for a in typing.get_args(t)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _sections(arg, seen)
    return out


#: same name, another parameter: the speed benchmark's and the NVE stability run's MD lengths are
#: not the exploration's, and the teacher's ``calculator`` is one of its three sources (None: a
#: model), not a labeller's choice
NOT_THE_SAME = {("nsteps", "speed"), ("nsteps", "stability"), ("calculator", "label"), ("calculator", "speed")}
#: ... and the teacher's MD for initial data is a short warm-up, not an exploration
SECTION_NOT_THE_SAME = {(section, name, step) for name in ("nsteps", "trj_freq")
                        for section, step in (("TeacherMD", "explore"), ("Exploration", "label_md"))}
SECTION_NOT_THE_SAME |= {(section, "nsteps", step) for step in ("explore", "label_md", "stability")
                         for section in ("StabilitySettings", "Efficiency", "Speed")}
#: ... and the loop's teacher caps what it learns from frames a student's broken MD reached (20 eV/Å),
#: where a labelling step alone labels what it is given (no cap unless asked)
SECTION_NOT_THE_SAME |= {("Teacher", "max_force", step) for step in ("label", "teacher_label", "label_md")}
#: ... and an exploration's temperatures are optional (a lammps_template runs its own MD), the
#: teacher's MD's are not
SECTION_NOT_THE_SAME |= {("TeacherMD", "temps", "explore"), ("Exploration", "temps", "label_md")}


def _bounds(info) -> list[str]:
    return sorted(repr(m) for m in info.metadata)


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_config_sections_and_steps_agree_on_every_shared_parameter(pipeline):
    """A field that a config section and a step both have is one parameter: same default (where
    the step sets one) and same bounds. The sections inherit them from the steps' settings."""
    checked = 0
    for section in _sections(PIPELINES[pipeline].config):
        for step in STEPS.values():
            for name in set(section.model_fields) & set(step.params.model_fields):
                ours, theirs = section.model_fields[name], step.params.model_fields[name]
                if any(isinstance(a, type) and issubclass(a, BaseModel)
                       for a in (ours.annotation, *typing.get_args(ours.annotation))):
                    continue  # a sub-section that happens to share a step parameter's name
                if (name, step.name) in NOT_THE_SAME or (section.__name__, name, step.name) in SECTION_NOT_THE_SAME:
                    continue
                if name in ("type_map", "structures", "systems", "model", "output", "seed"):
                    continue  # wiring: the loop fills these in (seeds: one offset per random stream)
                assert _bounds(ours) == _bounds(theirs), f"{section.__name__}.{name} vs {step.name}"
                if not theirs.is_required():
                    assert ours.get_default(call_default_factory=True) == theirs.get_default(
                        call_default_factory=True), f"{section.__name__}.{name} vs {step.name}"
                checked += 1
    assert checked >= 10 if pipeline == "distill" else checked >= 3


def test_sections_are_the_step_settings():
    from lamflow.flows.pipelines.distill.config import Exploration, InitialData, LabelSpec, Selection
    from lamflow.steps.explore import ExploreSettings
    from lamflow.steps.label import LabelSettings
    from lamflow.steps.perturb import PerturbSettings
    from lamflow.steps.select import SelectSettings

    assert issubclass(Selection, SelectSettings) and issubclass(Exploration, ExploreSettings)
    assert issubclass(LabelSpec, LabelSettings) and issubclass(LabelSpec, PerturbSettings)
    assert issubclass(InitialData, PerturbSettings)


def test_resources_are_not_part_of_the_cache_key_and_results_are_typed(tmp_path):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 2, seed=3)
    params = LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "emt")
    first = execute("label", params, Resources(threads=1))
    again = execute("label", params, Resources(threads=2, memory="4Gi"))
    assert not first.cached and again.cached  # more cores do not rerun a finished step
    assert isinstance(again.result, LabelResult) and again.result.n_frames == 2
    assert again.result == first.result


def test_a_finished_step_is_read_back_when_its_inputs_sit_in_another_clone(tmp_path):
    """The config's cells are given by absolute path; a second checkout of the project reads the
    same run back, while an edited cell is computed again."""
    import shutil

    first, second = tmp_path / "clone-a" / "cells", tmp_path / "clone-b" / "cells"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    cell = write_cu_frames(first / "cu.extxyz", 2, seed=5)
    moved = Path(shutil.copy2(cell, second / "cu.extxyz"))

    def label(structures):
        return execute("label", LabelParams(structures=[structures], type_map=["Cu"], output=tmp_path / "run" / "emt"),
                       Resources(threads=1))

    assert not label(cell).cached
    assert label(moved).cached
    write_cu_frames(moved, 2, seed=6)  # the same name, other positions
    assert not label(moved).cached


def test_the_order_of_a_mapping_does_not_change_the_cache_key(tmp_path):
    from lamflow.flows.core.records import cache_key
    from lamflow.steps.train import TrainParams

    def params(overrides):
        return TrainParams(output=tmp_path / "t", type_map=["Cu"], template="se_e2_a", numb_steps=10, compress=False,
                           train=[tmp_path / "data"],
                           overrides=overrides)

    one = params({"training": {"disp_freq": 5, "save_freq": 10}, "learning_rate": {"start_lr": 1e-3}})
    two = params({"learning_rate": {"start_lr": 1e-3}, "training": {"save_freq": 10, "disp_freq": 5}})
    other = params({"learning_rate": {"start_lr": 2e-3}, "training": {"save_freq": 10, "disp_freq": 5}})
    assert cache_key("train", one) == cache_key("train", two) != cache_key("train", other)


def test_the_retry_rule():
    assert not retryable(InputError("teacher.model", "file not found"))
    assert not retryable(OSError(28, "No space left on device"))
    assert retryable(StepFailed("dp train: killed")) and retryable(MemoryError())


def _fault(tmp_path, monkeypatch, **fault) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump([fault]))
    monkeypatch.setenv(FAULTS_ENV, str(path))
    return path


def test_local_runner_retries_a_failed_step_per_its_resources(tmp_path, monkeypatch):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 2, seed=4)
    faults = _fault(tmp_path, monkeypatch, step="label", where="emt", times=1, kind="error")
    call = StepCall("label", LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "emt"), "emt",
                    Resources(retries=1, retry_delay=0))
    [record] = LocalRunner().map([call])
    assert not record.cached and record.result.n_frames == 2
    assert yaml.safe_load(faults.read_text())[0]["times"] == 0  # the first attempt failed

    _fault(tmp_path, monkeypatch, step="label", where="emt2", times=1, kind="error")
    call = StepCall("label", LabelParams(structures=[frames], type_map=["Cu"], output=tmp_path / "emt2"), "emt2",
                    Resources(retries=0))
    with pytest.raises(StepFailed, match="injected failure"):
        LocalRunner().map([call])


def test_bad_input_is_never_retried(tmp_path, monkeypatch):
    call = StepCall("label", LabelParams(structures=[tmp_path / "missing.extxyz"], type_map=["Cu"],
                                         output=tmp_path / "emt"), "emt", Resources(retries=3, retry_delay=30))
    t0 = time.monotonic()
    with pytest.raises(InputError):
        LocalRunner().map([call])
    assert time.monotonic() - t0 < 20  # not retried: a retry would first wait 30 s


def test_dflow_ops_raise_fatal_for_bad_input_and_transient_otherwise(tmp_path, monkeypatch):
    from dflow.python import OPIO, FatalError, TransientError

    from lamflow.flows.engines.dflow.engine import STEP_OPS

    bad = {"params": {"structures": [str(tmp_path / "missing.extxyz")], "type_map": ["Cu"],
                      "output": str(tmp_path / "a")}, "label": "a"}
    with pytest.raises(FatalError):
        STEP_OPS["label"]().execute(OPIO({"call": bad}))
    frames = write_cu_frames(tmp_path / "cu.extxyz", 1, seed=5)
    _fault(tmp_path, monkeypatch, step="label", where="b", times=1, kind="error")
    failing = {"params": {"structures": [str(frames)], "type_map": ["Cu"], "output": str(tmp_path / "b")},
               "label": "b", "resources": {"threads": 1}}
    with pytest.raises(TransientError):
        STEP_OPS["label"]().execute(OPIO({"call": failing}))
    out = STEP_OPS["label"]().execute(OPIO({"call": failing}))  # the retry
    assert out["n_frames"] == 1 and not out["cached"]


def test_lamflow_step_goes_through_the_runner(tmp_path):
    frames = write_cu_frames(tmp_path / "cu.extxyz", 2, seed=6)
    cmd = [sys.executable, "-m", "lamflow.flows.cli", "step", "label", "--set", f"structures=[{frames}]",
           "--set", "type_map=[Cu]", "--set", f"output={tmp_path / 'emt'}", "--threads", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    record = json.loads((tmp_path / "emt.result.json").read_text())  # a record, as pods leave
    assert record["result"]["n_frames"] == 2 == json.loads(first.stdout)["n_frames"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((tmp_path / "emt.result.json").read_text()) == record  # cached

    bad = subprocess.run([*cmd[:4], "select", "--set", "tasks=[]", "--set", "type_map=[Cu]", "--set", "output=x",
                          "--set", "trust_hi=0.01"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "step select: trust_lo (0.05) must be below trust_hi (0.01)" in bad.stderr


def test_a_config_of_another_pipeline_is_one_line_naming_the_right_command():
    lam = Path(__file__).resolve().parents[2] / "examples/lam-cuau/config.yaml"
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "distill", str(lam)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "is a lam config, not a distill config (run it with `lamflow lam`)" in out.stderr


def test_a_misspelt_pretraining_key_is_one_line_before_any_work(tmp_path):
    """deepmd-kit's own argcheck on the multi-task input the pipeline would train with."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[2] / "examples/lam-cuau", tmp_path / "lam")
    cfg = yaml.safe_load((tmp_path / "lam/config.yaml").read_text())
    cfg["pretrain"]["overrides"]["model"]["descriptor"]["repflow"]["nlayer"] = 3
    (tmp_path / "lam/config.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", "lam", str(tmp_path / "lam/config.yaml"),
                          "--workdir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "pretrain.overrides: model.shared_dict.shared_descriptor.repflow.nlayer: unknown key" in out.stderr
    assert not list((tmp_path / "run").rglob("*.result.json"))  # nothing ran
