"""The version history as a terminal table (``lamflow versions RUN``, the end of a run) and as
a page of its own (``lamflow report RUN``): per standard dataset, the errors across versions."""

from __future__ import annotations

import html
from pathlib import Path

from rich.table import Table

from lamflow.steps.artifacts import atomic_write_text

from lamflow.flows.pipelines.version.history import History

from .html import STYLE, figure_html


def history_table(history: History) -> Table:
    """One row per version: where it came from, what it added, and per standard dataset its
    force RMSE and LAMBench-normalised errors (E/F), then its overall score (lower is better)."""
    benches = _benchmarks(history)
    table = Table(title=f"{history.name}: model versions (current: {history.current})")
    for col in ("version", "parent", "added", "branches (frames)", "steps", "status"):
        table.add_column(col)
    for b in benches:
        table.add_column(f"{_title(b, benches)}\nF eV/Å | E meV/atom\nnorm. E/F | NVE", justify="right")
    table.add_column("score", justify="right")
    table.add_column("µs/atom/step", justify="right")
    for v in history.versions:
        cells = []
        for b in benches:
            s = _score(v, b)
            nve = "" if s is None or s.instability is None else f" | {s.instability:.2f}"
            cells.append("-" if s is None else f"{s.rmse_f:.4f} | {1000 * s.rmse_e_per_atom_shifted:.2f}\n"
                                               f"{s.normalized_e:.3f}/{s.normalized_f:.3f}{nve}")
        mark = " *" if v.version == history.current else ""
        table.add_row(f"{v.version}{mark}", "-" if v.parent is None else str(v.parent), ", ".join(v.added),
                      ", ".join(f"{n} ({k})" for n, k in v.branches.items()), str(v.numb_steps),
                      v.status if not v.error else f"{v.status}: {v.error[:60]}", *cells,
                      "-" if v.score is None else f"{v.score:.3f}", _speed(v))
    return table


def refusals(history: History) -> list[str]:
    """One line per dataset that verification refused, with its problems (the same words in the
    run's summary, ``lamflow versions`` and ``lamflow status``)."""
    return [f"dataset {r.dataset} failed verification, no version made: " + "; ".join(r.problems)
            for r in history.rejected]


def _speed(version) -> str:
    return "-" if version.us_per_atom_step is None else f"{version.us_per_atom_step:.1f} ({version.efficiency_atoms} at.)"


def _benchmarks(history: History) -> list[tuple[str, str]]:
    """(dataset, head) of every score: one standard dataset may be scored through several heads."""
    return list(dict.fromkeys((s.dataset, s.head) for v in history.versions for s in v.scores))


def _title(key: tuple[str, str], keys: list[tuple[str, str]]) -> str:
    dataset, head = key
    return dataset if sum(k[0] == dataset for k in keys) == 1 else f"{dataset} ({head})"


def _score(version, key: tuple[str, str]):
    return next((s for s in version.scores if (s.dataset, s.head) == key), None)


def plot_scores(history: History, path: Path) -> Path:
    """Force and (shifted) energy RMSE per standard dataset across the trained versions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [v for v in history.versions if v.status == "trained"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    keys = _benchmarks(history)
    for b in keys:
        points = [(v.version, s) for v in trained if (s := _score(v, b)) is not None]
        xs = [x for x, _ in points]
        axes[0].plot(xs, [s.rmse_f for _, s in points], "o-", label=_title(b, keys))
        axes[1].plot(xs, [1000 * s.rmse_e_per_atom_shifted for _, s in points], "o-", label=_title(b, keys))
    for ax, ylabel in zip(axes, ("force RMSE (eV/Å)", "energy RMSE, shifted (meV/atom)")):
        ax.set_xlabel("version")
        ax.set_ylabel(ylabel)
        ax.set_xticks([v.version for v in trained])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_versions_html(history: History, run_dir: Path) -> Path:
    """Write ``RUN_DIR/versions.html`` (its plot beside it), self-contained like the distillation's page."""
    run_dir = Path(run_dir)
    benches = _benchmarks(history)
    head = ["version", "parent", "added", "branches (frames)", "steps", "status", "score", "µs/atom/step"]
    head += [f"{_title(b, benches)}: F eV/Å · E meV/atom · norm. F/E · NVE" for b in benches]
    rows = []
    for v in history.versions:
        cells = [f"{v.version}{' (current)' if v.version == history.current else ''}",
                 "–" if v.parent is None else str(v.parent), ", ".join(v.added),
                 ", ".join(f"{n} ({k})" for n, k in v.branches.items()), str(v.numb_steps),
                 v.status + (f": {v.error}" if v.error else ""), "–" if v.score is None else f"{v.score:.3f}",
                 _speed(v)]
        for b in benches:
            s = _score(v, b)
            cells.append("–" if s is None else
                         f"{s.rmse_f:.4f} · {1000 * s.rmse_e_per_atom_shifted:.2f} · {s.normalized_f:.3f}/"
                         f"{s.normalized_e:.3f} · {'–' if s.instability is None else format(s.instability, '.2f')}")
        mark = ' class="ok"' if v.version == history.current else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    figure = ""
    if any(v.scores for v in history.versions):
        figure = figure_html(plot_scores(history, run_dir / "versions.png"),
                             "Errors on the standard datasets across versions")
    refused = "".join(f"<li>{html.escape(r.dataset)}: {html.escape('; '.join(r.problems))}</li>"
                      for r in history.rejected)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lamflow · {html.escape(history.name)} versions</title>
<style>{STYLE}</style></head><body>
<h1>lamflow version · {html.escape(history.name)}</h1>
<p>Current version: {history.current}; run {html.escape(history.status)}. Scores as LAMBench computes them:
errors divided by those of a model that knows only the composition, capped at 1; the score is
0.5&nbsp;Ē&nbsp;+&nbsp;0.5&nbsp;F̄ (geometric means over the standard datasets; 0 perfect, 1 no better).</p>
<h2>Version history</h2>
<table><thead><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in head)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<h2>Datasets refused by verification</h2>
{f"<ul>{refused}</ul>" if refused else "<p>None.</p>"}
<h2>Standard datasets</h2>
{figure or "<p>No version has been scored yet.</p>"}
<p><small>Run directory: {html.escape(str(run_dir.resolve()))}</small></p>
</body></html>
"""
    return atomic_write_text(run_dir / "versions.html", page)
