"""The run report: ``report.json`` after every iteration, PNG plots, and the terminal table.

Written atomically so a crashed or still-running distillation always has a readable report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lamflow.steps.artifacts import write_json
from lamflow.steps.errors import ABOVE_MAX_FORCE, NON_FINITE

from lamflow.flows.pipelines.distill.records import (LARGEST_TO_RMSE, STRUGGLING_FAILED_RATIO, DistillReport,
                                                    FinalRecord)


def write_report(report: DistillReport, run_dir: Path, plots: bool = True) -> Path:
    path = write_json(Path(run_dir) / "report.json", report.as_dict())
    if plots and report.iterations:
        plot_deviations(report, Path(run_dir) / "deviations.png")
        plot_convergence(report, Path(run_dir) / "convergence.png")
        plot_speed(report, Path(run_dir) / "speed.png")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_deviations(report: DistillReport, path: Path) -> None:
    """Histogram of the student's max force error (vs teacher) per iteration.

    The deviation axis is logarithmic: one exploration spans 0.01 to tens of eV/Å (a broken MD),
    and on a linear axis the trust window is a sliver. The three zones are shaded, and the two
    trust labels sit on the outer sides of their lines, or one above the other where the lines are
    too close for that, so they never print over each other; the legend sits right of the axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    arrays = [(r.iteration, np.load(r.deviations)) for r in report.iterations
              if r.deviations and Path(r.deviations).is_file()]
    values = np.concatenate([a[np.isfinite(a) & (a > 0)] for _, a in arrays]) if arrays else np.empty(0)
    # an adaptive lower level moves: the last iteration's is drawn (each one's is in the tables)
    trust_lo, lo_name = report.trust_lo, "trust_lo "
    if report.trust_lo_adaptive:
        trust_lo = next((r.trust_lo for r in reversed(report.iterations) if r.trust_lo is not None), 0.0)
        lo_name = "trust_lo\n(adaptive, last)"
    if values.size:
        levels = [v for v in (trust_lo, report.trust_hi) if v > 0]
        lo = max(min(float(values.min()), *levels) / 1.5, 1e-4)
        hi = max(float(values.max()), *levels) * 1.5
        bins = np.geomspace(lo, hi, 50)
        for k, devi in arrays:
            ax.hist(np.clip(devi[np.isfinite(devi)], lo, hi), bins=bins, histtype="step", lw=1.5,
                    label=f"iteration {k}")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.05, 0.1, 0.2: no powers
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a narrow range
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room above the bars for the trust labels
        ax.axvspan(lo, trust_lo, color="tab:green", alpha=0.07, lw=0)
        ax.axvspan(trust_lo, report.trust_hi, color="tab:orange", alpha=0.10, lw=0)
        ax.axvspan(report.trust_hi, hi, color="tab:red", alpha=0.07, lw=0)
        top = ax.get_ylim()[1]
        # trust_lo's label sits left of its line, trust_hi's right of its own (apart), unless the
        # line is too close to the axis' edge for it: then on its other side
        room = 0.2 * np.log(hi / lo)
        lo_side = "right" if np.log(trust_lo / lo) > room else "left"
        hi_side = "left" if np.log(hi / report.trust_hi) > room else "right"
        # a label turned towards a close other level would print over that one's: it goes lower
        facing = (lo_side == "left" or hi_side == "right") and np.log(report.trust_hi / trust_lo) < room
        for level, name, side, y in ((trust_lo, lo_name, lo_side, 0.97),
                                     (report.trust_hi, "trust_hi", hi_side, 0.72 if facing else 0.97)):
            ax.axvline(level, color="grey", ls="--", lw=1)
            text = "\n".join(f" {t}" if side == "left" else f"{t} " for t in f"{name}\n{level:.3g}".split("\n"))
            ax.text(level, top * y, text, color="dimgrey", va="top", ha=side, fontsize=8, zorder=3,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.5))  # over the other line
        # beside the axes, not in them: inside, any spot is where some run's levels put a label
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel("max atomic force deviation (eV/Å, log scale)")
    ax.set_ylabel("explored frames")
    ax.set_title(f"{report.name}: model deviation per iteration")
    _save(plt, fig, path)


