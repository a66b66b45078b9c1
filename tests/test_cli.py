"""The CLI contract: every command documented with an example, mistakes as one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from hpcsynth.cli.app import COMMANDS

from conftest import REPO, run_cli, write_corpus


def test_real_entry_point_agrees_with_the_in_process_runner(tmp_path: Path) -> None:
    # The rest of the suite calls main() in-process (run_cli); this checks that `python -m hpcsynth` as a
    # process says the same: exit codes, stdout, and the one-line error on stderr.
    for args in (["config", "demo"], ["launch", str(tmp_path / "never")], ["launch"], ["--version"]):
        real = subprocess.run([sys.executable, "-m", "hpcsynth", *args], capture_output=True, text=True, timeout=120)
        here = run_cli(*args)
        assert (real.returncode, real.stdout, real.stderr) == (here.returncode, here.stdout, here.stderr), args
    assert real.returncode == 0 and real.stdout.startswith("hpcsynth ")


def test_in_process_runner_leaves_this_process_as_it_found_it(tmp_path: Path) -> None:
    import logging
    import os
    import signal

    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    config = tmp_path / "fake.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake}\n")
    assert run_cli("plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus)).returncode == 0
    before = (dict(os.environ), os.getcwd(), list(logging.getLogger("hpcsynth").handlers),
              list(logging.getLogger().handlers), signal.getsignal(signal.SIGALRM), sys.stdout, sys.stderr)
    launched = run_cli("launch", str(tmp_path / "run"), env={"HPCSYNTH_FAKE_FAULTS": '{"delay_s": 0.01}'},
                       cwd=tmp_path)
    assert launched.returncode == 0 and "1/1 shards done" in launched.stdout, launched.stderr
    assert run_cli("plan", str(config), "--run", str(tmp_path / "idle"), "--input", str(corpus)).returncode == 0
    with pytest.raises(subprocess.TimeoutExpired):  # a hang (a watch of a run nobody works on) fails the test
        run_cli("status", str(tmp_path / "idle"), "--watch", "--interval", "600", timeout=1)
    assert before == (dict(os.environ), os.getcwd(), list(logging.getLogger("hpcsynth").handlers),
                      list(logging.getLogger().handlers), signal.getsignal(signal.SIGALRM), sys.stdout, sys.stderr)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_example(command: str) -> None:
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    assert "example:" in proc.stdout and f"hpcsynth {command}" in proc.stdout


def test_every_command_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for command in COMMANDS:
        assert f"hpcsynth {command}" in readme, command


@pytest.mark.parametrize("command", ["launch", "status", "reduce"])
def test_unplanned_run_says_plan_first(tmp_path: Path, command: str) -> None:
    proc = run_cli(command, str(tmp_path / "never"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "run `hpcsynth plan" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_launch_status_reduce_on_fake_engine(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 9)
    config = tmp_path / "fake.yaml"
    config.write_text("prompts: [faq, table]\nplan: {shard_docs: 4}\nmodel: {engine: fake}\n"
                      "worker: {flush_interval_s: 0.1, heartbeat_interval_s: 0.1}\n")
    runs = tmp_path / "run"
    proc = run_cli("plan", str(config), "--run", str(runs), "--input", str(corpus))
    assert proc.returncode == 0 and "planned 9 documents into 3 shards" in proc.stdout
    status = orjson.loads(run_cli("status", str(runs), "--json").stdout)
    assert status["shards"]["pending"] == 3 and status["docs_done"] == 0
    proc = run_cli("launch", str(runs))
    assert proc.returncode == 0 and "3/3 shards done" in proc.stdout, proc.stderr
    status = orjson.loads(run_cli("status", str(runs), "--json").stdout)
    assert status["shards"]["done"] == 3 and status["records_done"] == 18
    assert "done" in run_cli("status", str(runs)).stdout
    # The fake model has no tokenizer: reduce asks for one, in one line.
    proc = run_cli("reduce", str(runs))
    assert proc.returncode == 2 and "reduce.tokenizer: no tokenizer.json" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_plan_rejects_a_corpus_line_with_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": 1, "text": "fine"}\nnot json\n')
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake}\n")
    proc = run_cli("plan", str(config), "--run", str(tmp_path / "r"), "--input", str(corpus))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "bad.jsonl line 2: not valid JSON" in proc.stderr


def test_error_naming_a_hostile_path_stays_one_inert_line(tmp_path: Path) -> None:
    hostile = tmp_path / "no\nsuch \x1b]0;PWNED\x07config.yaml"
    proc = run_cli("plan", str(hostile), "--run", str(tmp_path / "run"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr and "config file not found" in proc.stderr


def test_forged_failure_reason_reaches_the_terminal_inert(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    config = tmp_path / "config.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake}\n")
    assert run_cli("plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus)).returncode == 0
    (tmp_path / "run" / "failed").mkdir()
    (tmp_path / "run" / "failed" / "000000.json").write_bytes(orjson.dumps({"shard": 0,
                                                                           "reason": "x\x1b]0;PWNED\x07\ny"}))
    proc = run_cli("launch", str(tmp_path / "run"))
    assert "shard 0 failed: x?]0;PWNED??y" in proc.stderr and "\x1b" not in proc.stderr


@pytest.mark.parametrize("url", ["gs://bucket/corpus/*.parquet", "hf://datasets/HuggingFaceFW/fineweb-edu"])
def test_a_remote_input_says_what_is_supported(tmp_path: Path, url: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake, path: fake-model}\n")
    result = run_cli("plan", str(config), "--run", str(tmp_path / "run"), "--input", url)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{url.split(':')[0]}:// is not supported (only s3:// URLs and local paths are)" in result.stderr
    assert "matches no file" not in result.stderr


@pytest.mark.parametrize("command,args,says", [
    ("plan", ["c.yaml", "--run", "run"], "the run is as it was; plan again"),
    ("reduce", ["run"], "finished parts are kept; run the same reduce again"),
    ("launch", ["run"], "launch again to go on"),
])
def test_ctrl_c_says_what_to_run_next_for_each_command(monkeypatch, command: str, args: list, says: str) -> None:
    from hpcsynth.cli import app

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setitem(app.HANDLERS, command, interrupted)
    monkeypatch.setattr(app, "grid_target", lambda _args: None)
    result = run_cli(command, *args)
    assert result.returncode == 130 and says in result.stderr, result.stderr
    assert command == "launch" or "relaunch" not in result.stderr
