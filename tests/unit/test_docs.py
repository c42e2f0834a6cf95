"""The commands in README.md and docs/*.md are copy-paste runnable as written.

Every ``lamflow`` command in a ``bash`` block of those pages is parsed by lamflow's own argument
parser (a renamed flag or subcommand fails here, not on a reader's first day), and the cheap ones
(``templates``, ``config``, ``export``, ``prefect job``) run for real, from a folder that has
the checkout's ``examples/`` as a reader's checkout does. Commands of the walkthrough
docs/own-data.md run in full in tests/e2e/test_own_data.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
#: subcommands that take seconds and need no server, cluster or long run
CHEAP = (("templates",), ("config",), ("export",), ("prefect", "job"))


def lamflow_commands(page: Path) -> list[list[str]]:
    """The argument lists of every ``lamflow`` command line in the page's bash blocks."""
    found = []
    for block in FENCE.finditer(page.read_text()):
        if block["lang"] not in ("bash", "sh"):
            continue
        lines, end = [], None
        for line in block["body"].replace("\\\n", " ").splitlines():
            if end is not None:  # inside a here-document: data, not commands
                end = None if line.strip() == end else end
                continue
            if m := HEREDOC.search(line):
                end = m.group(1)
            lines.append(line)
        for line in lines:
            for command in re.split(r"&&|;", line.split(" #")[0]):
                try:
                    argv = shlex.split(command, comments=True)
                except ValueError:
                    continue
                while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value before the command
                    argv.pop(0)
                if argv and argv[0] in ("lamflow", ".venv/bin/lamflow"):
                    found.append(argv[1:])
    return found


COMMANDS = [(page.relative_to(REPO).as_posix(), argv) for page in PAGES for argv in lamflow_commands(page)]


def test_the_pages_have_commands():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "docs/own-data.md", "docs/hpc.md", "docs/cluster.md"} <= pages, pages
    assert sum(argv[:1] == ["templates"] for _, argv in COMMANDS) >= 1


@pytest.mark.parametrize("page, argv", COMMANDS, ids=[f"{p}: lamflow {' '.join(a)}"[:90] for p, a in COMMANDS])
def test_every_command_parses(page, argv, capsys):
    from lamflow.flows.cli.main import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `lamflow {' '.join(argv)}` is not a valid command line: {capsys.readouterr().err}"
                    f" (exit {exc.code})")


def test_the_cheap_commands_run(tmp_path):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    (tmp_path / "prefect.yaml").symlink_to(REPO / "prefect.yaml")
    (tmp_path / "templates").symlink_to(REPO / "templates")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = 0
    for page, argv in COMMANDS:
        if not any(tuple(argv[:len(c)]) == c for c in CHEAP):
            continue
        inputs = [a for before, a in zip(argv, argv[1:]) if a.endswith(".yaml") and before not in ("-o", "--output")]
        if not all((tmp_path / a).exists() for a in inputs):
            continue  # a file on the reader's cluster (/runs/water/config.yaml) or of a walkthrough
        out = subprocess.run([sys.executable, "-m", "lamflow.flows.cli", *argv], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{page}: lamflow {' '.join(argv)} → exit {out.returncode}: {out.stderr[-1500:]}"
        assert out.stdout.strip() or list(tmp_path.glob("*.yaml")), f"{page}: lamflow {' '.join(argv)} printed nothing"
        ran += 1
    assert ran >= 4
