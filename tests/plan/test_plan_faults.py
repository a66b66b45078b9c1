"""Attacks on the planner: killed mid-plan, two planners at once, hostile paths, duplicates at scale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.errors import RunError
from hpcsynth.files import read_json, read_jsonl_zst, sha256_file
from hpcsynth.plan import duplicates, plan_corpus
from hpcsynth.rundir import RunDir

from conftest import REPO, fake_config, run_cli, run_process, small_tmpfs, write_corpus


def plan_args(tmp_path: Path, corpus: Path, run: Path, *extra: str) -> list[str]:
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake, path: fake-model}\nplan: {shard_docs: 1, bytes_per_token: 4.0}\n")
    return ["plan", str(config), "--run", str(run), "--input", str(corpus), "--jobs", "1", *extra]


def plan_command(tmp_path: Path, corpus: Path, run: Path, *extra: str) -> list[str]:
    """A planner of its own, for the tests that kill it or run it beside another one."""
    return [sys.executable, "-m", "hpcsynth", *plan_args(tmp_path, corpus, run, *extra)]


def test_an_input_changed_while_it_is_planned_fails_the_plan_and_keeps_the_old_one(tmp_path: Path) -> None:
    """A corpus file appended to while the planner runs: its shards would match neither version, and the
    manifest would name the old size. The plan fails in one line naming the file, the plan already in RUN
    stays, and the next plan (--force: the input did change) finishes."""
    corpus = write_corpus(tmp_path / "c.jsonl", 6000)
    run = tmp_path / "run"
    assert run_cli(*plan_args(tmp_path, write_corpus(tmp_path / "old.jsonl", 3), run), cwd=REPO).returncode == 0
    before = (run / "manifest.json").read_bytes()
    proc = subprocess.Popen(plan_command(tmp_path, corpus, run, "--force"), cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not list(run.glob(".plan-tmp-*/shards/000100.jsonl.zst")) and time.monotonic() < deadline:
        time.sleep(0.02)
    with open(corpus, "ab") as handle:  # the reader is past line 100: what it read is now a prefix
        handle.write(orjson.dumps({"id": "late", "text": "a document written while planning"}) + b"\n")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"input {corpus} changed" in lines[0] and "plan again" in lines[0], stderr
    assert (run / "manifest.json").read_bytes() == before and not list(run.glob(".plan-tmp-*"))
    assert run_cli(*plan_args(tmp_path, corpus, run, "--force"), cwd=REPO).returncode == 0
    assert read_json(run / "manifest.json")["documents"] == 6001


def test_an_input_removed_while_it_is_planned_fails_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcsynth.errors import InputError
    from hpcsynth.plan import scan

    first = write_corpus(tmp_path / "in" / "a.jsonl", 5, prefix="a")
    second = write_corpus(tmp_path / "in" / "b.jsonl", 5, prefix="b")
    real = scan.read_file

    def read_file(path: Path, *args, **kwargs):
        if path.name == "b.jsonl":
            first.unlink()  # a.jsonl was read; now it is gone
        return real(path, *args, **kwargs)

    monkeypatch.setattr(scan, "read_file", read_file)
    run = RunDir(tmp_path / "run")
    with pytest.raises(InputError, match=f"input {first} was removed while it was being planned"):
        plan_corpus(fake_config(tmp_path), run, [str(first), str(second)], jobs=1)
    assert not run.manifest_path.exists() and not (tmp_path / "run").exists()


def test_a_full_disk_fails_the_plan_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A real full filesystem (a 1 MB tmpfs): the shard writes and fsyncs that hit it name no file, so the
    planner says where and what it was planning, in one line, and removes what it wrote."""
    with small_tmpfs(tmp_path / "small") as small:
        corpus = write_corpus(tmp_path / "c.jsonl", 2000)  # a shard a document: 2,000 files of >= 4 KB
        # A process of its own: the planner that fails here leaves its shard files open until it exits,
        # and an in-process call would keep the tmpfs busy (umount: target is busy).
        done = run_process(*plan_args(tmp_path, corpus, small / "run"), cwd=REPO)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert f"no space left on the filesystem of {small / 'run'}" in lines[0] and "plan again" in lines[0]
        assert not (small / "run").exists()


