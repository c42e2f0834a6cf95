"""Which student a distillation delivers, with which figures: one answer (DistillReport.delivering)
for the terminal, the HTML report and the model card, at every stage of a run."""

from __future__ import annotations

from lamflow.flows.pipelines.distill.records import DistillReport, FinalRecord, IterationRecord


def _report() -> DistillReport:
    its = [IterationRecord(iteration=i, student=f"iter-{i}.pth", rmse_f=(0.3, 0.2)[i], n_eval_frames=40,
                           speed_ratio=60.0) for i in range(2)]
    return DistillReport(name="x", run_dir="/r", iterations=its, final_student="iter-1.pth")


def test_without_a_final_training_the_last_measured_iteration_is_delivered():
    r = _report()
    assert r.delivering() is r.iterations[1] and r.delivered_final is None
    r.final_student = "iter-0.pth"  # an earlier student named final (e.g. the last iteration failed)
    assert r.delivering() is r.iterations[0]
    assert DistillReport(name="x", run_dir="/r").delivering() is None  # before any iteration


def test_a_running_final_training_is_not_delivered_yet_and_a_finished_one_brings_its_own_figures():
    r = _report()
    r.final = FinalRecord(student="", numb_steps=30000, n_train_frames=330)  # started, not finished
    assert r.delivered_final is None and r.delivering() is r.iterations[1]
    r.final.student = r.final_student = "final.pth"
    r.final.rmse_f, r.final.rmse_e_per_atom, r.final.n_eval_frames = 0.06, 0.004, 80
    d = r.delivering()
    assert r.delivered_final is r.final and (d.student, d.rmse_f, d.rmse_e_per_atom, d.n_eval_frames) == ("final.pth", 0.06,
                                                                                               0.004, 80)
    assert d.iteration == 1 and d.speed_ratio == 60.0  # the loop's cell and speed: same architecture
    assert r.iterations[1].rmse_f == 0.2  # the iteration's own record is left as measured


def test_the_terminal_summary_names_the_delivered_students_iteration_and_figures():
    from rich.console import Console

    from lamflow.flows.report.distill import summarize

    r = _report()
    r.final_student, r.status, r.delivered = "iter-0.pth", "max_iterations", "/r/student.pth"  # the last one failed
    r.iterations[0].speed_ratio = 55.0
    console = Console(record=True, width=300)
    summarize(console, None, r)
    text = console.export_text()
    assert "(iteration 0's)" in text and "0.3000 eV/Å" in text and "55.0x" in text
    r.final = FinalRecord(student="", numb_steps=30000, n_train_frames=330)  # a final training, unfinished
    console = Console(record=True, width=300)
    summarize(console, None, r)
    text = console.export_text()
    assert "on unseen explored frames: 0.3000 eV/Å" in text  # not its empty "-"
    assert "per atom-step (student" in text  # a report from before speed_atoms: no size
    r.speed_atoms = 1152  # section speed: {atoms: 800} timed a 1152-atom supercell
    console = Console(record=True, width=300)
    summarize(console, None, r)
    assert "55.0x per atom-step on 1152 atoms" in console.export_text()
    assert "understates" not in console.export_text()
    r.speed_atoms = 2  # a primitive cell as it is: the ratio says little, and the summary says so
    console = Console(record=True, width=300)
    summarize(console, None, r)
    assert "note: on 2 atoms a student's step is mostly the fixed cost of a call into its model, so the speed " \
        "ratio understates a production cell's (speed: {atoms: 800} times one)" in console.export_text()


def test_a_final_student_no_better_on_its_own_frames_is_underfit_one_far_better_is_short_of_data():
    from lamflow.flows.report.distill import what_helps

    f = FinalRecord(student="final.pth", numb_steps=30000, rmse_f=0.11)
    assert f.underfit() is None and "train it longer" in what_helps(f)  # an old record: no fit measured
    f.fit_rmse_f = 0.12  # the Si bench's delivered student: 0.123 on its training batches, 0.113 unseen
    assert f.underfit() is True
    assert "underfit (0.1200 eV/Å on its own training frames against 0.1100" in what_helps(f)
    f.fit_rmse_f = 0.03
    assert f.underfit() is False and "label more frames" in what_helps(f)


