"""The house's layers, read from every import of hpcsynth/ (top-level and inside functions) with ast.

A room is a top-level module (hpcsynth/files.py) or a folder (hpcsynth/plan/). Rooms stand on floors;
an import may point to a lower floor or along its own floor, never up, and no imports go round in a
circle (between rooms, or between modules anywhere). A top-level module is ground floor unless named
below; a folder is a stage and must be placed here, so a new one cannot slip in unplaced.
Run as a script, it prints the house's rooms, floors, arrows and circles.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpcsynth"

# Bottom to top. prompts.py and rundir.py are the two contracts every stage reads (the prompt files and
# the run directory); they read config/, so they stand just above it.
FLOORS: list[tuple[str, ...]] = [
    ("storage",),            # s3:// URLs: listing, reading and uploading objects (corpus, reduce and the CLI use it)
    ("corpus",),             # readers and filters of corpus files: plan, the mix and config checks use them
    ("config",),             # sections, checks, load, the grid's expansion
    ("prompts", "rundir"),
    ("plan",),
    ("generate",),           # the worker, its engines, the workers of one node, prompt rendering
    ("execute",),            # where workers run: local processes or Slurm (execute/slurm.py knows no stage)
    ("status",),             # collect, view, timeline, the account
    ("reduce",),
    ("study", "repair", "tune"),  # estimates, charts, the grid; repair: refused records again; tune: engine trials
    ("cli", "__main__"),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The hpcsynth modules a file imports anywhere in it (`from a import b` counts a.b when b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; write the module's full name"
            names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in known)
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of() -> dict[str, int]:
    floors = {name: number + 1 for number, names in enumerate(FLOORS) for name in names}
    for path in PACKAGE.iterdir():
        if path.suffix == ".py":
            floors.setdefault(path.stem, 0)  # ground floor
    floors.setdefault("__init__", 0)
    return floors


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def house() -> dict:
    known = modules()
    module_edges = {name: imports(path, known) - {name} for name, path in known.items()}
    room_edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, targets in module_edges.items():
        for target in targets:
            if room(source) != room(target):
                room_edges[room(source)].add(room(target))
                where[room(source), room(target)].append(f"{source} -> {target}")
    floors = floor_of()
    rooms = {room(name) for name in known}
    climbing = [line for (a, b), lines in sorted(where.items()) if floors.get(b, 99) > floors.get(a, 99)
                for line in lines]
    return {"rooms": rooms, "floors": floors, "arrows": sum(len(v) for v in room_edges.values()),
            "room_circles": circles(room_edges), "module_circles": circles(module_edges), "climbing": climbing,
            "unplaced": sorted(r for r in rooms if r not in floors)}


def test_every_folder_is_placed_on_a_floor() -> None:
    assert house()["unplaced"] == [], "a new folder is a stage: add it to FLOORS, above what it imports"


def test_no_import_climbs() -> None:
    assert house()["climbing"] == [], "imports that point up a floor: move the code down, or hand it in"


def test_no_circles_between_rooms_or_modules() -> None:
    found = house()
    assert found["room_circles"] == [] and found["module_circles"] == [], (found["room_circles"],
                                                                           found["module_circles"])


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from hpcsynth.plan import planner\n    import hpcsynth.files\n")
    assert imports(source, modules()) == {"hpcsynth.plan", "hpcsynth.plan.planner", "hpcsynth.files"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    found = house()
    used = sorted({found["floors"][r] for r in found["rooms"]})
    print(f"rooms {len(found['rooms'])}, floors {len(used)}, arrows {found['arrows']}, "
          f"circles {len(found['room_circles'])} between rooms and {len(found['module_circles'])} between modules, "
          f"climbing imports {len(found['climbing'])}")
    for line in found["climbing"]:
        print("  climbs:", line)
    for group in found["room_circles"] + found["module_circles"]:
        print("  circle:", " -> ".join(group))
