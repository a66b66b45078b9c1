"""Reading a config: bounded, alias-free YAML -> typed sections, with the line of every key for errors;
the fingerprint of what decides the output, and the difference between two configs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from hpcsynth.config.build import build_config, config_to_dict  # noqa: F401  (config_to_dict: the package's API)
from hpcsynth.config.grid import expand_grid, is_grid
from hpcsynth.config.sections import Config
from hpcsynth.errors import ConfigError

FINGERPRINTED = ("prompts", "plan", "model", "sampling")
# Real configs are a few KB; the cap keeps a wrong or hostile file from being parsed at all.
MAX_YAML_BYTES = 1 << 20
# A run's resolved config lists every input file: 64 MiB holds ~500,000 paths.
MAX_RUN_YAML_BYTES = 64 << 20
# Configs nest three levels; 32 leaves room for any list of lists a future key may take.
MAX_YAML_DEPTH = 32
# libyaml's safe loader when PyYAML has it: ~6x faster on a run config listing thousands of inputs.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | Path) -> Config:
    """Read a YAML config file into a checked Config; raise ConfigError naming file, line and key."""
    path = _locate_config(path)
    data, lines = read_yaml(path)
    return config_from_dict(data or {}, source=str(path), lines=lines)


def read_yaml(path: Path, max_bytes: int = MAX_YAML_BYTES) -> tuple[Any, dict[str, int]]:
    """A config, profile or run's config.yaml -> (data, {dotted key: line}); no aliases, bounded size."""
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is not a config (the limit is "
                          f"{max_bytes:,}); check that the right file was passed")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); pass a YAML config file") from None
    try:
        refuse_aliases(text, path)
        return yaml.load(text, Loader=LOADER), _key_lines(yaml.compose(text, Loader=LOADER))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except DuplicateKey as twice:
        raise ConfigError(f"{path} lines {twice.first} and {twice.again}: '{twice.key}' is set twice, and YAML "
                          f"would silently keep only the second; merge the two into one") from None


def refuse_aliases(text: str, path: Path, first_line: int = 1) -> None:
    """Refuse YAML aliases and deep nesting in text read from path (whose first line is first_line)."""
    # An alias (*name) makes the loader repeat what its anchor holds; nested, a few hundred bytes
    # expand into gigabytes before any key is checked. The event stream itself never expands them.
    # Depth is bounded too: PyYAML's scanner slows quadratically with nesting (4,000 levels: 11 s).
    depth = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{path} line {_line(event) + first_line}: YAML aliases "
                              f"(*{event.anchor}) are not accepted; write the value out in full")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{path} line {_line(event) + first_line}: nested too deeply "
                                  f"(more than {MAX_YAML_DEPTH} levels)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _locate_config(path: str | Path) -> Path:
    """A config file by path or by the name of a shipped one; a miss names what exists."""
    from hpcsynth.resources import find_config, shipped_configs

    found = find_config(path)
    if found is None:
        names = ", ".join(shipped_configs()) or "none found in this installation"
        raise ConfigError(f"config file not found: {path}; pass a YAML file, or a shipped config by name "
                          f"({names}); start your own with `hpcsynth config finephrase > mine.yaml`")
    return found


def config_from_dict(data: Any, source: str = "config", lines: dict[str, int] | None = None) -> Config:
    """Build a Config from plain data (a parsed YAML document), checking every key and type."""
    config = build_config(data, source, lines)
    if is_grid(config):
        expand_grid(config, source, lines or {})  # each generator's and mix-in's config, checked now
    return config


def fingerprint_payload(config: Config, prompt_hashes: dict[str, str]) -> dict[str, Any]:
    """What decides the outputs: the fingerprinted sections and the prompt templates' hashes."""
    data = config_to_dict(config)
    payload = {key: data[key] for key in FINGERPRINTED}
    payload["prompt_templates"] = dict(sorted(prompt_hashes.items()))
    # Pass-through options count only when set, so runs planned without them keep their fingerprint.
    if not config.sampling.extra:
        del payload["sampling"]["extra"]
    # A routed prompt counts as {name, when} (config_to_dict): its condition decides which records exist; an
    # entry without one stays a name, so runs without routing keep the fingerprint they had before it.
    if not config.plan.skip_bad_files:  # a key added later: runs planned before it keep their fingerprint
        del payload["plan"]["skip_bad_files"]
    if config.vllm.engine_args:
        payload["vllm_engine_args"] = data["vllm"]["engine_args"]
    return payload


def fingerprint(config: Config, prompt_hashes: dict[str, str]) -> str:
    """sha256 over fingerprint_payload's canonical JSON."""
    blob = json.dumps(fingerprint_payload(config, prompt_hashes), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def diff_payloads(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprint payloads."""
    # One side is usually read back from fingerprint.json: compare both as JSON, or every tuple in the
    # config (plan.inputs, plan.keep_fields) would differ from its list and be named as changed.
    return sorted(_diff(json.loads(json.dumps(old)), json.loads(json.dumps(new)), ""))


def diff_configs(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, for 'which keys changed' messages."""
    return sorted(_diff(config_to_dict(old), config_to_dict(new), ""))


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
        return out
    return [] if a == b else [prefix]


class DuplicateKey(Exception):
    def __init__(self, key: str, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map dotted key paths to their 1-based line in the YAML text."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            if key in out:  # YAML would keep the last silently: a whole section replaced without a word
                raise DuplicateKey(key, out[key], key_node.start_mark.line + 1)
            out[key] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):  # grid.generators[0].model.path: lines inside lists too
        for index, item in enumerate(node.value):
            out[f"{prefix}[{index}]"] = item.start_mark.line + 1
            out.update(_key_lines(item, f"{prefix}[{index}]"))
    return out


def _line(event: yaml.Event) -> int:
    """The 0-based line an event starts on (PyYAML's parser always sets it; 0 if not)."""
    return event.start_mark.line if event.start_mark is not None else 0
