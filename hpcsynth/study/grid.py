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

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpcsynth.config import Config, config_from_dict, config_to_dict
from hpcsynth.errors import ConfigError, HpcsynthError, RunError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.rundir import RunDir

# Sections a generator may set: what it generates with and how its workers run. prompts and plan are
# the grid's own axis and its shared plan; reduce settings are the mix-in axis.
GENERATOR_SECTIONS = ("model", "sampling", "vllm", "endpoint", "worker", "slurm")
# A generator's or mix-in's name becomes a directory and part of a dataset name: no separators, no dots first.
# Always fullmatch: with match, "$" also matches before a final newline, and "b\n" would name a directory.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_MIXIN = "default"
GRID_FILE = "grid.json"


@dataclass(frozen=True)
class Generator:
    name: str
    config: Config  # the parent's config with this generator's sections; grid emptied


@dataclass(frozen=True)
class Mixin:
    name: str
    reduce: dict[str, Any]  # reduce: keys overridden for this mix-in


@dataclass(frozen=True)
class Grid:
    prompts: tuple[str, ...]
    generators: tuple[Generator, ...]
    mixins: tuple[Mixin, ...]

    def datasets(self) -> list[tuple[str, str, str]]:
        """(generator, prompt, mix-in) for every dataset reduce writes, in table order."""
        return [(g.name, p, m.name) for g in self.generators for p in self.prompts for m in self.mixins]


def dataset_name(generator: str, prompt: str, mixin: str) -> str:
    return f"{generator}-{prompt}-{mixin}"


def is_grid(config: Config) -> bool:
    return bool(config.grid.generators or config.grid.mixins)


def expand_grid(config: Config, source: str = "config", lines: dict[str, int] | None = None) -> Grid:
    """The grid's generators and mix-ins, each checked as a whole config; ConfigError names the entry."""
    lines = lines or {}
    if config.grid.mixins and not config.grid.generators:
        raise ConfigError(f"{_at(source, lines, 'grid.mixins')}: 'grid.mixins' needs 'grid.generators' (at least "
                          f"one {{name: NAME, model: {{path: ...}}}}); without a grid, set reduce: keys directly")
    for prompt in config.prompts:
        if not NAME.fullmatch(prompt):
            raise ConfigError(f"{_at(source, lines, 'prompts')}: prompt {prompt!r} cannot name a grid's dataset "
                              f"directory (letters, digits, '_', '.' or '-'); rename its file")
    base = config_to_dict(config)
    base["grid"] = {}
    generators = tuple(_generator(base, entry, i, source, lines) for i, entry in enumerate(config.grid.generators))
    entries = config.grid.mixins or ({"name": DEFAULT_MIXIN},)
    mixins = tuple(_mixin(base, entry, i, source, lines) for i, entry in enumerate(entries))
    for kind, names in (("generators", [g.name for g in generators]), ("mixins", [m.name for m in mixins])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{_at(source, lines, f'grid.{kind}')}: 'grid.{kind}' names {twice[0]!r} twice; "
                              f"give each entry its own name")
    grid = Grid(tuple(config.prompts), generators, mixins)
    seen: dict[str, tuple[str, str, str]] = {}
    for cell in grid.datasets():
        other = seen.setdefault(dataset_name(*cell), cell)
        if other != cell:
            raise ConfigError(f"{_at(source, lines, 'grid')}: datasets {other} and {cell} would both be named "
                              f"{dataset_name(*cell)!r}; rename a generator or mix-in (names are joined with '-')")
    return grid


def _generator(base: dict, entry: dict, index: int, source: str, lines: dict[str, int]) -> Generator:
    where = f"grid.generators[{index}]"
    name = _name(entry, where, source, lines)
    unknown = sorted(set(entry) - {"name", *GENERATOR_SECTIONS})
    if unknown:
        raise ConfigError(f"{_at(source, lines, f'{where}.{unknown[0]}')}: unknown key '{where}.{unknown[0]}' in "
                          f"generator {name!r}; a generator sets name and any of {', '.join(GENERATOR_SECTIONS)}")
    data = {**base}
    for section in GENERATOR_SECTIONS:
        if section in entry:
            if not isinstance(entry[section], dict):
                raise ConfigError(f"{_at(source, lines, f'{where}.{section}')}: '{where}.{section}' must be a "
                                  f"mapping of {section}: keys, got {type(entry[section]).__name__}")
            data[section] = {**base[section], **entry[section]}
    return Generator(name, _checked(data, where, name, source, lines))


def _mixin(base: dict, entry: dict, index: int, source: str, lines: dict[str, int]) -> Mixin:
    where = f"grid.mixins[{index}]"
    name = _name(entry, where, source, lines)
    overrides = {k: v for k, v in entry.items() if k != "name"}
    unknown = sorted(set(overrides) - set(base["reduce"]))
    if unknown:
        raise ConfigError(f"{_at(source, lines, f'{where}.{unknown[0]}')}: unknown key '{where}.{unknown[0]}' in "
                          f"mix-in {name!r}; a mix-in sets name and reduce: keys ({', '.join(sorted(base['reduce']))})")
    data = {**base, "reduce": {**base["reduce"], **overrides}}
    _checked(data, where, name, source, lines, section_prefix="reduce.")
    return Mixin(name, overrides)


def _name(entry: dict, where: str, source: str, lines: dict[str, int]) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{_at(source, lines, f'{where}.name')}: '{where}.name' must be a name of letters, "
                          f"digits, '_', '.' or '-' (it names a directory), got {name!r}")
    return name


def _checked(data: dict, where: str, name: str, source: str, lines: dict[str, int],
             section_prefix: str = "") -> Config:
    """data as a Config; errors keep the line of the entry's key, and say which entry."""
    # Keys inside the entry keep their lines: 'grid.generators[0].model.path' is 'model.path' here.
    inner = {k[len(where) + 1:]: v for k, v in lines.items() if k.startswith(f"{where}.")}
    if section_prefix:  # a mix-in's flat keys are reduce: keys
        inner = {f"{section_prefix}{k}": v for k, v in inner.items()}
    try:
        return config_from_dict(data, source=source, lines=inner)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {where}, {name!r})") from None


def _at(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{source} line {line}" if line else source


# --- RUN/grid.json: what plan resolved, for launch, status and reduce

def generator_run(run: RunDir, name: str) -> RunDir:
    return RunDir(run.root / "generators" / name)


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