def plot_convergence(report: DistillReport, path: Path) -> None:
    """Accurate/candidate/failed ratios and the student's force RMSE over iterations."""
    plt = _pyplot()
    its = [r.iteration for r in report.iterations]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for key, colour in (("accurate_ratio", "tab:green"), ("candidate_ratio", "tab:orange"),
                        ("failed_ratio", "tab:red")):
        a1.plot(its, [getattr(r, key) for r in report.iterations], "o-", color=colour,
                label=key.replace("_ratio", ""))
    a1.set_ylim(-0.02, 1.02)
    a1.set_xlabel("iteration")
    a1.set_ylabel("fraction of explored frames")
    a1.legend()
    rmse = [r.rmse_f if r.rmse_f is not None else np.nan for r in report.iterations]
    a2.plot(its, rmse, "o-", color="tab:blue", label="force RMSE vs teacher, unseen frames")
    if report.trust_lo_adaptive:  # what its rule watches: the level settling
        a2.plot(its, [np.nan if r.trust_lo is None else r.trust_lo for r in report.iterations], "s--",
                color="tab:orange", label="adaptive trust_lo (largest atomic error)")
        a2.legend(fontsize=8)
    a2.set_xlabel("iteration")
    a2.set_ylabel("eV/Å")
    for a in (a1, a2):
        a.set_xticks(its)
    fig.suptitle(f"{report.name}: distillation progress")
    _save(plt, fig, path)


def plot_speed(report: DistillReport, path: Path) -> None:
    """The student's LAMMPS speed over iterations, against the teacher's (the point of distilling)."""
    plt = _pyplot()
    its = [r.iteration for r in report.iterations]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    speeds = [r.student_speed if r.student_speed is not None else np.nan for r in report.iterations]
    ax.plot(its, speeds, "o-", color="tab:purple", label="student")
    if report.teacher_speed:
        ax.axhline(report.teacher_speed, color="grey", ls="--", lw=1, label=f"teacher ({report.teacher_engine})")
    ax.set_ylim(bottom=0)
    ax.set_xticks(its)
    ax.set_xlabel("iteration")
    ax.set_ylabel("MD timesteps/s (same cell, same threads)"
                  + (f"\n{report.speed_atoms} atoms" if report.speed_atoms else ""))
    ax.set_title(f"{report.name}: MD speed")
    ax.legend()
    _save(plt, fig, path)


def table(report: DistillReport):
    """The per-iteration table shown in the terminal."""
    from rich.table import Table

    t = Table(title=f"lamflow distill · {report.name}", title_justify="left")
    adaptive = report.trust_lo_adaptive  # its level is the iteration's figure its rule reads
    for col in ("iter", "frames", "accurate", "candidate", "failed", *(("trust_lo",) if adaptive else ()),
                "labels + (dropped)", "train frames", "RMSE F (eV/Å)", "speed × teacher", "explore s", "label s", "train s",
                "wall s"):
        t.add_column(col, justify="right")
    for r in report.iterations:
        s = r.seconds
        t.add_row(
            str(r.iteration), str(r.n_frames), f"{r.accurate_ratio:.3f}", f"{r.candidate_ratio:.3f}",
            f"{r.failed_ratio:.3f}", *(("-" if r.trust_lo is None else f"{r.trust_lo:.4f}",) if adaptive else ()),
            r.labels_text(dropped=""),
            str(r.n_train_frames),
            "-" if r.rmse_f is None else f"{r.rmse_f:.4f}",
            "-" if r.speed_ratio is None else f"{r.speed_ratio:.1f}",
            f"{s.get('explore', 0):.0f}", f"{s.get('teacher_label', 0) + s.get('label', 0):.0f}", f"{s.get('train', 0):.0f}",
            f"{r.wall:.0f}",
        )
    return t


def what_helps(final: FinalRecord | None) -> str:
    """The advice for a delivered student above ``max_rmse_f``, from how well it fits its own
    training frames: an underfit one wants steps or capacity, one short of data wants labels."""
    underfit = None if final is None else final.underfit()
    if underfit is None:
        return "train it longer (student.numb_steps_final) or give it more capacity (student.overrides)"
    fit = f"{final.fit_rmse_f:.4f} eV/Å on its own training frames against {final.rmse_f:.4f} on unseen ones"
    if underfit:
        return (f"it is underfit ({fit}): train it longer (student.numb_steps_final) or give it more capacity "
                "(student.overrides); more labels alone will not help")
    return (f"it fits its training frames far better ({fit}): label more frames like the unseen ones "
            "(max_iterations, selection.max_candidates)")


