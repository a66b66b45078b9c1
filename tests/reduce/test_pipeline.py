"""The reduce pipeline through its real entry point: parallel, resumable, partial, verified."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import fake_config, outlived, write_corpus
from test_demo import ENTRY, hpcsynth

OUTPUTS = ("mix.bin", "mix.idx", "mix.docs.jsonl")


def make_run(root: Path, tokenizer: Path, docs: int = 24, **reduce) -> RunDir:
    corpus = write_corpus(root / "c.jsonl", docs)
    settings = {"tokenizer": str(tokenizer), "min_chars": 1, "part_shards": 1, "bucket_docs": 5,
                "original_ratio": 0.5, **reduce}
    config = fake_config(corpus, reduce=settings)
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, shard_docs=2))
    run = RunDir(root / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    return run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model: Path) -> RunDir:
    return make_run(tmp_path_factory.mktemp("pipeline"), tiny_model)


def read_outputs(out: Path, names=OUTPUTS) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in names}


def test_jobs_2_gives_the_same_bytes_as_jobs_1(small_run: RunDir, tmp_path: Path) -> None:
    hpcsynth("reduce", str(small_run.root), "--out", str(tmp_path / "one"), "--jobs", "1")
    proc = hpcsynth("reduce", str(small_run.root), "--out", str(tmp_path / "two"), "--jobs", "2")
    assert read_outputs(tmp_path / "one") == read_outputs(tmp_path / "two")
    report = orjson.loads((tmp_path / "two" / "report.json").read_bytes())
    assert report["parts"] == 12 and report["buckets"] == 5 and not report["partial"]
    # The summary says tokens per source and how to point a trainer at the files.
    assert "synthetic " in proc.stdout and "run_originals" in proc.stdout and "--data-path" in proc.stdout
    # Every sequence traces back to the corpus's own document id.
    index = [orjson.loads(l) for l in (tmp_path / "two" / "mix.docs.jsonl").read_bytes().splitlines()]
    assert {e["source_id"] for e in index} <= {f"doc-{i}" for i in range(24)}
    assert all(e["source_id"] for e in index) and [e["seq"] for e in index] == list(range(len(index)))
    # The shuffle mixes kinds and shards: not sorted by id, not in two blocks.
    ids = [e["id"] for e in index]
    assert ids != sorted(ids) and len({e["kind"] for e in index[: len(index) // 3]}) == 2


def _pool_workers(parent: int) -> list[int]:
    """The spawned pool workers among a process's children (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
    pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    workers = []
    for pid in pids:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:  # gone already
            pass
    return workers