def test_a_struggling_iteration_says_whether_its_students_are_undertrained_or_explore_beyond_their_data():
    """Water distilled from SevenNet-0 with 1500-step students (fit 0.39 eV/Å on their own frames,
    trust_hi 0.5): 97 % of the explored frames failed and 23 labels were dropped. The terminal,
    its summary and report.html say why; a healthy iteration says nothing."""
    from rich.console import Console

    from lamflow.flows.report.distill import struggling, summarize

    r = _report()
    r.trust_hi = 0.5
    it = r.iterations[-1]
    it.failed_ratio, it.labels_added, it.labels_dropped, it.fit_rmse_f = 0.4, 3, 23, 0.393
    assert struggling(r) is None  # fewer than half failed: nothing to explain
    it.failed_ratio = 0.967
    assert it.explorers_underfit(0.5) is True and it.explorers_underfit(2.0) is False
    why = struggling(r)
    assert why.startswith("iteration 1: 97% of the explored frames failed; the teacher's max_force dropped 23")
    assert "fit their own training frames at 0.393 eV/Å" in why and "Train them longer (student.numb_steps" in why
    it.fit_rmse_f = 0.05  # they fit what they saw: the MD went elsewhere
    why = struggling(r)
    assert "Train them longer" not in why and "goes where no training frame is" in why
    assert "initial_data.teacher_md" in why
    it.fit_rmse_f, it.labels_dropped = None, 0  # a report from before fit_rmse_f was recorded
    assert "Its students' MD, goes where" in struggling(r) and "max_force" not in struggling(r)
    it.fit_rmse_f = 0.393
    console = Console(record=True, width=300)
    summarize(console, None, r)
    assert "note: iteration 1: 97% of the explored frames failed" in console.export_text()


def test_report_html_carries_the_struggling_note(tmp_path):
    from lamflow.flows.report.html import render_html

    r = _report()
    r.trust_hi, r.run_dir = 0.5, str(tmp_path)
    it = r.iterations[-1]
    it.failed_ratio, it.fit_rmse_f = 0.9, 0.393
    page = render_html(r, tmp_path).read_text()
    assert "<strong>Note.</strong> iteration 1: 90% of the explored frames failed" in page
    it.failed_ratio = 0.1
    assert "Note." not in render_html(r, tmp_path).read_text()


def test_a_teacher_that_drops_many_frames_says_why_and_what_helps(tmp_path):
    """GFN2-xTB as the teacher of LiF (tried, 2 CPU cores): its SCF did not converge on 8 of the 34
    frames it was given, 7 of one iteration's 10 candidates; the table showed "3 (8)" and nothing
    said why. The terminal and report.html now name the reasons, counted over the whole run."""
    from rich.console import Console

    from lamflow.flows.pipelines.distill.records import DistillReport
    from lamflow.flows.report.distill import dropping, summarize, write_report
    from lamflow.flows.report.html import render_html
    from lamflow.steps.label import LabelResult

    r = _report()
    r.run_dir = str(tmp_path)
    r.labelling.add([LabelResult(systems=[], n_frames=10, n_dropped=0)])
    assert dropping(r) is None  # all labelled
    r.labelling.add([
        LabelResult(systems=[], n_frames=3, n_dropped=7, drop_reasons={"SCF not converged in 250 cycles": 7}),
        LabelResult(systems=[], n_frames=4, n_dropped=1, drop_reasons={"SCF not converged in 250 cycles": 1})])
    assert (r.labelling.given, r.labelling.dropped) == (25, {"SCF not converged in 250 cycles": 8})
    why = dropping(r)
    assert why.startswith("the teacher left out 8 of the 25 frames it was given to label (SCF not converged in 250 "
                          "cycles: 8); they are never learnt.")
    assert "teacher.calculator_kwargs" in why and "max_force" not in why
    console = Console(record=True, width=400)
    summarize(console, None, r)
    assert "note: the teacher left out 8 of the 25 frames" in console.export_text()
    assert "<strong>Note.</strong> the teacher left out 8 of the 25" in render_html(r, tmp_path).read_text()
    # the report keeps the counts
    r.status = "max_iterations"
    write_report(r, tmp_path, plots=False)
    assert DistillReport.from_json(tmp_path / "report.json").labelling == r.labelling
    # a cap that drops them says the MD broke, not the calculator
    r.labelling.dropped = {"a force above max_force (20 eV/Å)": 8}
    assert "students' MD broke" in dropping(r) and "calculator_kwargs" not in dropping(r)
    r.labelling.dropped = {"a force above max_force (20 eV/Å)": 2}  # fewer than a tenth: nothing to say
    assert dropping(r) is None


