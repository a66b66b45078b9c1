"""Slurm at the edge: hpcsynth/execute/slurm.py is the one module that imports submitit (launch, the plan's
arrays and the reduce's CPU array + merge all go through it), so the worker and the reducer never know where
they run; and it imports none of the stages it runs."""

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
    # ...and builds its executor in one place (make_executor): every job gets the same directives and
    # the same quoted `python` (three copies had drifted: only launch's quoted it).
    source = (PACKAGE / "execute" / "slurm.py").read_text(encoding="utf-8")
    assert source.count("SlurmExecutor(") == 1 and "def make_executor(" in source


def imports_of(path: Path) -> list[str]:
    """Every module `path` imports, function-level imports included (relative ones resolved)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [module] + [f"{module}.{a.name}" for a in node.names]
    return found


STAGES = ("plan", "generate", "reduce", "status", "study", "cli", "execute.local", "execute.launch")


def test_execute_slurm_imports_no_stage() -> None:
    """The seam knows the cluster, never the job: the stages hand in the function an array task runs."""
    climbing = [name for name in imports_of(PACKAGE / "execute" / "slurm.py")
                if any(name == f"hpcsynth.{s}" or name.startswith(f"hpcsynth.{s}.") for s in STAGES)]
    assert climbing == []


def test_the_plan_does_not_import_execute() -> None:
    """The plan is handed its Slurm map (execute/plan_array.py) by the CLI or the grid; it never reaches up."""
    climbing = [f"{path.relative_to(PACKAGE.parent).as_posix()}: {name}"
                for path in sorted((PACKAGE / "plan").rglob("*.py")) for name in imports_of(path)
                if name == "hpcsynth.execute" or name.startswith("hpcsynth.execute.")]
    assert climbing == []
