"""train: student (+freeze, compress), multi-task pretraining and fine-tuning with dp --pt."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import TINY_DPA3, write_cu_frames
from lamflow.steps import evaluate, label, train
from lamflow.steps.dp_input import deep_merge, load_template
from lamflow.steps.errors import InputError
from lamflow.steps.inference import load_model


def test_student_trains_freezes_and_compresses(students, cu_data):
    first = students[0]
    assert first.model.is_file() and first.compressed.is_file() and first.lcurve.is_file()
    rendered = json.loads(first.input.read_text())
    assert rendered["model"]["type_map"] == ["Cu"]
    assert rendered["model"]["descriptor"]["neuron"] == [8, 16]
    assert rendered["training"]["numb_steps"] == 40
    lcurve = np.loadtxt(first.lcurve, ndmin=2)
    assert lcurve[-1, 0] == 40  # trained to the last step
    # the compressed model tabulates the embedding net: same physics within interpolation error
    plain = evaluate.run(evaluate.EvaluateParams(model=first.model, systems=cu_data.systems, type_map=["Cu"]))
    fast = evaluate.run(evaluate.EvaluateParams(model=first.compressed, systems=cu_data.systems, type_map=["Cu"]))
    assert fast.rmse_f == pytest.approx(plain.rmse_f, rel=1e-2)
    assert load_model(first.compressed).get_type_map() == ["Cu"]


def test_student_init_from_previous_model_starts_closer(tmp_path, students, cu_data):
    """init_model continues from the previous student: 1 step later it is as good as before."""
    prev = students[0]
    again = train.run(train.TrainParams(compress=False, 
        output=tmp_path / "again", type_map=["Cu"], template=str(prev.input),
        train=cu_data.systems, numb_steps=1, init_model=prev.checkpoint,
    ))
    before = evaluate.run(evaluate.EvaluateParams(model=prev.model, systems=cu_data.systems, type_map=["Cu"]))
    after = evaluate.run(evaluate.EvaluateParams(model=again.model, systems=cu_data.systems, type_map=["Cu"]))
    assert after.rmse_f < 1.5 * before.rmse_f


def test_multitask_pretrain_then_finetune(tmp_path, cu_data):
    alloy = write_cu_frames(tmp_path / "cuau.extxyz", 8, seed=3, symbols_every="Au")
    alloy_data = label.run(label.LabelParams(structures=[alloy], type_map=["Cu", "Au"],
                                             output=tmp_path / "cuau", calculator="emt"))
    pre = train.run(train.TrainParams(compress=False, 
        output=tmp_path / "pretrain", type_map=["Cu", "Au"], template="dpa3", overrides=TINY_DPA3,
        branches={"bulk_cu": {"train": cu_data.systems, "weight": 3.0},
                  "cuau": {"train": alloy_data.systems, "weight": 1.0}},
        numb_steps=10,
    ))
    rendered = json.loads(pre.input.read_text())
    assert set(rendered["model"]["model_dict"]) == {"bulk_cu", "cuau"}
    assert rendered["model"]["shared_dict"]["shared_descriptor"]["type"] == "dpa3"
    assert rendered["training"]["model_prob"] == {"bulk_cu": 3.0, "cuau": 1.0}
    assert pre.model.is_file() and pre.checkpoint.exists()

    for branch in ("bulk_cu", "RANDOM"):
        ft = train.run(train.TrainParams(compress=False, 
            output=tmp_path / f"ft-{branch}", type_map=["Cu", "Au"], template="dpa3",
            overrides=TINY_DPA3, train=cu_data.systems, finetune_from=pre.checkpoint,
            model_branch=branch, numb_steps=10,
        ))
        metrics = evaluate.run(evaluate.EvaluateParams(model=ft.model, systems=cu_data.systems, type_map=["Cu"]))
        assert np.isfinite(metrics.rmse_f) and metrics.n_frames == 24
        log = (ft.model.parent / "train.log").read_text()
        assert f"Resuming from {pre.checkpoint.resolve().parent}" in log  # weights from the pretrained model
        if branch != "RANDOM":
            assert f"pretrained branch '{branch}'" in log


def test_an_se_e2_a_model_version_shares_one_sel_and_its_frozen_head_compresses_alone(tmp_path, cu_data):
    """A shared se_e2_a descriptor with ``sel: auto`` over a Cu and a CuAu branch: DeePMD-kit
    alone counts neighbours per branch and dies on a tensor-size mismatch; lamflow counts them
    once over all data, and a fine-tuning takes them from its checkpoint. Then what
    ``lamflow package --version`` does: one branch frozen and compressed with no training data
    (DeePMD-kit 3 keeps the smallest neighbour distance in the model)."""
    alloy = label.run(label.LabelParams(structures=[write_cu_frames(tmp_path / "cuau.extxyz", 3, seed=3,
                                                                    symbols_every="Au")],
                                        type_map=["Cu", "Au"], output=tmp_path / "cuau", calculator="emt"))
    tiny = {"model": {"descriptor": {"neuron": [4, 8], "axis_neuron": 2, "rcut": 5.0}, "fitting_net": {"neuron": [8]}}}
    common = {"compress": False, "type_map": ["Cu", "Au"], "template": "se_e2_a", "overrides": tiny}
    pre = train.run(train.TrainParams(**common, output=tmp_path / "v1", numb_steps=5,
                                      branches={"cu": {"train": cu_data.systems}, "cuau": {"train": alloy.systems}}))
    sel = json.loads(pre.input.read_text())["model"]["shared_dict"]["shared_descriptor"]["sel"]
    assert isinstance(sel, list) and sel[1] > 0  # counted over both branches: Au neighbours too
    v2 = train.run(train.TrainParams(**common, output=tmp_path / "v2", numb_steps=5, finetune_from=pre.checkpoint,
                                     branches={"cu": {"train": cu_data.systems}, "cuau": {"train": alloy.systems},
                                               "cu2": {"train": cu_data.systems, "finetune_head": "cu"}}))
    for config in (v2.input, v2.input.parent / "out.json"):  # a name in shared_dict, or expanded
        assert train.branch_descriptor(json.loads(config.read_text()), "cu2") == "se_e2_a"
    assert json.loads(v2.input.read_text())["model"]["shared_dict"]["shared_descriptor"]["sel"] == sel
    head = train.freeze(train.FreezeParams(checkpoint=v2.checkpoint, head="cu2", output=tmp_path / "cu2"))
    fast = train.compress(train.CompressParams(model=head.model, output=tmp_path / "cu2-fast"))
    plain, tabulated = (evaluate.run(evaluate.EvaluateParams(model=m, systems=cu_data.systems, type_map=["Cu", "Au"]))
                        for m in (head.model, fast.model))
    assert tabulated.rmse_f == pytest.approx(plain.rmse_f, rel=1e-2) and fast.model != head.model
    with pytest.raises(InputError, match="model file not found"):
        train.compress(train.CompressParams(model=tmp_path / "none.pth", output=tmp_path / "c"))


def test_dpa3_cannot_be_compressed_one_line(tmp_path, cu_data):
    with pytest.raises(InputError, match="cannot be compressed"):
        train.run(train.TrainParams(output=tmp_path / "t", type_map=["Cu"], template="dpa3",
                                    overrides=TINY_DPA3, train=cu_data.systems, numb_steps=2,
                                    compress=True))
    assert not (tmp_path / "t").exists()  # no half-written output folder is left as if complete
    two_body = {"type": "se_e2_a", "sel": "auto", "rcut": 4.0, "neuron": [4, 8], "axis_neuron": 2}
    dpa3 = deep_merge(load_template("dpa3")["model"]["descriptor"], TINY_DPA3["model"]["descriptor"])
    with pytest.raises(InputError, match="descriptor 'dpa3' cannot be compressed"):  # a hybrid: each member
        train.run(train.TrainParams(output=tmp_path / "h", type_map=["Cu"], template="se_e2_a+se_e3",
                                    overrides={"model": {"descriptor": {"list": [two_body, dpa3]}}},
                                    train=cu_data.systems, numb_steps=2, compress=True))


def test_a_hybrid_student_with_angles_trains_and_compresses_to_the_same_forces(tmp_path, cu_data, caplog):
    """The se_e2_a + se_e3 template: a two-body and a three-body embedding, both tabulated by
    ``dp compress``."""
    tiny = {"model": {"descriptor": {"list": [
        {"type": "se_e2_a", "sel": "auto", "rcut": 4.5, "neuron": [4, 8], "axis_neuron": 2},
        {"type": "se_e3", "sel": "auto", "rcut": 3.0, "neuron": [2, 4]}]}, "fitting_net": {"neuron": [8]}}}
    student = train.run(train.TrainParams(output=tmp_path / "h", type_map=["Cu"], template="se_e2_a+se_e3",
                                          overrides=tiny, train=cu_data.systems, numb_steps=10, compress=True))
    rendered = json.loads(student.input.read_text())["model"]["descriptor"]
    assert [d["type"] for d in rendered["list"]] == ["se_e2_a", "se_e3"]
    plain = evaluate.run(evaluate.EvaluateParams(model=student.model, systems=cu_data.systems, type_map=["Cu"]))
    fast = evaluate.run(evaluate.EvaluateParams(model=student.compressed, systems=cu_data.systems, type_map=["Cu"]))
    assert fast.rmse_f == pytest.approx(plain.rmse_f, rel=1e-2) and student.compressed != student.model

    # the loop's next student continues from this one on data grown denser (hotter, compressed
    # cells): DeePMD-kit alone would count more neighbours and die on a tensor-size mismatch
    import ase.io
    from ase.build import bulk

    dense = [bulk("Cu", "fcc", a=3.61 * 0.85, cubic=True).repeat(2) for _ in range(3)]
    for i, atoms in enumerate(dense):
        atoms.rattle(0.05, seed=i)
    ase.io.write(tmp_path / "dense.extxyz", dense)
    squeezed = label.run(label.LabelParams(structures=[tmp_path / "dense.extxyz"], type_map=["Cu"],
                                           output=tmp_path / "dense", calculator="emt"))
    sel = [d["sel"] for d in train.model_descriptor(student.model)["list"]]  # DeePMD-kit's count, first data
    with caplog.at_level(logging.WARNING, logger="lamflow.steps.train"):
        nxt = train.run(train.TrainParams(output=tmp_path / "next", type_map=["Cu"], template="se_e2_a+se_e3",
                                          overrides=tiny, train=[*cu_data.systems, *squeezed.systems], numb_steps=4,
                                          init_model=student.checkpoint, compress=True))
    assert [d["sel"] for d in json.loads(nxt.input.read_text())["model"]["descriptor"]["list"]] == sel
    assert "DeePMD-kit keeps the nearest" in caplog.text  # more neighbours now: DeePMD-kit alone would have died
    assert nxt.compressed.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"template": "no_such_template"}, "unknown template 'no_such_template'"),
        ({"train": ["/nonexistent/system"]}, "not a deepmd/npy system"),
        ({"type_map": ["O"]}, "not in type_map"),
        ({"init_model": "/nonexistent/model.pt"}, "init_model: model file not found"),
    ],
)
def test_bad_train_input(tmp_path, cu_data, change, message):
    params = {"output": tmp_path / "o", "type_map": ["Cu"], "train": cu_data.systems, "template": "se_e2_a",
              "numb_steps": 1, "compress": False, **change}
    with pytest.raises(InputError, match=message):
        train.run(train.TrainParams(**params))


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path, cu_data, caplog):
    """A training killed mid-way (a time limit, a lost machine) restarts from its last whole
    checkpoint, not from step 0; a changed input starts afresh."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import TINY_SE_E2_A

    overrides = deep_merge(TINY_SE_E2_A, {"training": {"save_freq": 20, "disp_freq": 20}})
    params = dict(output=str(tmp_path / "t"), type_map=["Cu"], template="se_e2_a", overrides=overrides,
                  train=[str(s) for s in cu_data.systems], numb_steps=600, compress=False)
    code = f"from lamflow.steps import train; train.run(train.TrainParams(**{params!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    partial = tmp_path / "t.partial"
    deadline = time.time() + 300
    while len(list(partial.glob("model.ckpt-*.pt"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = max(int(p.stem.rsplit("-", 1)[1]) for p in partial.glob("model.ckpt-*.pt"))
    assert 40 <= done < 600 and not (tmp_path / "t").exists()

    with caplog.at_level(logging.INFO, logger="lamflow.steps.train"):
        resumed = train.run(train.TrainParams(**params))
    assert "resuming the training a killed run left at model.ckpt-" in caplog.text
    steps = [int(line.split()[0]) for line in resumed.lcurve.read_text().splitlines() if line[:1] not in "#"]
    # DeePMD-kit appends to the curve and writes the step it restarts at again: the killed run's
    # rows up to its checkpoint, then the rest (a fresh start would have written each step once)
    assert steps.count(done) == 2 and steps[-1] == 600 and resumed.model.is_file()

    caplog.clear()
    (tmp_path / "t").rename(tmp_path / "t.partial")  # as if killed again, but the input changes
    with caplog.at_level(logging.INFO, logger="lamflow.steps.train"):
        fresh = train.run(train.TrainParams(**{**params, "numb_steps": 20, "seed": 7}))
    assert "resuming" not in caplog.text
    assert [int(line.split()[0]) for line in fresh.lcurve.read_text().splitlines() if line[:1] not in "#"][0] < 20


def test_the_fit_on_its_own_frames_is_the_rms_of_the_last_tenth_of_lcurve(tmp_path):
    """Single-task lcurve.out: rmse_f_trn's last tenth (one batch a line), NaN lines skipped; a
    multi-task one (a column per branch) or a missing file: not measured."""
    lines = ["# step       rmse_trn    rmse_e_trn    rmse_f_trn   lr",
             "# If there is no available reference data, rmse_*_{val,trn} will print nan"]
    lines += [f"{100 * i:7d} 1.0e+00 1.0e-02 {0.5 if i <= 18 else (0.3 if i == 19 else 0.4):.2e} 1.0e-03"
              for i in range(1, 21)]
    (tmp_path / "lcurve.out").write_text("\n".join(lines) + "\n")
    assert train.fit_rmse_f(tmp_path / "lcurve.out") == pytest.approx((0.3 ** 2 / 2 + 0.4 ** 2 / 2) ** 0.5)
    (tmp_path / "lcurve.out").write_text("\n".join(lines + ["   2100 nan nan nan 1.0e-03"]) + "\n")
    assert train.fit_rmse_f(tmp_path / "lcurve.out") == pytest.approx((0.3 ** 2 / 2 + 0.4 ** 2 / 2) ** 0.5)
    multi = "# step rmse_trn_cu rmse_e_trn_cu rmse_f_trn_cu rmse_trn_cuau rmse_e_trn_cuau rmse_f_trn_cuau lr\n"
    (tmp_path / "multi.out").write_text(multi + "1 1 1 0.1 1 1 0.2 1e-3\n")
    assert train.fit_rmse_f(tmp_path / "multi.out") is None and train.fit_rmse_f(tmp_path / "nope.out") is None
