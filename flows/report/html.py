"""``lamflow report RUN_DIR``: the run as one self-contained HTML page.

A distillation runs for hours on a cluster; people look at its outcome in a browser, mail it,
attach it to a lab notebook. So the page carries everything inline — the PNG plots as data URIs,
no scripts, no external styles — and is rebuilt from ``report.json`` at any time, also while the
run is still going.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from lamflow.steps.artifacts import atomic_write_text

from .distill import notes, plot_convergence, plot_deviations, plot_speed

if TYPE_CHECKING:  # pragma: no cover
    from lamflow.flows.pipelines.distill.records import DistillReport

PLOTS = (("deviations.png", plot_deviations, "Student force error vs the teacher, per iteration"),
         ("convergence.png", plot_convergence, "Accurate / candidate / failed ratios and force RMSE"),
         ("speed.png", plot_speed, "MD speed of the student, against the teacher"))

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37}.warn{color:#9a6700}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}"""

COLUMNS = ("iteration", "explored frames", "accurate", "candidate", "failed", "trust_lo (eV/Å)", "labels added",
           "train frames", "force RMSE (eV/Å)", "student timesteps/s", "speed × teacher", "wall (s)")


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _rows(report: "DistillReport") -> str:
    out = []
    for r in report.iterations:
        cells = (r.iteration, r.n_frames, _fmt(r.accurate_ratio, ".3f"), _fmt(r.candidate_ratio, ".3f"),
                 _fmt(r.failed_ratio, ".3f"), _fmt(r.trust_lo, ".4f"), r.labels_text(), r.n_train_frames,
                 _fmt(r.rmse_f, ".4f"),
                 _fmt(r.student_speed, ".2f"), _fmt(r.speed_ratio, ".1f"), _fmt(r.wall, ".0f"))
        mark = ' class="ok"' if r.meets_rule else ""
        out.append(f"<tr{mark}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(out)


def _levels(report: "DistillReport") -> str:
    if not report.trust_lo_adaptive:
        return f"{report.trust_lo:g} – {report.trust_hi:g} eV/Å"
    seen = [f"{r.trust_lo:.3f}" for r in report.iterations if r.trust_lo is not None]
    return (f"adaptive lower level ({' → '.join(seen) or 'none yet'} eV/Å over the iterations) – "
            f"{report.trust_hi:g} eV/Å")


def figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _note(report: "DistillReport") -> str:
    return "".join(f'<p class="warn"><strong>Note.</strong> {html.escape(why)}</p>' for why in notes(report))


def render_html(report: "DistillReport", run_dir: Path) -> Path:
    """Write ``RUN_DIR/report.html`` (plots regenerated beside it) and return its path."""
    run_dir = Path(run_dir)
    figures = []
    if report.iterations:
        for name, plot, caption in PLOTS:
            plot(report, run_dir / name)
            figures.append(figure_html(run_dir / name, caption))
    last = report.iterations[-1] if report.iterations else None
    d, f = report.delivering() or last, report.delivered_final
    status_class = "ok" if report.converged else "warn"
    if report.cached_steps:  # a resumed run: its wall time is this session's, steps came from earlier ones
        timing = (f"{report.wall_seconds:,.0f} s in the last session, which read {report.cached_steps} finished "
                  f"steps back and ran the rest ({report.step_seconds:,.0f} s)"
                  # reports written before compute_seconds existed hold 0: say nothing rather than 0 s
                  + (f"; {report.compute_seconds:,.0f} s of compute in all sessions" if report.compute_seconds else ""))
    else:
        overhead = (report.wall_seconds - report.step_seconds) / report.wall_seconds * 100 if report.wall_seconds else None
        timing = (f"{report.wall_seconds:,.0f} s, {report.step_seconds:,.0f} s of it in steps "
                  f"(orchestration overhead {_fmt(overhead, '.1f')} %)")
    facts = {
        "status": f'<span class="{status_class}">{html.escape(report.status)}</span> after '
                  f"{len(report.iterations)} iteration(s)",
        "teacher": html.escape(report.teacher),
        "final student": html.escape(report.final_student or "–"),
        "student force RMSE vs teacher": (
            f"{_fmt(d.rmse_f if d else None, '.4f')} eV/Å on {d.n_eval_frames if d else 0} unseen "
            + ("explored frames" if f is None else
               f"validation frames, after a final training of {f.numb_steps} steps on {f.n_train_frames} frames")),
        "student speed": f"{_fmt(d.speed_ratio if d else None, '.1f')}× the teacher "
                         f"({_fmt(report.teacher_speed, '.3f')} timesteps/s in {report.teacher_engine}"
                         + (f", {report.speed_atoms} atoms)" if report.speed_atoms else ")"),
        "teacher labels": f"{last.n_train_frames if last else 0} training frames",
        "trust levels": _levels(report),
        "wall time": timing,
    }
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lamflow · {html.escape(report.name)}</title>
<style>{STYLE}</style></head><body>
<h1>lamflow distill · {html.escape(report.name)}</h1>
<dl>{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts.items())}</dl>
<h2>Iterations</h2>
<table><thead><tr>{"".join(f"<th>{c}</th>" for c in COLUMNS)}</tr></thead>
<tbody>
{_rows(report)}
</tbody></table>
<p>Rows in green meet the convergence rule.</p>
{_note(report)}
<h2>Plots</h2>
{"".join(figures) or "<p>No iteration has finished yet.</p>"}
<p><small>Run directory: {html.escape(str(run_dir.resolve()))}</small></p>
</body></html>
"""
    return atomic_write_text(run_dir / "report.html", page)
