"""The reduce-side settings of a reduce: which config made this mix, and a re-mix from another one.

A run's outputs were generated under its config's prompts, plan, model and sampling (the fingerprint);
what a reduce does with them is decided by three sections only: `reduce:` (the mix, the tokenizer, the
format), `validate:` (which records the reduce keeps) and `card:` (what the dataset card says). So
`hpcsynth reduce RUN --config FILE` may change those three and nothing else: FILE's keys are laid over
the run's config section by section (a key FILE names replaces the run's, a whole `reduce.mix` included,
as a grid's mix-in does), and a key that would change what was generated is refused, naming it.

The rule for where the settings live: RUN/config.yaml holds the run's own reduce settings and only
`launch RUN --config FILE` changes them (saying so). A `reduce --config` never writes RUN/config.yaml;
its settings travel in the reduce's spec (run_info["view"], so each part and a Slurm merge job apply
them) and every output keeps the settings that made it in DIR/reduce-config.yaml (listed in report.json
with its checksum, so `verify` checks it; the card names the keys that differ from the run's config).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import yaml

from hpcsynth.config import FINGERPRINTED, Config, config_from_dict, config_to_dict, diff_configs, read_yaml
from hpcsynth.errors import ConfigError
from hpcsynth.files import atomic_write_bytes

REDUCE_SECTIONS = ("reduce", "validate", "card")
# Keys that decide what was generated: the fingerprinted sections, the prompt files' folder and the engine's
# pass-through arguments (fingerprinted when set).
GENERATION = (*FINGERPRINTED, "prompts_dir", "vllm.engine_args")
RUN_CONFIG = "the run's config.yaml"


@dataclasses.dataclass(frozen=True)
class Remix:
    """A reduce under FILE's reduce-side settings: the view the parts apply, and what changed."""

    source: str  # FILE as the user gave it (printed), its name only on the card
    view: dict[str, Any]  # {"reduce": {...}, "validate": {...}, "card": {...}}: whole sections
    changes: list[dict[str, Any]]  # {"key", "old", "new"} per changed key (see change_line)


def overlay(config: Config, path: Path, sections: tuple[str, ...] | None = None) -> Config:
    """config with the keys of FILE's sections laid over it (a key FILE names replaces config's); only
    `sections` when given. FILE's keys are checked as any config's (unknown keys, types, values)."""
    from hpcsynth.resources import find_config

    found = find_config(path)
    if found is None:
        raise ConfigError(f"config file not found: {path}; pass a YAML file with the reduce:, validate: or card: "
                          f"keys to change (start from the run's: RUN/config.yaml)")
    data, lines = read_yaml(found)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    merged = config_to_dict(config)
    for section, values in data.items():
        if sections is not None and section not in sections:
            continue
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    new = config_from_dict(merged, source=str(path), lines=lines)
    # plan.inputs as planned: a config file names globs where the run's holds the files they matched.
    return dataclasses.replace(new, plan=dataclasses.replace(new.plan, inputs=config.plan.inputs))


def remix(config: Config, path: Path) -> Remix:
    """The reduce-side settings of FILE over the run's config; a change to anything else is refused."""
    new = overlay(config, path)
    changed = diff_configs(config, new)
    generation = [k for k in changed if _under(k, GENERATION)]
    if generation:
        raise ConfigError(f"{path} changes what this run generated ({', '.join(generation)}); a re-mix takes "
                          f"the run's outputs as they are and may change only {', '.join(REDUCE_SECTIONS)} keys: "
                          f"drop those keys from {path}, or plan a new run to generate under them")
    other = [k for k in changed if not _under(k, REDUCE_SECTIONS)]
    if other:
        raise ConfigError(f"{path} changes {', '.join(other)}, which a reduce does not use; a reduce --config "
                          f"takes only {', '.join(REDUCE_SECTIONS)} keys (for the reduce's Slurm jobs, --profile)")
    return Remix(str(path), reduce_sections(new), changes(config, new))


def reduce_sections(config: Config) -> dict[str, Any]:
    """The reduce-side sections of a config, as plain data (what DIR/reduce-config.yaml holds)."""
    data = config_to_dict(config)
    # As JSON gives it back (tuples as lists): what a spec read from disk holds, compared and diffed alike.
    return orjson.loads(orjson.dumps({section: data[section] for section in REDUCE_SECTIONS}))


def changes(old: Config, new: Config) -> list[dict[str, Any]]:
    """Each reduce-side value that differs, {"key", "old", "new"}, down to a mix source's own keys (named
    by the source: reduce.mix.sources[web].weight); a list that grew or shrank is one change."""
    before, after = reduce_sections(old), reduce_sections(new)
    return [{"key": key, "old": a, "new": b} for key, a, b in _walk(before, after, "")]


def change_line(change: dict[str, Any], card: bool = False) -> str:
    """"reduce.original_ratio: 1.0 -> 0.5"; for the card (card=True), a path by its last part only: the card
    travels to the Hub, the site's directories stay home."""
    show = (lambda v: _show(_scrub(v))) if card else _show
    return f"{change['key']}: {show(change['old'])} -> {show(change['new'])}"


def write_reduce_config(out_dir: Path, suffix: str, run_info: dict[str, Any]) -> Path | None:
    """DIR/reduce-config.yaml (-partial): the reduce-side sections this output was made with, a config
    `reduce RUN --config` takes back; None for a spec written before they were recorded."""
    sections = run_info.get("reduce_config")
    if not isinstance(sections, dict):
        return None
    made = run_info.get("settings_from") or {}
    source = made.get("config") or ("the grid's mix-in over " + RUN_CONFIG if made.get("grid") else RUN_CONFIG)
    head = [f"# The reduce settings that made this output (from {source}).",
            "# Make it again: hpcsynth reduce RUN --config THIS_FILE"]
    head += [f"# changed from the run's config: {change_line(c)}" for c in made.get("changed") or []]
    path = Path(out_dir) / f"reduce-config{suffix}.yaml"
    text = "\n".join(head) + "\n" + yaml.safe_dump(sections, sort_keys=False, allow_unicode=True)
    atomic_write_bytes(path, text.encode())
    return path


def _under(key: str, roots: tuple[str, ...]) -> bool:
    return any(key == root or key.startswith(root + ".") for root in roots)


def _walk(a: Any, b: Any, key: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [found for k in sorted(set(a) | set(b), key=str)
                for found in _walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
        names = [e.get("name") if isinstance(e, dict) else None for e in a]
        same = names == [e.get("name") if isinstance(e, dict) else None for e in b]
        labels = names if same and None not in names and len(set(names)) == len(names) else range(len(a))
        return [found for label, x, y in zip(labels, a, b) for found in _walk(x, y, f"{key}[{label}]")]
    return [] if a == b else [(key, a, b)]


def _scrub(value: Any) -> Any:
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return str(value)