def test_students_that_agree_where_they_are_wrong_are_named(tmp_path):
    """Two 100-step students under npt (tried on a Cu primitive cell): 90 % of their frames
    "accurate" by their deviation, the first 0.69 eV/Å from the teacher on the unseen frames."""
    from rich.console import Console

    from lamflow.flows.report.distill import fused, overconfident, summarize

    r = _report()
    r.trust_hi = 0.35
    it = r.iterations[-1]
    it.accurate_ratio, it.rmse_f, it.n_eval_frames, it.failed_ratio = 0.9, 0.688, 2, 0.1
    why = overconfident(r)
    assert why.startswith("iteration 1: the students agree with each other on 90% of the explored frames, but the "
                          "first is 0.688 eV/Å from the teacher on 2 unseen frames (force RMSE; a frame's largest "
                          "atomic error is about 3x that, against trust_hi 0.35)")
    assert "convergence.max_rmse_f" in why
    console = Console(record=True, width=400)
    summarize(console, None, r)
    assert "note: iteration 1: the students agree with each other" in console.export_text()
    it.rmse_f = 0.15  # below trust_hi, but its largest errors (~0.45) above: mostly "accurate" frames that are not
    assert overconfident(r) is not None
    it.rmse_f = 0.1  # largest errors ~0.3, within trust_hi: the deviation does not hide failed frames
    assert overconfident(r) is None
    it.rmse_f, it.accurate_ratio = 0.688, 0.2  # most frames not accurate: the deviation says so itself
    assert overconfident(r) is None
    assert fused(r) is None
    it.n_broken, it.n_frames = 2, 20
    assert fused(r).startswith("iteration 1: 2 of 20 explored frames have atoms closer than half their covalent radii")


def test_the_deviation_plots_legend_covers_no_trust_label(tmp_path, monkeypatch):
    """Low trust levels put trust_lo's label near the middle of the plot's top, where the legend
    sat ('upper center'): seen in a report, the legend hid the level. Whatever the levels, the
    legend covers neither label."""
    import numpy as np

    from lamflow.flows.report import distill as report_module

    figures = []
    monkeypatch.setattr(report_module, "_save", lambda plt, fig, path: figures.append(fig))
    rng = np.random.default_rng(0)
    for trust_lo, trust_hi in ((0.1, 0.3), (0.02, 0.05), (0.3, 3.0), (0.05, 0.5)):
        its = []
        for i in range(3):
            devi = tmp_path / f"devi-{trust_lo}-{i}.npy"
            np.save(devi, 10 ** rng.uniform(-2, 0, 300))  # 0.01 to 1 eV/Å
            its.append(IterationRecord(iteration=i, deviations=str(devi)))
        report = DistillReport(name="x", run_dir=str(tmp_path), iterations=its, trust_lo=trust_lo, trust_hi=trust_hi)
        report_module.plot_deviations(report, tmp_path / "deviations.png")
        fig = figures[-1]
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        labels = [t for t in ax.texts if "trust" in t.get_text()]
        assert len(labels) == 2
        for label in labels:
            assert not legend.overlaps(label.get_window_extent(renderer)), (trust_lo, trust_hi, label.get_text())


def test_a_speed_not_measured_is_a_note_with_its_reason():
    """A timing MD that failed leaves the run going (SpeedResult.error): the notes say which speed
    is missing and why, and the ratio stays empty rather than wrong."""
    from lamflow.flows.report.distill import notes

    r = _report()
    assert not [n for n in notes(r) if "speed" in n]
    r.iterations[1].speed_error, r.iterations[1].speed_ratio = "the timing MD failed: ERROR: Lost atoms", None
    r.teacher_speed_error = "no Performance line in speed-teacher/task.000/log.lammps"
    (note,) = [n for n in notes(r) if "speed not measured" in n]
    assert "the teacher's: no Performance line" in note and "iteration 1's student's: the timing MD failed" in note
