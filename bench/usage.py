"""How a bench script answers bad input: one line naming the option and what was expected, exit 2, before any
work, as ``lamflow`` itself does. One helper, so that every script's line looks the same (``NAME: message``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn


def bad_input(message: str) -> NoReturn:
    """Print ``<script>: message`` on stderr and exit 2; the script's name comes from ``sys.argv[0]``."""
    print(f"{Path(sys.argv[0]).stem}: {message}", file=sys.stderr)
    sys.exit(2)
