"""The prompt library: prompts/NAME.md files, each a small header and a template.

A prompt file opens with a header between two `---` lines, then the template:

    ---
    name: faq                  # must match the file name (NAME.md)
    version: 1                 # bump when the wording changes, so readers of the data can tell
    format: faq                # what it asks for: table, faq, math, tutorial or free (reduce validates by it)
    system: You are ...        # optional system message
    ---
    Instruction ...
    {document}

The document goes where `{document}` stands, once; FinePhrase's prompts put it last, so every request of
one prompt shares the whole instruction as a cached prefix. Any other `{word}` is refused, so a typo such
as `{doc}` cannot reach the model. Each record carries the prompt's hash, which covers everything that
reaches the model (system message and template), and the run's fingerprint covers the hashes.

Prompts are looked up in `prompts_dir` (if the config names one) and then among those that ship with
hpcsynth, so a user adds a prompt by dropping a file into their own directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError
from hpcsynth.resources import data_dir

PLACEHOLDER = "{document}"
# What the reducer's validators know how to check; "free" is prose with no structure to check.
PROMPT_FORMATS = ("table", "faq", "math", "tutorial", "free")
HEADER_KEYS = ("name", "version", "format", "system")
# Shipped prompts are 1-2 KB; a prompt a thousand times that is a wrong (or hostile) file, not a prompt.
MAX_PROMPT_BYTES = 1 << 20
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Prompt:
    name: str
    template: str
    format: str = "free"
    version: str = "1"
    system: str = ""
    path: str = ""

    @property
    def template_hash(self) -> str:
        """Everything that reaches the model; version and format are labels, not part of the request."""
        blob = json.dumps([self.system, self.template]) if self.system else self.template
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def render(self, document: str) -> list[dict[str, str]]:
        """The chat conversation for one document: an optional system message, then the user message."""
        # str.replace, not str.format: the document itself may hold braces.
        user = {"role": "user", "content": self.template.replace(PLACEHOLDER, document)}
        return [{"role": "system", "content": self.system}, user] if self.system else [user]

    def describe(self) -> dict[str, str]:
        """What the manifest and `hpcsynth prompts` show of a prompt."""
        return {"name": self.name, "format": self.format, "version": self.version,
                "template_hash": self.template_hash}


def parse_prompt(path: Path) -> Prompt:
    """Read one prompt file; a malformed one raises ConfigError naming the file and line."""
    try:
        text = _read_prompt_file(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # A checkout with Windows line endings must not change what the model reads, nor the hash.
    lines = text.replace("\r\n", "\n").splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise ConfigError(f"{path} line 1: a prompt file starts with a '---' header (name, version, format); "
                          f"see prompts/faq.md")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise ConfigError(f"{path}: the header opened on line 1 is never closed; add a '---' line after it")
    header = _header(path, "".join(lines[1:end]))
    # No trailing newline: the document is the very last thing the model reads before its turn.
    template = "".join(lines[end + 1:]).strip("\n")
    _check_template(path, template, end + 2)
    return Prompt(name=header["name"], template=template, format=header["format"], version=header["version"],
                  system=header.get("system", "").strip(), path=str(path))


def _read_prompt_file(path: Path) -> bytes:
    """A prompt file's bytes, if it is a regular file of a prompt's size. status re-reads the prompts a
    run's config names (perhaps a directory in a run copied from elsewhere): a FIFO there hung it, and a
    sparse file or a link to /dev/zero was read until memory ran out."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PROMPT_BYTES:
        os.close(fd)
        raise ConfigError(f"{path}: not a prompt file (a regular file of at most {MAX_PROMPT_BYTES:,} "
                          f"bytes); replace it with one, or name another prompts_dir")
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_PROMPT_BYTES + 1)


def _header(path: Path, text: str) -> dict[str, str]:
    from hpcsynth.config.load import refuse_aliases

    try:
        # As in configs: a prompts_dir may sit in a run directory copied from elsewhere, and status
        # re-reads its headers; a few hundred bytes of nested aliases would turn into gigabytes of text.
        refuse_aliases(text, path, first_line=2)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 2}" if mark else ""
        raise ConfigError(f"{path}{where}: the header is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the header must hold 'key: value' lines ({', '.join(HEADER_KEYS)})")
    unknown = sorted(set(map(str, data)) - set(HEADER_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown header key '{unknown[0]}'; valid keys: {', '.join(HEADER_KEYS)}")
    for key in ("name", "version", "format"):
        if data.get(key) in (None, ""):
            raise ConfigError(f"{path}: the header has no '{key}'; add e.g. '{key}: {_EXAMPLE[key]}'")
    data = {key: str(value) for key, value in data.items() if value is not None}
    if data["name"] != path.stem:
        raise ConfigError(f"{path}: the header says name '{data['name']}' but the file is {path.name}; "
                          f"make them match")
    if data["format"] not in PROMPT_FORMATS:
        raise ConfigError(f"{path}: format '{data['format']}' is not one of {', '.join(PROMPT_FORMATS)}")
    return data


_EXAMPLE = {"name": "NAME (the file name)", "version": "1", "format": "free"}


def _check_template(path: Path, template: str, first_line: int) -> None:
    for offset, line in enumerate(template.splitlines()):
        for match in _FIELD.finditer(line):
            if match.group(0) != PLACEHOLDER:
                raise ConfigError(f"{path} line {first_line + offset}: unknown placeholder {match.group(0)}; "
                                  f"the only one is {PLACEHOLDER}")
    count = template.count(PLACEHOLDER)
    if count != 1:
        raise ConfigError(f"{path}: the template has {count} {PLACEHOLDER} placeholders; put exactly one "
                          f"where the document should go")


def prompt_directories(config: Config) -> list[Path]:
    """Where prompts are looked up, first match wins: the user's directory, then the shipped one."""
    shipped = data_dir("prompts")
    if not config.prompts_dir:
        return [shipped]
    own = Path(config.prompts_dir).expanduser()
    if not own.is_dir():
        raise ConfigError(f"prompts_dir {config.prompts_dir} is not a directory; create it or leave it empty")
    return [own, shipped]


def available_prompts(config: Config) -> dict[str, Path]:
    """Every prompt name that can be asked for, and the file it comes from."""
    found: dict[str, Path] = {}
    for directory in reversed(prompt_directories(config)):
        found.update({p.stem: p for p in sorted(directory.glob("*.md"))})
    return dict(sorted(found.items()))


def load_prompts(config: Config) -> list[Prompt]:
    """The prompts the config names, parsed and checked."""
    available = available_prompts(config)
    prompts = []
    for name in config.prompts:
        if name not in available:
            where = " or ".join(str(d) for d in prompt_directories(config))
            raise ConfigError(f"'prompts' names {name!r} but there is no {name}.md in {where}; available "
                              f"prompts: {', '.join(available) or 'none'}")
        prompts.append(parse_prompt(available[name]))
    return prompts

