"""Where the files that ship with hpcsynth (prompts/, configs/) are found.

A source checkout or editable install reads them at the top of the repository, where users edit them;
a wheel carries a copy under hpcsynth/_data/ (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hpcsynth's {name}/ directory is missing from this installation")
