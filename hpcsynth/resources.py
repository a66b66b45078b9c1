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


def shipped_configs(profiles: bool = False) -> dict[str, Path]:
    """The run configs that ship with hpcsynth by name (demo, finephrase), or with `profiles` the Slurm
    site profiles (site-*.yaml)."""
    try:
        folder = data_dir("configs")
    except FileNotFoundError:
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.yaml")) if path.stem.startswith("site-") == profiles}


def find_config(name_or_path: str | Path, profiles: bool = False) -> Path | None:
    """A YAML file the user named: an existing path, else a shipped config by name ('finephrase' or
    'finephrase.yaml', so that `hpcsynth plan finephrase` works outside the source tree too)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if len(path.parts) == 1 or path.parent.name == "configs":
        return shipped_configs(profiles).get(path.name.removesuffix(".yaml").removesuffix(".yml"))
    return None
