"""Prompt templates: prompts/NAME.md, with the document inserted where `{document}` stands.

The worker renders one user message per (document, prompt); each record carries the prompt's name and
the hash of its template, so a changed template is visible in the outputs and in the run fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError
from hpcsynth.resources import data_dir

PLACEHOLDER = "{document}"


@dataclass(frozen=True)
class Prompt:
    name: str
    template: str

    @property
    def template_hash(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def render(self, document: str) -> list[dict[str, str]]:
        """The chat conversation for one document: a single user message."""
        return [{"role": "user", "content": self.template.replace(PLACEHOLDER, document)}]


def prompts_directory(config: Config) -> Path:
    return Path(config.prompts_dir) if config.prompts_dir else data_dir("prompts")


def load_prompts(config: Config) -> list[Prompt]:
    directory = prompts_directory(config)
    available = sorted(p.stem for p in directory.glob("*.md"))
    prompts = []
    for name in config.prompts:
        path = directory / f"{name}.md"
        if not path.is_file():
            raise ConfigError(f"'prompts' names {name!r} but {path} does not exist; available prompts: "
                              f"{', '.join(available) or 'none'}")
        template = path.read_text(encoding="utf-8")
        if PLACEHOLDER not in template:
            raise ConfigError(f"{path}: the template has no {PLACEHOLDER} placeholder; add it where the "
                              f"document should go")
        prompts.append(Prompt(name=name, template=template))
    return prompts
