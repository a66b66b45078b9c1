"""Numbers and types read from run files are checked where they enter (hpcsynth/typed.py): a forged field
is one line naming the file and the key, never a traceback in whichever stage reads it.

Before: a string where the manifest has a count ended status, estimate and reduce in `TypeError:
unsupported operand type(s) for -: 'str' and 'int'` or `ValueError: invalid literal for int()`; a list as
a prompt's name in `TypeError: unhashable type: 'list'`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hpcsynth import typed

from conftest import planned_fake_run, run_cli

COMMANDS = (("status",), ("status", "--json"), ("estimate",), ("launch", "--progress", "0"), ("reduce",))
FORGED = ("x", None, [1], -1, 10 ** 30, 1.5e308, True)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    run = planned_fake_run(tmp_path_factory.mktemp("typed"), docs=6, shard_docs=3)
    assert run_cli("launch", str(run.root), "--progress", "0").returncode == 0
    return run.root


def set_at(data: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


@pytest.mark.parametrize("field", [("documents",), ("sources",), ("est_tokens",), ("bytes_per_token",),
                                   ("rejected",), ("prompts", 0, "name"), ("prompts", 1, "template_hash"),
                                   ("inputs", 0, "bytes"), ("inputs", 0, "path"), ("prompts",)])
def test_a_forged_manifest_field_is_one_line_naming_it(launched: Path, tmp_path: Path, field: tuple) -> None:
    for value in FORGED:
        if isinstance(value, str) and field[-1] in ("name", "template_hash", "path"):
            continue  # text is what these hold
        run = tmp_path / "run"
        shutil.copytree(launched, run)
        manifest = json.loads((run / "manifest.json").read_text())
        set_at(manifest, field, value)
        (run / "manifest.json").write_text(json.dumps(manifest))
        shown = ".".join(map(str, field)).replace(".0", "[0]").replace(".1", "[1]")
        for command in COMMANDS:
            result = run_cli(command[0], str(run), *command[1:])
            where = f"{field}={value!r}: hpcsynth {' '.join(command)}"
            assert result.returncode == 2 and result.stderr.count("\n") == 1, f"{where}: {result.stderr}"
            assert "manifest.json is damaged" in result.stderr and shown in result.stderr, where
        shutil.rmtree(run)


def test_a_shape_names_the_first_field_that_does_not_fit() -> None:
    shape = {"n": typed.count, "items": typed.list_of({"name": typed.text, "size": typed.number})}
    assert typed.problem({"n": 3, "items": [{"name": "a", "size": 1.5}]}, shape) == ""
    assert typed.problem({"n": True, "items": []}, shape) == "n is True, not a whole number from 0"
    assert typed.problem({"n": 1, "items": [{"name": "a", "size": float("inf")}]}, shape) == \
        "items[0].size is inf, not a finite number from 0"
    assert typed.problem({"n": 1, "items": {}}, shape) == "items is {}, not a list"
    assert typed.problem({"items": []}, shape) == "n is missing"
    assert typed.problem({"items": []}, shape, frozenset({"n"})) == ""
    assert typed.problem([], shape) == "it is [], not an object"
