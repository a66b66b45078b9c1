"""Helpers shared by the tools/bench_*.py scripts."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path


def counting_shim(bin_dir: Path, tool: str, log: Path) -> None:
    """Put a `tool` first on PATH (via bin_dir) that logs each call to `log`, then runs the real one
    (or exits 0 if there is none), so a benchmark can count how often it is called."""
    real = shutil.which(tool)
    script = bin_dir / tool
    script.write_text(f"#!/bin/sh\necho {tool} >> {log}\n" + (f'exec {real} "$@"\n' if real else "exit 0\n"))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
