"""A user's own LAMMPS input (dpgen2's lmp-template): revised, run, read by select; bad ones refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from lamflow.steps import explore, lammps_input, select
from lamflow.steps.errors import InputError

#: as a dpgen2 user writes one: LAMMPS variables of its own (which a string.Template would take for
#: fields), the revision keys, a model line and a dump line dpgen2 rewrites, masses of its own
DPGEN2_TEMPLATE = """\
variable        NSTEPS          equal V_NSTEPS
variable        THERMO_FREQ     equal 10
variable        TEMP            equal V_TEMP
units           metal
boundary        p p p
atom_style      atomic
neighbor        1.0 bin
read_data       conf.lmp
mass            1 63.546
pair_style      deepmd graph.000.pb graph.001.pb out_freq ${THERMO_FREQ} out_file model_devi.out
pair_coeff      * *
thermo_style    custom step temp pe ke etotal press vol
thermo          ${THERMO_FREQ}
dump            dpgen_dump all custom ${THERMO_FREQ} traj.dump id type x y z
velocity        all create ${TEMP} 4928 dist gaussian
fix             1 all nvt temp ${TEMP} ${TEMP} 0.1
timestep        0.001
run             ${NSTEPS}
"""

#: a heating ramp with no masses (conf.lmp has them) and no dump line (lamflow adds it)
RAMP = """\
units           metal
atom_style      atomic
read_data       conf.lmp
pair_style      deepmd model.pb
pair_coeff      * *
velocity        all create 100 7 dist gaussian
fix             1 all nvt temp 100 TEMP_END 0.1
run             30
"""


def test_each_revision_is_a_task_and_its_frames_are_selected(tmp_path, students, cu_frames):
    template = tmp_path / "in.lammps"
    template.write_text(DPGEN2_TEMPLATE)
    result = explore.run(explore.ExploreParams(
        output=tmp_path / "x", models=[students[0].model, students[1].model], type_map=["Cu"],
        structure=cu_frames, lammps_template=template, revisions={"V_TEMP": [300, 1200], "V_NSTEPS": [40]},
        trj_freq=10))
    assert [(t.revision, t.temp, t.status) for t in result.tasks] == [
        ({"V_TEMP": "300", "V_NSTEPS": "40"}, None, "ok"), ({"V_TEMP": "1200", "V_NSTEPS": "40"}, None, "ok")]
    text = (result.tasks[1].path / "in.lammps").read_text()
    assert "variable        TEMP            equal 1200" in text and "${TEMP}" in text  # LAMMPS' own, untouched
    assert "graph.000.pb" not in text and f'"{students[1].model.resolve()}" out_freq 10 out_file model_devi.out' in text
    assert "traj.dump id type x y z fx fy fz" in text and "V_" not in text
    for task in result.tasks:
        assert np.loadtxt(task.path / "model_devi.out", ndmin=2).shape[0] == 40 // 10 + 1
    chosen = select.run(select.SelectParams(output=tmp_path / "s", tasks=[t.path for t in result.tasks],
                                            type_map=["Cu"], trust_lo=1e-6, trust_hi=1e3))
    assert chosen.n_frames == 2 * 40 // 10 and chosen.n_failed_tasks == 0  # (the starting frames are not judged)


def test_a_template_without_masses_or_dump_gets_lamflows(tmp_path, students, cu_frames):
    """Without the dump lamflow adds, selection would have no frames; the masses come with the
    starting cell (without them LAMMPS stops at 'Not all per-type masses are set')."""
    template = tmp_path / "ramp.in"
    template.write_text(RAMP)
    result = explore.run(explore.ExploreParams(
        output=tmp_path / "x", models=[students[0].compressed], type_map=["Cu"], structure=cu_frames,
        lammps_template=template, revisions={"TEMP_END": [900]}, trj_freq=10))
    (task,) = result.tasks
    assert task.status == "ok", task.reason
    text = (task.path / "in.lammps").read_text().splitlines()
    assert "Masses" in (task.path / "conf.lmp").read_text()
    assert text.index("dump_modify     dpgen_dump sort id") < text.index("run             30")
    assert len(list(open(task.path / "traj.dump").read().split("ITEM: TIMESTEP"))) - 1 == 30 // 10 + 1


def test_revisions_enumerate_like_dpgen2s_and_longer_keys_go_first():
    points = lammps_input.revision_points({"V_T": [1, 2], "V_TEMP": [300, 600, 900]})
    assert points[:4] == [{"V_T": 1, "V_TEMP": 300}, {"V_T": 1, "V_TEMP": 600},
                          {"V_T": 1, "V_TEMP": 900}, {"V_T": 2, "V_TEMP": 300}]
    assert lammps_input.revise("fix 1 all nvt temp V_TEMP V_TEMP V_T", points[1]) == "fix 1 all nvt temp 600 600 1"


@pytest.mark.parametrize("text, revisions, message", [
    (DPGEN2_TEMPLATE.replace("pair_style      deepmd", "pair_style      eam"), {"V_TEMP": [1], "V_NSTEPS": [20]},
     "has no 'pair_style deepmd' line"),
    (DPGEN2_TEMPLATE + "pair_style deepmd other.pb\n", {"V_TEMP": [1], "V_NSTEPS": [20]},
     "has 2 'pair_style deepmd' lines (lines 10, 19)"),
    (DPGEN2_TEMPLATE.replace("conf.lmp", "my.data"), {"V_TEMP": [1], "V_NSTEPS": [20]},
     "has no 'read_data conf.lmp' line"),
    (DPGEN2_TEMPLATE, {"V_TEMP": [1], "V_NSTEPS": [20], "V_PRES": [1.0]}, "iterations[2].revisions.V_PRES: does not "
                                                                          "occur in in.lammps"),
    (DPGEN2_TEMPLATE.replace("${NSTEPS}", "V_NSTEPS"), {"V_TEMP": [1], "V_NSTEPS": [5]},
     "runs 5 MD steps with {'V_TEMP': 1, 'V_NSTEPS': 5}, fewer than trj_freq (10)"),
    (DPGEN2_TEMPLATE.replace("run ", "minimize 0 0 10 10 #"), {"V_TEMP": [1], "V_NSTEPS": [20]}, "has no 'run' line"),
    (None, {}, "iterations[2].lammps_template: file not found"),
])
def test_a_bad_template_is_refused_before_any_md(tmp_path, text, revisions, message):
    path = tmp_path / "in.lammps"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        lammps_input.check(path, revisions, 10, prefix="iterations[2].")


@pytest.mark.parametrize("settings, message", [
    ({"temps": [300], "nsteps": 100}, "temps, nsteps given with lammps_template"),
    ({"revisions": {"V_TEMP": []}}, "revisions.V_TEMP: expected a non-empty list"),
])
def test_md_settings_beside_a_template_are_refused(settings, message):
    """The model's own checks: they hold wherever it is validated (a pod without the file too)."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        explore.ExploreSettings(lammps_template="nowhere/in.lammps", **settings)
    with pytest.raises(ValidationError, match="revisions given without lammps_template"):
        explore.ExploreSettings(temps=[300], revisions={"V_TEMP": [1]})
