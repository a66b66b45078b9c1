"""A Config from plain data (a parsed YAML document): every key and type checked, then every value.

The grid's entries are checked as whole configs by config/grid.py, which builds them here; load.py adds
that check on top (config_from_dict), so neither imports the other's caller.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hpcsynth.config.checks import _check_values, _where
from hpcsynth.config.sections import Config
from hpcsynth.errors import ConfigError


def build_config(data: Any, source: str = "config", lines: dict[str, int] | None = None) -> Config:
    """A Config from plain data, every key, type and value checked; a grid's entries are not expanded."""
    config = _build(Config, data, "", source, lines or {})
    _check_values(config, source, lines or {})
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    # A routed prompt is written back as the entry it was read from; without routing `prompts` stays a list
    # of names, so a run planned before routing existed keeps its resolved config and fingerprint.
    when = data.pop("prompt_when")
    data["prompts"] = [{"name": name, "when": when[name]} if name in when else name for name in config.prompts]
    data["grid"] = {key: [dict(entry) for entry in value] for key, value in data["grid"].items()}
    return data



def _build(cls: type, data: Any, prefix: str, source: str, lines: dict[str, int]) -> Any:
    section = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, lines, prefix)}: {section} must be a mapping of keys, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    # A field that is "part_of" another key (Config.prompt_when, read from `prompts`) is no key of its own.
    fields = {f.name for f in dataclasses.fields(cls) if "part_of" not in f.metadata}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"{_where(source, lines, dotted)}: unknown key '{dotted}'; valid keys in "
                              f"{section}: {', '.join(sorted(fields))}")
        hint = hints[key]
        if cls is Config and key == "prompts":
            values["prompts"], values["prompt_when"] = _prompt_entries(value, source, lines)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, dotted, source, lines)
        else:
            values[key] = _coerce(hint, value, dotted, source, lines)
    return cls(**values)


PROMPT_ENTRY_KEYS = ("name", "when")


def _prompt_entries(value: Any, source: str, lines: dict[str, int]) -> tuple[tuple[str, ...], dict[str, str]]:
    """`prompts`: names, or {name, when} entries routing documents to a prompt -> (names, {name: when}).
    The condition's language is checked with the other values (config/checks.py)."""
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{_where(source, lines, 'prompts')}: 'prompts' must be a list of strings (prompt names) or "
                          f"of {{name: NAME, when: CONDITION}} entries, got {value!r} ({type(value).__name__})")
    names: list[str] = []
    when: dict[str, str] = {}
    for i, item in enumerate(items):
        key = f"prompts[{i}]"
        if isinstance(item, str):
            names.append(item)
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"{_where(source, lines, key)}: '{key}' must be a prompt name or {{name: NAME, when: "
                              f"CONDITION}}, got {item!r} ({type(item).__name__})")
        unknown = sorted(str(k) for k in item if k not in PROMPT_ENTRY_KEYS)
        if unknown:
            raise ConfigError(f"{_where(source, lines, f'{key}.{unknown[0]}')}: unknown key '{key}.{unknown[0]}'; "
                              f"valid keys in {key}: {', '.join(PROMPT_ENTRY_KEYS)}")
        for part in PROMPT_ENTRY_KEYS:
            if not isinstance(item.get(part), str) or not item[part].strip():
                got = "nothing" if part not in item else f"{item[part]!r} ({type(item[part]).__name__})"
                what = "the prompt's name" if part == "name" else "a condition"
                raise ConfigError(f"{_where(source, lines, f'{key}.{part}')}: '{key}.{part}' must be {what}, e.g. "
                                  f"{{name: faq, when: \"int_score >= 3\"}}, got {got}; a plain name runs the "
                                  f"prompt on every document")
        names.append(item["name"])
        when[item["name"]] = item["when"]
    return tuple(names), when


def _coerce(hint: Any, value: Any, key: str, source: str, lines: dict[str, int]) -> Any:
    where = _where(source, lines, key)
    got = f"got {value!r} ({type(value).__name__})"
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be true or false, {got}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be an integer, {got}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: '{key}' must be a number, {got}")
    if hint is str or typing.get_origin(hint) is typing.Literal:  # which strings a Literal takes: checks.py
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: '{key}' must be a string, {got}")
    if typing.get_origin(hint) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(f"{where}: '{key}' must be a mapping of names to values, {got}")
    if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        # A list of sections (reduce.mix.sources): each item a mapping checked like any section.
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list of mappings, {got}")
        return tuple(_build(typing.get_args(hint)[0], item, f"{key}[{i}]", source, lines)
                     for i, item in enumerate(value))
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is not str:
        # grid.generators, grid.mixins: mappings whose keys expand_grid checks against the sections.
        if isinstance(value, (list, tuple)) and all(
                isinstance(v, dict) and all(isinstance(k, str) for k in v) for v in value):
            return tuple(dict(v) for v in value)
        raise ConfigError(f"{where}: '{key}' must be a list of mappings, one per entry, {got}")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: '{key}' must be a list of strings, {got}")
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module, not user input


