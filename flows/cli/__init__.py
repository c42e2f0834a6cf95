"""The ``lamflow`` command: one subcommand per pipeline and per operation, over the registries."""

from .main import main

__all__ = ["main"]