def test_a_killed_reduce_worker_fails_in_one_line_and_the_rerun_finishes(small_run: RunDir, tmp_path: Path) -> None:
    """A `reduce --jobs 2` worker killed (the OOM killer on a big part, kill -9): multiprocessing.Pool started
    another and waited for ever on the dead one's part. Now the reduce fails at once, in one line, its other
    worker ends with it, and the rerun gives the bytes of an uninterrupted reduce."""
    whole = tmp_path / "whole"
    hpcsynth("reduce", str(small_run.root), "--out", str(whole))
    out = tmp_path / "killed"
    proc = subprocess.Popen([*ENTRY, "reduce", str(small_run.root), "--out", str(out), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, workers = time.monotonic() + 120, []
    while not workers and proc.poll() is None and time.monotonic() < deadline:
        workers = _pool_workers(proc.pid)
        time.sleep(0.01)
    assert workers, "the pool started"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, stderr
    assert "a reduce worker process ended without a word" in lines[-1] and "run the reduce again" in lines[-1]
    hpcsynth("reduce", str(small_run.root), "--out", str(out), "--jobs", "2")
    assert read_outputs(out) == read_outputs(whole)


def test_reduce_workers_end_with_a_killed_reduce(small_run: RunDir, tmp_path: Path) -> None:
    """kill -9 of `reduce --jobs 2` ends its pool workers too (they ran on for a part, or waited)."""
    proc = subprocess.Popen([*ENTRY, "reduce", str(small_run.root), "--out", str(tmp_path / "out"), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 120, []
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = _pool_workers(proc.pid)
        time.sleep(0.01)
    assert len(workers) == 2, "the pool started"
    proc.kill()
    proc.wait()
    assert not (alive := outlived(workers)), f"reduce workers {alive} outlived the reduce"


def test_killed_reduce_resumes_with_identical_bytes(small_run: RunDir, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    hpcsynth("reduce", str(small_run.root), "--out", str(whole))
    out = tmp_path / "killed"
    proc = subprocess.Popen([*ENTRY, "reduce", str(small_run.root), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "parts" / "part-000000.done.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.done.json")}
    assert 1 <= len(done_before) < 12 and not (out / "report.json").exists()
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    assert read_outputs(out) == read_outputs(whole)
    assert not list((out / "parts").glob(".*.tmp")) and not list(out.glob("*.tmp"))
    # Only unfinished parts were redone.
    assert all((out / "parts" / name).stat().st_mtime_ns == ns for name, ns in done_before.items())


def test_partial_reduce_is_named_partial(tmp_path: Path, tiny_model: Path) -> None:
    run = make_run(tmp_path, tiny_model, docs=8)
    run.done_path(1).unlink()
    refused = hpcsynth("reduce", str(run.root), check=False)
    assert refused.returncode == 2 and "--partial" in refused.stderr
    proc = hpcsynth("reduce", str(run.root), "--partial")
    out = run.default_reduce_dir
    assert (out / "mix-partial.bin").is_file() and (out / "mix-partial.docs.jsonl").is_file()
    assert not (out / "mix.bin").exists() and not (out / "report.json").exists()
    report = orjson.loads((out / "report-partial.json").read_bytes())
    assert report["partial"] and report["shards_skipped"] == [{"shard": 1, "reason": "not done"}]
    assert "PARTIAL" in proc.stdout and (out / "text-partial" / "README.md").is_file()
    assert hpcsynth("verify", str(out)).returncode == 0


def test_verify_finds_damage_one_line_each(small_run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "v"
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    assert "is whole" in hpcsynth("verify", str(out)).stdout
    data = bytearray((out / "mix.bin").read_bytes())
    data[10] ^= 0xFF
    (out / "mix.bin").write_bytes(bytes(data))
    lines = (out / "mix.docs.jsonl").read_bytes().splitlines(keepends=True)
    (out / "mix.docs.jsonl").write_bytes(b"".join(lines[:-1]))
    next((out / "text").glob("train-*.parquet")).unlink()
    proc = hpcsynth("verify", str(out), check=False)
    assert proc.returncode == 1
    problems = proc.stdout.splitlines()
    assert any("mix.bin does not match its sha256" in p for p in problems)
    assert any("mix.docs.jsonl has" in p and "lines for" in p for p in problems)
    assert any("text export train-" in p and "missing" in p for p in problems)
    assert "Traceback" not in proc.stderr
    nothing = hpcsynth("verify", str(tmp_path), check=False)
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1 and "report.json" in nothing.stderr


def test_verify_finds_a_token_outside_the_vocabulary(small_run: RunDir, tmp_path: Path) -> None:
    """A file rewritten consistently (checksums refreshed) still fails on its contents."""
    import numpy as np

    from hpcsynth.files import atomic_write_json, sha256_file

    out = tmp_path / "ids"
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    tokens = np.fromfile(out / "mix.bin", dtype=np.uint16)
    tokens[3] = 65000
    tokens.tofile(out / "mix.bin")
    report = orjson.loads((out / "report.json").read_bytes())
    for entry in report["files"]:
        entry["sha256"] = sha256_file(out / entry["path"])
    atomic_write_json(out / "report.json", report)
    proc = hpcsynth("verify", str(out), check=False)
    assert proc.returncode == 1 and "token id 65000" in proc.stdout and "outside the vocabulary" in proc.stdout


def test_changed_settings_redo_every_part(small_run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "s"
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    before = orjson.loads((out / "report.json").read_bytes())
    config = small_run.config()
    changed = dataclasses.replace(config, reduce=dataclasses.replace(config.reduce, original_ratio=0.0))
    small_run.write_config(changed, small_run.fingerprint())
    try:
        hpcsynth("reduce", str(small_run.root), "--out", str(out))
    finally:
        small_run.write_config(config, small_run.fingerprint())
    after = orjson.loads((out / "report.json").read_bytes())
    assert before["original_documents"] > 0 and after["original_documents"] == 0
    assert after["sequences"] == after["synthetic_documents"]


def test_damaged_part_is_redone_not_merged(small_run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "d"
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    whole = read_outputs(out)
    part = out / "parts" / "part-000003.bin"
    part.write_bytes(part.read_bytes()[:-2])
    (out / "parts" / "part-000005.lens.npy").unlink()
    untouched = (out / "parts" / "part-000000.done.json").stat().st_mtime_ns
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    assert read_outputs(out) == whole
    assert (out / "parts" / "part-000000.done.json").stat().st_mtime_ns == untouched


def test_nothing_left_after_checks_is_one_line(tmp_path: Path, tiny_model: Path) -> None:
    run = make_run(tmp_path, tiny_model, docs=4, min_chars=100000, original_ratio=0.0)
    proc = hpcsynth("reduce", str(run.root), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no record" in proc.stderr and "rejects.jsonl" in proc.stderr


def test_two_reduces_into_one_directory(small_run: RunDir, tmp_path: Path) -> None:
    """A reduce finds another one's lock: it refuses in one line while the holder lives, and takes the
    lock over once the holder is dead (a killed reduce needs no hand surgery)."""
    import socket

    out = tmp_path / "race"
    lock = out / "parts" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(orjson.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # alive: this test
    second = hpcsynth("reduce", str(small_run.root), "--out", str(out), check=False)
    assert second.returncode == 2 and second.stderr.count("\n") == 1
    assert f"pid {os.getpid()}" in second.stderr and "is writing" in second.stderr
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_bytes(orjson.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    hpcsynth("reduce", str(small_run.root), "--out", str(out))
    assert not lock.exists() and "is whole" in hpcsynth("verify", str(out)).stdout


def test_progress_at_a_terminal_shows_parts_then_tokens_written(small_run: RunDir, tmp_path: Path) -> None:
    """At a terminal, reduce draws a bar over the parts (tokens tokenized so far) and then one over the
    merge's tokens written out of the mix's total; piped (every other test), it prints no bar at all."""
    import pty
    import re

    out = tmp_path / "tty"
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen([*ENTRY, "reduce", str(small_run.root), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=follower, env=env)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    stdout = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, screen.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    report = orjson.loads((out / "report.json").read_bytes())
    assert "reduce: tokenize" in text and "12/12 parts, " in text and "tokens tokenized" in text
    total = report["mix"]["policy"]["target_total"]
    assert f"{report['tokens']:,} / {total:,} tokens written" in text and "reduce: merge" in text
    assert "reduce:" not in stdout and "wrote " in stdout  # the bar is on stderr, the summary on stdout
    piped = hpcsynth("reduce", str(small_run.root), "--out", str(out))
    assert "reduce:" not in piped.stderr + piped.stdout
