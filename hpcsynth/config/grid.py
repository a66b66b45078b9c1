"""The grid's expansion: prompts x generators x mix-ins declared in one config, as checked sub-configs.

Part of loading a config (config/load.py checks every generator's and mix-in's config when the file is
read); what a grid run writes into its run directory is study/grid.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hpcsynth.config.build import build_config, config_to_dict
from hpcsynth.config.sections import Config
from hpcsynth.errors import ConfigError

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
        # A generator's or mix-in's config has its grid emptied: nothing further to expand.
        return build_config(data, source=source, lines=inner)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {where}, {name!r})") from None


def _at(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{source} line {line}" if line else source