def struggling(report: DistillReport) -> str | None:
    """Why the last iteration failed most of its frames, and what helps, from how well its
    students fit their own training frames; None for an iteration that is not struggling. A new
    system's first run shows it in the terminal and report.html instead of a silent stall."""
    if not report.iterations:
        return None
    it = report.iterations[-1]
    if it.failed_ratio < STRUGGLING_FAILED_RATIO:
        return None
    head = f"iteration {it.iteration}: {it.failed_ratio:.0%} of the explored frames failed"
    reasons = report.labelling.dropped
    capped = not reasons or any(w.startswith(ABOVE_MAX_FORCE) for w in reasons)
    dropped = "" if it.labels_dropped <= it.labels_added else (
        f"; the teacher's max_force dropped {it.labels_dropped} of its labels (the students' MD broke)" if capped
        else f"; the teacher dropped {it.labels_dropped} of its labels")
    if it.explorers_underfit(report.trust_hi):
        return (f"{head}{dropped}. Its students fit their own training frames at {it.fit_rmse_f:.3g} eV/Å "
                f"(force RMSE; a frame's largest atomic error is about {LARGEST_TO_RMSE:g}x that, against "
                f"trust_hi {report.trust_hi:g}): they are undertrained, their MD leaves the trusted region within "
                "steps, and an iteration learns only from the frames before it breaks. Train them longer "
                "(student.numb_steps, student.numb_steps_next).")
    fit = "" if it.fit_rmse_f is None else f", though they fit their own training frames at {it.fit_rmse_f:.3g} eV/Å"
    return (f"{head}{dropped}. Its students' MD{fit}, goes where no training frame is. Start colder or shorter "
            "(iterations is a schedule), or begin from more teacher frames (initial_data.teacher_md).")


def dropping(report: DistillReport) -> str | None:
    """Why the teacher left many frames out, by reason, and what helps; None when it labelled
    (nearly) all it was given. A calculator that cannot converge an SCF on the students' hot or
    broken frames otherwise shows only as a number in brackets while the loop learns nothing."""
    done = report.labelling
    if not done.many_lost():
        return None
    advice = []
    if any(why != NON_FINITE and not why.startswith(ABOVE_MAX_FORCE) for why in done.dropped):
        advice.append("Where the calculator failed (its words above), other settings (teacher.calculator_kwargs) "
                      "or another method may label such frames, and a colder start (iterations is a schedule) "
                      "gives it fewer broken ones.")
    if any(why.startswith(ABOVE_MAX_FORCE) for why in done.dropped):
        advice.append("Forces beyond teacher.max_force say the students' MD broke there, or that the cap is below "
                      "this system's forces.")
    if NON_FINITE in done.dropped:
        advice.append("A teacher that returns NaN was given frames it cannot describe (atoms too close, an element "
                      "it was not trained on).")
    return (f"the teacher left out {done.lost} of the {done.given} frames it was given to label ({done.reasons()}); "
            "they are never learnt. " + " ".join(advice))


#: "most explored frames": the share of accurate frames above which an ensemble whose real error
#: says otherwise is named overconfident (below it, its deviation already says the student is poor)
MOSTLY_ACCURATE = 0.5


def overconfident(report: DistillReport) -> str | None:
    """An ensemble whose members agree where they are wrong: most explored frames "accurate" by
    their deviation, yet the student's real error on the iteration's unseen teacher-labelled
    frames as large as ``trust_hi`` (its largest atomic error, about ``LARGEST_TO_RMSE`` times its
    RMSE: a frame is judged by its largest atomic deviation). Tried: two 100-step students under
    npt fused Cu atoms, agreed within 0.02 eV/Å, and were 0.69 eV/Å from the teacher; two 300-step
    students running a user's heating ramp called all 120 frames accurate (below 0.1 eV/Å) at
    0.42 eV/Å RMSE, largest errors about 1.3 against trust_hi 0.6. With one student beside a
    DeePMD-kit teacher the deviation is the real error and this cannot happen. None when it
    does not."""
    if not report.iterations:
        return None
    it = report.iterations[-1]
    if it.rmse_f is None or it.rmse_f * LARGEST_TO_RMSE < report.trust_hi or it.accurate_ratio < MOSTLY_ACCURATE:
        return None
    return (f"iteration {it.iteration}: the students agree with each other on {it.accurate_ratio:.0%} of the "
            f"explored frames, but the first is {it.rmse_f:.3g} eV/Å from the teacher on {it.n_eval_frames} unseen "
            f"frames (force RMSE; a frame's largest atomic error is about {LARGEST_TO_RMSE:g}x that, against "
            f"trust_hi {report.trust_hi:g}): their deviation understates their error (students "
            "trained on the same few frames err alike). Judge the run on the real error (convergence.max_rmse_f), "
            "train the students longer (student.numb_steps), or start from more teacher frames "
            "(initial_data.perturbed_frames, initial_data.teacher_md).")


