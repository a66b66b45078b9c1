"""A missing optional library (an extra of pyproject.toml) is one line with the pip command, exit 2.

Each command runs in this process through the CLI's own entry point (the worker's for the engine), with
the library made unimportable: `sys.modules[name] = None` makes `import name` raise ImportError, as on a
core install without the extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hpcsynth.cli.app import main
from hpcsynth.errors import MissingDependency
from hpcsynth.generate.pull import pull_shards
from hpcsynth.optional import require

from conftest import planned_fake_run, write_corpus


def run_cli(argv: list[str], entry=main) -> int:
    try:
        return entry(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def assert_one_line(capsys, code: int, module: str, extra: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"hpcsynth: error: {module} is not installed (needed for "), err
    assert err.rstrip().endswith(f"install it with: pip install 'hpcsynth[{extra}]'"), err
    return err


def block(monkeypatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(("module", "backend"), [("tokenizers", "auto"), ("gigatoken", "gigatoken")])
def test_reduce_without_its_tokenizer(tmp_path: Path, tiny_model: Path, monkeypatch, capsys, module: str,
                                      backend: str) -> None:
    run = planned_fake_run(tmp_path, docs=8, shard_docs=4,
                           reduce={"tokenizer": str(tiny_model), "min_chars": 1, "backend": backend})
    pull_shards(run.root)
    capsys.readouterr()
    block(monkeypatch, module)
    err = assert_one_line(capsys, run_cli(["reduce", str(run.root), "--out", str(tmp_path / "out")]), module, "cpu")
    assert "reduce" in err


def test_status_plot_without_matplotlib(tmp_path: Path, monkeypatch, capsys) -> None:
    run = planned_fake_run(tmp_path, docs=8, shard_docs=4)
    capsys.readouterr()
    block(monkeypatch, "matplotlib", "matplotlib.pyplot")
    code = run_cli(["status", str(run.root), "--plot", str(tmp_path / "progress.png")])
    assert_one_line(capsys, code, "matplotlib", "charts")
    assert not (tmp_path / "progress.png").exists()


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_transformers_engine_start_without_its_libraries(tmp_path: Path, monkeypatch, capsys, module: str) -> None:
    """The worker's own entry point (what launch starts), the engine built in this process."""
    from hpcsynth.generate import pull

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")  # enough for the pre-flight check; never loaded
    run = planned_fake_run(tmp_path, docs=8, shard_docs=4, model={"engine": "transformers", "path": str(model)})
    capsys.readouterr()
    block(monkeypatch, module)
    code = run_cli([str(run.root), "--log", str(tmp_path / "worker.log")], entry=pull.main)
    assert "model.engine=transformers" in assert_one_line(capsys, code, module, "cpu")


def test_demo_and_render_without_torch_or_transformers(tmp_path: Path, monkeypatch, capsys) -> None:
    block(monkeypatch, "torch")
    assert "demo's tiny model" in assert_one_line(capsys, run_cli(["demo", str(tmp_path / "demo")]), "torch", "cpu")
    block(monkeypatch, "transformers")
    doc = write_corpus(tmp_path / "doc.jsonl", 1)
    (tmp_path / "tok").mkdir()
    code = run_cli(["prompts", "--render", "faq", "--doc", str(doc), "--tokenizer", str(tmp_path / "tok")])
    assert "chat template" in assert_one_line(capsys, code, "transformers", "cpu")


def test_a_library_that_is_there_but_broken_is_named_so(monkeypatch) -> None:
    """An ImportError from inside the library (a dependency of its own missing) is not 'not installed'."""
    import builtins

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "matplotlib":
            raise ModuleNotFoundError("No module named 'kiwisolver'", name="kiwisolver")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(MissingDependency) as caught:
        require("matplotlib", extra="charts", for_what="--plot's charts")
    message = str(caught.value)
    assert message.startswith("matplotlib is installed but does not import (ModuleNotFoundError: No module named "
                              "'kiwisolver'; needed for --plot's charts); reinstall it with: pip install "
                              "'hpcsynth[charts]'"), message
    assert "\n" not in message