def test_killed_plan_leaves_no_plan_and_the_next_one_finishes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 6000)
    run = tmp_path / "run"
    proc = subprocess.Popen(plan_command(tmp_path, corpus, run), cwd=REPO)
    deadline = time.monotonic() + 60
    while not list(run.glob(".plan-tmp-*/shards/000100.jsonl.zst")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "manifest.json").exists() and not (run / "shards").exists(), "nothing looks planned"
    with pytest.raises(RunError, match="has no manifest.json"):
        RunDir(run).manifest()
    done = run_cli(*plan_args(tmp_path, corpus, run), cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "fingerprint", "fingerprint.json", "manifest.json",
                                                     "manifest.rows.jsonl", "plan", "shards"]
    assert RunDir(run).shard_count() == 6000


def test_second_planner_on_the_same_run_is_refused(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 4000)
    run = tmp_path / "run"
    first = subprocess.Popen(plan_command(tmp_path, corpus, run), cwd=REPO)
    deadline = time.monotonic() + 60
    while not (run / ".plan.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(plan_command(tmp_path, corpus, run), cwd=REPO, capture_output=True, text=True)
    assert first.wait(120) == 0
    if second.returncode == 0:  # the first finished before the second looked: then it found the same plan
        assert "already planned with this config" in second.stdout
    else:
        assert second.returncode == 2 and "another `hpcsynth plan` is writing" in second.stderr
        assert second.stderr.count("\n") == 1
    assert RunDir(run).shard_count() == 4000


def test_stale_lock_of_a_dead_planner_is_taken_over(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run.root / ".plan.lock").write_text(f"{os.uname().nodename}:{dead.pid}\n")
    assert plan_corpus(fake_config(corpus), run, jobs=1).documents == 5
    assert not (run.root / ".plan.lock").exists()


def test_hostile_file_names(tmp_path: Path) -> None:
    odd = tmp_path / "in" / "we ird [1] 'quote' \"dq\" ünï.jsonl"
    write_corpus(odd, 3)
    raw = os.fsencode(str(tmp_path / "in")) + b"/bad-\xff-name.jsonl"
    with open(raw, "wb") as handle:
        handle.write(b'{"text": "no id, non-UTF-8 file name"}\n')
    run = RunDir(tmp_path / "run")
    plan = plan_corpus(fake_config(tmp_path), run, [str(tmp_path / "in")], jobs=1)
    docs = [d for s in range(plan.shards) for d in read_jsonl_zst(run.shard_path(s))]
    assert plan.documents == 4 and "bad-\\xff-name.jsonl:1" in {d["id"] for d in docs}
    # a file whose name looks like a glob is taken literally when it exists
    literal = plan_corpus(fake_config(tmp_path), RunDir(tmp_path / "literal"), [str(odd)], jobs=1)
    assert literal.documents == 3
    assert sum(1 for d in docs if d["meta"]["source"].endswith("ünï.jsonl")) == 3


@pytest.mark.parametrize("policy, kept", [("keep_first", ["a", "b", "c", "d"]), ("reject", ["b", "d"])])
@pytest.mark.parametrize("sort", ["numpy buckets", "python"])
def test_duplicates_across_groups_in_several_buckets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     policy: str, kept: list[str], sort: str) -> None:
    if sort == "numpy buckets":  # as a huge corpus would have: numpy, several buckets
        monkeypatch.setattr(duplicates, "SMALL_IDS", 0)
        monkeypatch.setattr(duplicates, "BUCKET_BYTES", 64)
    (tmp_path / "in").mkdir()
    for name, ids in (("1.jsonl", "a b a c"), ("2.jsonl", "c d a")):
        (tmp_path / "in" / name).write_bytes(b"".join(orjson.dumps({"id": i, "text": f"text of {i} {n}"}) + b"\n"
                                                      for n, i in enumerate(ids.split())))
    run = RunDir(tmp_path / "run")
    config = fake_config(tmp_path, plan={"duplicate_ids": policy, "max_reject_rate": 1.0, "shard_docs": 2})
    plan = plan_corpus(config, run, [str(tmp_path / "in")], jobs=2)
    manifest = read_json(run.manifest_path)
    docs = [d for s in run.manifest_rows() for d in read_jsonl_zst(run.root / s["path"])]
    assert [d["id"] for d in docs] == kept and manifest["documents"] == len(kept) == plan.documents
    assert run.shard_ids() == [s["id"] for s in run.manifest_rows()] == list(range(plan.shards))  # 0..N-1
    for shard in run.manifest_rows():  # rewritten shards: checksums, sizes and counts follow
        assert sha256_file(run.root / shard["path"]) == shard["sha256"]
        assert len(list(read_jsonl_zst(run.root / shard["path"]))) == shard["documents"]
    rejects = [orjson.loads(l) for l in (run.root / "plan" / "rejects.jsonl").read_bytes().splitlines()]
    assert all(r["reason"].startswith("duplicate id") for r in rejects) and len(rejects) == 7 - len(kept)
    assert sum(i["documents"] for i in manifest["inputs"]) == len(kept)


