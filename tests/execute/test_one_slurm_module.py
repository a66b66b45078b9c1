"""Slurm at the edge: hpcsynth/execute/slurm.py is the one module that imports submitit (launch and the
reduce's CPU array + merge both go through it), so the worker and the reducer never know where they run."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "hpcsynth"


def importers_of(module: str) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(name == module or name.startswith(module + ".") for name in names):
                found.append(path.relative_to(PACKAGE.parent).as_posix())
                break
    return found


def test_only_execute_slurm_imports_submitit() -> None:
    assert importers_of("submitit") == ["hpcsynth/execute/slurm.py"]
    # The reduce's Slurm path goes through the same module: submit_reduce lives there.
    source = (PACKAGE / "execute" / "slurm.py").read_text(encoding="utf-8")
    assert "def submit_reduce(" in source and "def submit_arrays(" in source
