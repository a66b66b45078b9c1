"""The experiment grid: prompts x generators x mix-ins declared in one config, as sub-run configs.

A grid run is a parent run (RUN: the plan, its shards, manifest and config) with one sub-run per
generator under RUN/generators/NAME/: an ordinary run directory whose config is the parent's with that
generator's sections, and whose shards are the parent's own files (hard links, see grid_plan.py). A
(generator, prompt) cell is one prompt of its generator's run, so a generator's cells share one request
stream and one engine start per worker. Mix-ins are reduce-section overrides applied per cell when
reducing. RUN/grid.json (written last by plan) lists the generators, prompts, mix-ins and datasets;
launch, status and reduce read it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hpcsynth.config import Config, config_from_dict, config_to_dict
from hpcsynth.config.grid import (DEFAULT_MIXIN, GENERATOR_SECTIONS, GRID_FILE, NAME, Generator, Grid,  # noqa: F401
                                  Mixin, dataset_name, expand_grid, is_grid)
from hpcsynth.errors import ConfigError, HpcsynthError, RunError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.rundir import RunDir

# --- RUN/grid.json: what plan resolved, for launch, status and reduce

def generator_run(run: RunDir, name: str) -> RunDir:
    return RunDir(run.generators_dir / name)


def grid_path(run: RunDir) -> Path:
    return run.root / GRID_FILE


def write_grid_file(run: RunDir, grid: Grid, fingerprints: dict[str, str]) -> None:
    atomic_write_json(grid_path(run), {
        "prompts": list(grid.prompts),
        "generators": [{"name": g.name, "run": f"generators/{g.name}", "fingerprint": fingerprints[g.name],
                        "model": g.config.model.path, "engine": g.config.model.engine} for g in grid.generators],
        "mixins": [{"name": m.name, "reduce": m.reduce} for m in grid.mixins],
        "datasets": [{"name": dataset_name(*cell), "generator": cell[0], "prompt": cell[1], "mixin": cell[2]}
                     for cell in grid.datasets()],
    })


def read_grid_file(run: RunDir) -> dict[str, Any] | None:
    """The run's grid.json, or None for a plain run; a damaged one is refused with the fix."""
    path = grid_path(run)
    if not path.exists():
        _refuse_unfinished_grid(run)
        return None
    try:
        data = read_json(path)
        for key in ("prompts", "generators", "mixins", "datasets"):
            if not isinstance(data[key], list):
                raise ValueError(f"{key} is not a list")
        names = [str(e["name"]) for e in data["generators"] + data["mixins"]] + [str(p) for p in data["prompts"]]
        for name in names:
            if not NAME.fullmatch(name):  # names become paths: nothing here may point outside RUN
                raise ValueError(f"bad name {name!r}")
        for entry in data["mixins"]:
            if not isinstance(entry.get("reduce", {}), dict):
                raise ValueError(f"mix-in {entry['name']!r} has no reduce: mapping")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunError(f"{path} is damaged ({exc}); plan the grid again: `hpcsynth plan CONFIG --run "
                       f"{run.root}` (finished work is kept)") from None
    # Datasets from the checked names, not as listed: the file is trusted no further than its names.
    data["datasets"] = [{"name": dataset_name(g["name"], p, m["name"]), "generator": g["name"], "prompt": p,
                         "mixin": m["name"]} for g in data["generators"] for p in data["prompts"] for m in data["mixins"]]
    return data


def _refuse_unfinished_grid(run: RunDir) -> None:
    """A grid's parent without grid.json (its plan stopped before the generators' runs were in place)
    must not be launched as a plain run: its workers would generate with the top-level model alone."""
    if not run.config_path.is_file():
        return
    try:
        config = run.load_config_file()
    except (HpcsynthError, OSError):
        return  # the plain path reports a damaged config in its own words
    if is_grid(config):
        raise RunError(f"{run.root} declares a grid but its plan did not finish ({GRID_FILE} is missing); plan it "
                       f"again: `hpcsynth plan CONFIG --run {run.root}` (finished work is kept)")


def require_generator_run(run: RunDir, name: str) -> RunDir:
    """The generator's run, or RunError with the grid's fix: its own run's advice ("plan RUN/generators/b")
    would make a plain run there, cut off from the grid."""
    sub = generator_run(run, name)
    if not sub.manifest_path.is_file():
        raise RunError(f"generator {name!r} has no planned run at {sub.root} (deleted or never planned); plan the "
                       f"grid again: `hpcsynth plan CONFIG --run {run.root}` (other generators' work is kept)")
    return sub


def check_mixins(run: RunDir, data: dict[str, Any], sub: RunDir) -> None:
    """Each mix-in's reduce: keys as plan checked them: grid.json is a file anyone can edit, and a bad key
    found deep in a reduce would not say which file holds it."""
    base = config_to_dict(sub.config())
    for entry in data["mixins"]:
        try:
            config_from_dict({**base, "reduce": {**base["reduce"], **(entry.get("reduce") or {})}}, source="grid.json")
        except ConfigError as exc:
            raise RunError(f"{grid_path(run)}: mix-in {entry['name']!r}: {exc}; plan the grid again: `hpcsynth plan "
                           f"CONFIG --run {run.root}` (finished work is kept)") from None


def grid_generator_runs(run: RunDir, data: dict[str, Any]) -> list[tuple[str, RunDir]]:
    return [(g["name"], generator_run(run, g["name"])) for g in data["generators"]]


def without_grid(config: Config) -> Config:
    """The parent's config as a plain run sees it (the grid is the parent's declaration only)."""
    return replace(config, grid=replace(config.grid, generators=(), mixins=()))
