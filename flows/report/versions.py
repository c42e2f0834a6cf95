"""The version history as a terminal table (``lamflow versions RUN``, the end of a run)."""

from __future__ import annotations

from rich.table import Table

from lamflow.flows.pipelines.version.history import History


def history_table(history: History) -> Table:
    """One row per version: where it came from, what it added, and per standard dataset its
    force RMSE and LAMBench-normalised errors (E/F), then its overall score (lower is better)."""
    benches = list(dict.fromkeys(s.dataset for v in history.versions for s in v.scores))
    table = Table(title=f"{history.name}: model versions (current: {history.current})")
    for col in ("version", "parent", "added", "branches (frames)", "steps", "status"):
        table.add_column(col)
    for b in benches:
        table.add_column(f"{b}\nF eV/Å | E meV/atom\nnorm. E/F | NVE", justify="right")
    table.add_column("score", justify="right")
    for v in history.versions:
        cells = []
        for b in benches:
            s = next((s for s in v.scores if s.dataset == b), None)
            nve = "" if s is None or s.instability is None else f" | {s.instability:.2f}"
            cells.append("-" if s is None else f"{s.rmse_f:.4f} | {1000 * s.rmse_e_per_atom_shifted:.2f}\n"
                                               f"{s.normalized_e:.3f}/{s.normalized_f:.3f}{nve}")
        mark = " *" if v.version == history.current else ""
        table.add_row(f"{v.version}{mark}", "-" if v.parent is None else str(v.parent), ", ".join(v.added),
                      ", ".join(f"{n} ({k})" for n, k in v.branches.items()), str(v.numb_steps),
                      v.status if not v.error else f"{v.status}: {v.error[:60]}", *cells,
                      "-" if v.score is None else f"{v.score:.3f}")
    return table
