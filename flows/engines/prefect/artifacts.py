"""A run's story on its Prefect flow run: the iteration (or version) table and the summary as
Prefect artifacts, and where to find them.

The Prefect UI shows a flow run's task runs and logs, not what a chemist looks for first: how
the student's error went down iteration by iteration, and where it ended. Prefect's own answer
is artifacts: a table artifact, updated after every iteration (same key, a new version each
time, so the Artifacts page shows the latest while the run goes on), and a markdown summary
when the run ends, whether it finished or failed. Both are built from what the terminal shows
(the pipeline's rich table and its summary), so the UI and the terminal never disagree.

A run on a Prefect server (``PREFECT_API_URL``, deployments) also writes ``prefect-run.json``
into the run directory: the flow run's id and UI address, which ``lamflow report`` prints. An
embedded run's temporary server dies with it, so it records no address.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

#: written into the run directory by a run on a Prefect server; read by ``lamflow report``
LINK_FILE = "prefect-run.json"


def artifact_key(pipeline: str, name: str, what: str) -> str:
    """Prefect wants keys of lowercase letters, digits and dashes; one per pipeline, run name
    and kind, so that a config's later runs add versions to the same artifact."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{pipeline}-{name}-{what}".lower()).strip("-")


def table_rows(table: Any) -> list[dict[str, str]]:
    """A rich ``Table`` as the rows of a Prefect table artifact (headers as keys, cells as text)."""
    columns = [(str(c.header).replace("\n", " "), [str(cell) for cell in c.cells]) for c in table.columns]
    rows = max((len(cells) for _, cells in columns), default=0)
    return [{header: cells[i] if i < len(cells) else "" for header, cells in columns} for i in range(rows)]


def summary_markdown(pipeline: Any, cfg: Any, report: Any, failed: str | None = None) -> str:
    """The terminal summary of ``report`` as markdown (and the error, when the run failed)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    pipeline.summarize(console, cfg, report)
    text = console.export_text().strip()
    head = f"# lamflow {pipeline.name} · {cfg.name}\n\n"
    if failed:
        head += f"**failed:** {failed}\n\n"
    return head + f"```\n{text}\n```\n"


def publish_table(pipeline: Any, cfg: Any, report: Any) -> None:
    """The pipeline's table of its ``report`` as a table artifact of the current flow run."""
    _publish(pipeline.table(report), pipeline.name, cfg.name)


def publish_iteration(pipeline: Any, cfg: Any, report: Any) -> None:
    """After an iteration: the distillation's table (``report`` is the loop's own report, also
    inside a ``lam`` run), under the same key as the pipeline's table."""
    from lamflow.flows.report.distill import table

    _publish(table(report), pipeline.name, cfg.name)


def _publish(table: Any, pipeline: str, name: str) -> None:
    from prefect.artifacts import create_table_artifact

    if table is not None:
        create_table_artifact(table_rows(table), key=artifact_key(pipeline, name, "table"),
                              description=str(table.title or ""))


def publish_outcome(pipeline: Any, cfg: Any, report: Any, run_dir: Path, on_server: bool,
                    failed: str | None = None) -> None:
    """At the end of a flow run: the table, the summary, and (on a server) the link file."""
    from prefect.artifacts import create_markdown_artifact

    publish_table(pipeline, cfg, report)
    create_markdown_artifact(summary_markdown(pipeline, cfg, report, failed),
                             key=artifact_key(pipeline.name, cfg.name, "summary"),
                             description=f"lamflow {pipeline.name} · {cfg.name}")
    if on_server:
        _write_link(run_dir)


def _write_link(run_dir: Path) -> None:
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    link = {"flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name,
            "url": f"{ui}/runs/flow-run/{flow_run.id}" if ui else None}
    (Path(run_dir) / LINK_FILE).write_text(json.dumps(link, indent=2) + "\n")


def read_link(run_dir: Path) -> str | None:
    """The line ``lamflow report`` prints for a run made on a Prefect server, else None."""
    path = Path(run_dir) / LINK_FILE
    if not path.is_file():
        return None
    link = json.loads(path.read_text())
    where = link.get("url") or f"flow run {link.get('flow_run_id')}"
    return f"prefect: {where} (its Artifacts tab: the table and the summary)"