def fused(report: DistillReport) -> str | None:
    """Explored frames whose atoms overlap: the students' MD broke there, and what their deviation
    says of those frames (often "accurate": students err alike) is not to be trusted."""
    if not report.iterations or not report.iterations[-1].n_broken:
        return None
    it = report.iterations[-1]
    return (f"iteration {it.iteration}: {it.n_broken} of {it.n_frames} explored frames have atoms closer than half "
            "their covalent radii: the students' MD broke there (failed, whatever their deviation, and not labelled). "
            "Train them longer (student.numb_steps), start colder or shorter (iterations is a schedule), or "
            "begin from more teacher frames (initial_data.teacher_md).")


def untimed(report: DistillReport) -> str | None:
    """A timing MD that failed: the run went on without that speed (see ``SpeedResult``)."""
    failed = ([f"the teacher's: {report.teacher_speed_error}"] if report.teacher_speed_error else []) + [
        f"iteration {it.iteration}'s student's: {it.speed_error}" for it in report.iterations[-1:] if it.speed_error]
    if not failed:
        return None
    return ("speed not measured, " + "; ".join(failed) + ". The run went on without it; `lamflow step speed` "
            "times a model by hand (docs/input.md, step speed).")


def notes(report: DistillReport) -> list[str]:
    """What the terminal, its progress and report.html say under the table: a struggling
    iteration, an overconfident ensemble, fused atoms, a teacher that drops many frames, a speed
    that could not be measured."""
    return [why for why in (struggling(report), overconfident(report), fused(report), dropping(report),
                            untimed(report)) if why is not None]


#: below this many atoms the speed ratio says more about a call's overhead than about MD (Si,
#: SevenNet-0 and a compressed student: 43x at 64 atoms, 128x at 1152)
FEW_ATOMS = 64


def summarize(console: Any, cfg: Any, report: DistillReport) -> None:
    """The outcome of a distillation in the terminal, after its progress table."""
    console.print()
    last = report.iterations[-1] if report.iterations else None
    state = "[green]converged[/green]" if report.converged else f"[yellow]{report.status}[/yellow]"
    console.print(f"{state} after {len(report.iterations)} iterations in {report.wall_seconds:,.0f} s"
                  + (f" ({report.cached_steps} steps read back; {report.compute_seconds:,.0f} s of compute in all "
                     "sessions)" if report.cached_steps and report.compute_seconds else ""))
    if last is not None:
        d, f = report.delivering() or last, report.delivered_final
        rmse = "-" if d.rmse_f is None else f"{d.rmse_f:.4f} eV/Å"
        ratio = "-" if d.speed_ratio is None else f"{d.speed_ratio:.1f}x"
        made = (f"iteration {d.iteration}'s" if f is None else
                f"iteration {d.iteration}'s, trained {f.numb_steps} more steps on {f.n_train_frames} frames")
        console.print(f"student: {report.delivered} ({made})" if report.delivered
                      else f"student: {report.final_student}")
        where = "unseen explored frames" if f is None else f"{d.n_eval_frames} unseen validation frames"
        if report.status == "inaccurate":
            console.print("exploration converged, but the delivered student's force RMSE (below) is above "
                          "convergence.max_rmse_f: " + what_helps(f))
        console.print(f"student force RMSE vs teacher on {where}: {rmse}; "
                      f"MD speed vs teacher: {ratio} per atom-step"
                      + (f" on {report.speed_atoms} atoms" if report.speed_atoms else "")
                      + " (student in LAMMPS, teacher in "
                      f"{'LAMMPS' if report.teacher_engine == 'lammps' else 'ASE'})")
        if report.speed_atoms and report.speed_atoms < FEW_ATOMS and d.speed_ratio is not None:
            console.print(f"[yellow]note[/yellow]: on {report.speed_atoms} atoms a student's step is mostly the fixed "
                          "cost of a call into its model, so the speed ratio understates a production cell's "
                          "(speed: {atoms: 800} times one)", highlight=False)
    for why in notes(report):
        console.print(f"[yellow]note[/yellow]: {why}", highlight=False)
    console.print(f"report: {Path(report.run_dir) / 'report.json'} (plots beside it)")
