"""The `hpcsynth` command (app.py: the parser and the one dispatch; the handlers beside it)."""

from hpcsynth.cli.app import main

__all__ = ["main"]
