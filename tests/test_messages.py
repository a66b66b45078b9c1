"""What a new user meets at the command line: shipped configs by name, --help defaults, messages that point
the right way (a corpus passed as a run, reduce during a live launch), and files a team can read."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.cli.app import COMMANDS, build_parser

from conftest import REPO, SHARED_DATA, Result, run_cli, write_corpus


def cli(*args: str, umask: int | None = None, env: dict | None = None) -> Result:
    return run_cli(*args, env=env, cwd="/", umask=umask)  # not the source tree: configs by name


def fake_run(tmp_path: Path, docs: int = 8, umask: int | None = None) -> Path:
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    config = tmp_path / "fake.yaml"
    config.write_text("prompts: [faq, math]\nplan: {shard_docs: 4}\nmodel: {engine: fake, path: fake-model}\n"
                      "worker: {flush_interval_s: 0.1, heartbeat_interval_s: 0.1}\n"
                      "validate: {action: keep}\n")  # the fake engine's words have no format to validate
    run = tmp_path / "run"
    proc = cli("plan", str(config), "--run", str(run), "--input", str(corpus), umask=umask)
    assert proc.returncode == 0, proc.stderr
    return run


def test_shipped_configs_by_name_outside_the_source_tree(tmp_path: Path) -> None:
    listing = cli("config").stdout
    assert "demo, finephrase" in listing and "site-dev, site-example" in listing
    assert cli("config", "finephrase").stdout == (REPO / "configs" / "finephrase.yaml").read_text()
    corpus = write_corpus(tmp_path / "corpus.jsonl", 3)
    proc = cli("plan", "finephrase", "--run", str(tmp_path / "fp"), "--input", str(corpus))
    assert proc.returncode == 0 and "planned 3 documents" in proc.stdout, proc.stderr
    proc = cli("plan", "configs/nosuch.yaml", "--run", str(tmp_path / "x"), "--input", str(corpus))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "shipped config by name (demo, finephrase, grid-example, nemotron-cc)" in proc.stderr
    assert "hpcsynth config finephrase > mine.yaml" in proc.stderr
    proc = cli("config", "nosuch")
    assert proc.returncode == 2 and "choose one of demo, finephrase, grid-example, nemotron-cc, site-dev, site-example" in proc.stderr


def test_help_shows_every_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "plan" in a.choices).choices
    for name in COMMANDS:
        text = " ".join(subparsers[name].format_help().split())
        for action in subparsers[name]._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert f"(default: {action.default})" in text, (name, action.dest)
    assert "--interval INTERVAL seconds between --watch refreshes (default: 10.0)" in " ".join(
        cli("status", "--help").stdout.split())


def test_a_corpus_passed_as_a_run_suggests_a_new_run_directory(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus / "part-0.jsonl", 2)
    proc = cli("launch", str(corpus))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "holds corpus files" in proc.stderr and "--run NEW_RUN_DIR" in proc.stderr
    assert f"--input '{corpus}/*.jsonl'" in proc.stderr and f"--run {corpus}" not in proc.stderr


def test_reduce_during_a_live_launch_says_the_shards_are_running(tmp_path: Path) -> None:
    run = fake_run(tmp_path, docs=24)  # 6 shards of 4 documents x 2 prompts, 0.3 s a completion: ~7 s of work
    log = tmp_path / "launch.log"
    with log.open("wb") as sink:
        launch = subprocess.Popen([sys.executable, "-m", "hpcsynth", "launch", str(run), "--workers", "2"],
                                  env={**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.3})},
                                  stdout=sink, stderr=subprocess.STDOUT)
        try:
            seen = None
            deadline = time.time() + 120
            while time.time() < deadline and launch.poll() is None:
                seen = orjson.loads(cli("status", str(run), "--json").stdout)["shards"]
                if seen["running"] >= 1:
                    break
                time.sleep(0.2)
            assert seen and seen["running"] >= 1, (seen, launch.poll(), log.read_text())
            proc = cli("reduce", str(run))
        finally:
            if launch.poll() is None:  # seen: no need to wait for the rest of the run (Ctrl-C stops its workers)
                launch.send_signal(signal.SIGINT)
            launch.wait(timeout=180)
    context = (proc.stderr, seen, log.read_text())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, context
    assert "are being generated now" in proc.stderr and "worker(s):" in proc.stderr, context
    assert "--partial" in proc.stderr and "run `hpcsynth launch" not in proc.stderr, context


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_every_file_of_a_run_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    run = fake_run(tmp_path, umask=umask)
    assert cli("launch", str(run), umask=umask).returncode == 0
    tokenizer = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if tokenizer.is_file():
        proc = cli("reduce", str(run), "--tokenizer", str(tokenizer), umask=umask)
        assert proc.returncode == 0, proc.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).as_posix() for p in files}
    for expected in ("manifest.json", "config.yaml", "fingerprint", "shards/000000.jsonl.zst",
                     "outputs/000000.jsonl.zst", "done/000000.json"):
        assert expected in names
    if tokenizer.is_file():
        assert {"reduce/report.json", "reduce/mix.docs.jsonl", "reduce/mix.bin"} <= names
    wrong = {p.relative_to(run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != mode}
    assert not wrong, wrong


def test_every_training_sequence_names_its_source_url(tmp_path: Path) -> None:
    """Real Common Crawl documents (their id is the URL): each line of mix.docs.jsonl, synthetic or
    original, carries the id of the web page it came from."""
    source = SHARED_DATA / "web" / "cc_en_head-0174.jsonl"
    tokenizer = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if not source.is_file() or not tokenizer.is_file():
        pytest.skip("needs the shared web documents and tokenizer")
    urls = {orjson.loads(line)["id"] for line in source.read_bytes().splitlines()}
    assert all(url.startswith("http") for url in urls)
    config = tmp_path / "fake.yaml"
    config.write_text("prompts: [faq]\nplan: {shard_docs: 4}\nmodel: {engine: fake, path: fake-model}\n"
                      "validate: {action: keep}\n"  # whole web pages are too coarse for 10 short FAQs: cut them
                      "reduce:\n  mix: {synthetic: {'*': 2.0}, sources: [{name: run_originals, weight: 1.0}], "
                      "max_doc_tokens: 32}\n")
    run = tmp_path / "run"
    for args in (("plan", str(config), "--run", str(run), "--input", str(source)), ("launch", str(run)),
                 ("reduce", str(run), "--tokenizer", str(tokenizer))):
        proc = cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
    index = [orjson.loads(line) for line in (run / "reduce" / "mix.docs.jsonl").read_bytes().splitlines()]
    assert {e["kind"] for e in index} == {"synthetic", "original"}
    assert all(e["source_id"] in urls for e in index), [e for e in index if e["source_id"] not in urls][:3]