@pytest.mark.parametrize("policy", ["keep_first", "reject"])
@pytest.mark.parametrize("ids, expected", [(40, {"keep_first": 360, "reject": 400}),  # runs of 2..20 equal ids
                                           (399, {"keep_first": 1, "reject": 2}),  # one id twice, the last
                                           (400, {"keep_first": 0, "reject": 0})])  # every id once
def test_small_plans_find_the_same_duplicates_without_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            policy: str, ids: int, expected: dict) -> None:
    """The plain-Python check of a small plan's ids (a set first, a sort when the set finds a repeat) and
    numpy's bucketed sort remove the same sources."""
    import random

    from hpcsynth.plan.scan import ID_RECORD

    rng = random.Random(7)
    (tmp_path / "ids").mkdir()
    hashes = [rng.randbytes(16) for _ in range(ids)]
    # 400 sources: drawn from the ids, or (ids >= 399) each id in turn, the 400th repeating the 399th
    order = iter([rng.choice(hashes) for _ in range(400)] if ids < 399 else hashes + hashes[-1:] * (400 - ids))
    group_docs = []
    for group in range(5):
        records, doc = bytearray(), 0
        for pos in range(80):
            parts = rng.randint(1, 3)
            records += ID_RECORD.pack(next(order), doc, parts, group % 3, pos)
            doc += parts
        (tmp_path / "ids" / f"{group:06d}.bin").write_bytes(records)
        group_docs.append(doc)
    small = duplicates.find_duplicates(tmp_path, 5, group_docs, policy)
    monkeypatch.setattr(duplicates, "SMALL_IDS", 0)
    monkeypatch.setattr(duplicates, "BUCKET_BYTES", 1000)  # several buckets
    large = duplicates.find_duplicates(tmp_path, 5, group_docs, policy)
    assert small == large and len(small) == expected[policy]
    assert [r.doc for r in small] == sorted(r.doc for r in small)


def test_a_failing_pool_worker_fails_the_plan_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcsynth.plan import scan

    for part in range(4):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 20, prefix=f"p{part}")
    real = scan.write_spilled

    def broken(tmp, job, held=None):  # the forked workers inherit this: group 1 hits a full disk
        if job.index == 1:
            raise OSError(28, "No space left on device")
        return real(tmp, job, held)

    monkeypatch.setattr("hpcsynth.plan.parallel.write_spilled", broken)
    run = RunDir(tmp_path / "run")
    started = time.monotonic()
    with pytest.raises(RunError, match=f"no space left on the filesystem of {run.root} .*nothing was planned"):
        plan_corpus(fake_config(tmp_path, plan={"group_mb": 0}), run, [str(tmp_path / "in")], jobs=3)
    assert time.monotonic() - started < 60, "the workers waiting behind the failed group give up"
    assert not run.root.exists(), "nothing left behind, not even the run directory it created"
