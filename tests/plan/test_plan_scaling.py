"""--jobs N: enough groups for every process, fsyncs left to the background yet all done before the
manifest, and a failed fsync in a pool worker still fails the plan."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcsynth.files import read_json
from hpcsynth.plan import manifest as plan_manifest, planner, plan_corpus
from hpcsynth.rundir import MANIFEST_ROWS, RunDir

from conftest import fake_config, outlived, write_corpus

MB = 1 << 20


def test_group_size_gives_small_plans_enough_groups() -> None:
    config = fake_config(Path("."))  # plan.group_mb 8
    files = lambda n, size: [{"bytes": size}] * n  # noqa: E731
    assert planner.group_bytes(config, files(8, 3_500_000)) == 1_750_000  # 28 MB: each file alone
    assert planner.group_bytes(config, files(3, 20_000)) == MB  # under 16 MB: never under 1 MB
    assert planner.group_bytes(config, files(1000, 100 * MB)) == 8 * MB  # big plans: plan.group_mb
    no_groups = fake_config(Path("."), plan={"group_mb": 0})
    assert planner.group_bytes(no_groups, files(8, 3_500_000)) == 0  # 0: each file alone, as before


def test_small_plan_is_split_for_the_pool_and_gives_the_same_bytes(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The corpus scaled down: 6 files of ~12 KB with a 1 KB floor stand for 6 files of 3.5 MB.
    monkeypatch.setattr(planner, "MIN_GROUP_BYTES", 1024)
    for part in range(6):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 40, prefix=f"p{part}")
    config = fake_config(tmp_path, plan={"shard_docs": 15})
    plans = [plan_corpus(config, RunDir(tmp_path / f"run-{jobs}"), [str(tmp_path / "in")], jobs=jobs)
             for jobs in (1, 2)]
    assert plans[0].summary["input_groups"] == 6, "one group per file, not one group for all 72 KB"
    shards = [sorted((tmp_path / f"run-{jobs}" / "shards").iterdir()) for jobs in (1, 2)]
    assert [p.read_bytes() for p in shards[0]] == [p.read_bytes() for p in shards[1]]
    assert read_json(tmp_path / "run-1" / "manifest.json") == read_json(tmp_path / "run-2" / "manifest.json")
    assert (tmp_path / "run-1" / MANIFEST_ROWS).read_bytes() == (tmp_path / "run-2" / MANIFEST_ROWS).read_bytes()
    # The pool froze the collector's objects for its fork only: this process collects them again.
    assert gc.get_freeze_count() == 0


def test_small_plans_import_no_numpy_and_keep_freed_memory(tmp_path: Path) -> None:
    """numpy's import (~0.1-0.3 s) is left to plans past SMALL_IDS sources, and the heap is kept (glibc)."""
    write_corpus(tmp_path / "in.jsonl", 30)
    with open(tmp_path / "in.jsonl", "ab") as handle:  # one id twice
        handle.write(b'{"id": "doc-3", "text": "the same id again"}\n')
    script = (f"import sys; from hpcsynth.plan import plan_corpus, heap; from hpcsynth.rundir import RunDir; "
              f"from conftest import fake_config; from pathlib import Path; "
              f"p = plan_corpus(fake_config(Path({str(tmp_path)!r})), RunDir(Path({str(tmp_path / 'run')!r})), "
              f"[{str(tmp_path / 'in.jsonl')!r}], jobs=1); "
              f"print(p.summary['rejected_by_reason'], 'numpy' in sys.modules, heap.keep_freed_memory())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], check=True)
    rejected, numpy, kept = done.stdout.rsplit(" ", 2)
    assert "duplicate id" in rejected and numpy == "False" and kept.strip() == "True"


def _logging_fsync(log: Path, fail: bool = False):
    real = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(".jsonl.zst"):
            if fail:
                raise OSError(5, "Input/output error")
            time.sleep(0.03)  # a slow disk: a deferred fsync is still running when the group returns
        real(fd)
        with open(log, "a") as handle:
            handle.write(f"fsync {Path(target).name}\n")
    return fsync


def test_pool_workers_fsync_every_shard_before_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for part in range(4):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 20, prefix=f"p{part}")
    log = tmp_path / "log"
    monkeypatch.setattr(os, "fsync", _logging_fsync(log))  # the forked workers inherit it
    real_write = plan_manifest.atomic_write_chunks

    def write_chunks(path: Path, chunks) -> None:
        if path.name == MANIFEST_ROWS:  # the manifest's first file (its header comes after)
            with open(log, "a") as handle:
                handle.write("manifest\n")
        real_write(path, chunks)

    monkeypatch.setattr(plan_manifest, "atomic_write_chunks", write_chunks)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(tmp_path, plan={"group_mb": 0, "shard_docs": 3}), run, [str(tmp_path / "in")], jobs=2)
    events = log.read_text().splitlines()
    shards = {Path(row["path"]).name for row in run.manifest_rows()}
    assert len(shards) == 28 and events.count("manifest") == 1
    synced = {e.split()[1] for e in events[:events.index("manifest")] if e.startswith("fsync")}
    assert shards <= synced, f"not on disk before the manifest: {sorted(shards - synced)[:5]}"


def test_a_failed_fsync_in_a_pool_worker_fails_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for part in range(4):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 20, prefix=f"p{part}")
    monkeypatch.setattr(os, "fsync", _logging_fsync(tmp_path / "log", fail=True))
    run = RunDir(tmp_path / "run")
    with pytest.raises(OSError, match="Input/output error"):
        plan_corpus(fake_config(tmp_path, plan={"group_mb": 0, "shard_docs": 3}), run, [str(tmp_path / "in")],
                    jobs=2)
    assert not run.root.exists(), "no plan, nothing that looks like one"


def test_a_pool_worker_killed_between_groups_fails_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers leave fsyncs to the background; one killed between groups (the OOM killer, kill -9) never
    confirms them, and held a group the others wait for: the plan fails at once, in one line, and is not
    committed. (multiprocessing.Pool started a new worker and waited for ever on the dead one's group.)"""
    import signal

    from hpcsynth.errors import RunError
    from hpcsynth.plan import parallel

    for part in range(4):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 20, prefix=f"p{part}")
    real = parallel.scan_group

    def scan_group(job, *args):  # the forked workers inherit this: the worker that takes group 2 dies there
        if job.index == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job, *args)

    monkeypatch.setattr(parallel, "scan_group", scan_group)
    run = RunDir(tmp_path / "run")
    started = time.monotonic()
    with pytest.raises(RunError, match="a plan worker process ended without a word .* plan again"):
        plan_corpus(fake_config(tmp_path, plan={"group_mb": 0, "shard_docs": 3}), run, [str(tmp_path / "in")],
                    jobs=2)
    assert time.monotonic() - started < 60
    assert not run.root.exists()


SLOW_PLAN = """
import os, sys, time
from pathlib import Path
from hpcsynth.plan import parallel
from hpcsynth.cli.app import main
real = parallel.scan_group
def scan_group(job, *args):  # a long group: a worker is still in it when the planner dies
    (Path(sys.argv[1]) / f"worker-{os.getpid()}").touch()
    time.sleep(120)
    return real(job, *args)
parallel.scan_group = scan_group
sys.exit(main(sys.argv[2:]))
"""


def test_pool_workers_end_with_a_killed_planner(tmp_path: Path) -> None:
    """kill -9 of the planner (or a time limit's SIGKILL) ends its pool workers at once: they would otherwise
    read their groups on to the end (here: sleep), into a plan that is gone."""
    for part in range(4):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 20, prefix=f"p{part}")
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake, path: fake-model}\nplan: {group_mb: 0}\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PLAN, str(marks), "plan", str(config), "--run",
                             str(tmp_path / "run"), "--input", str(tmp_path / "in"), "--jobs", "2"],
                            cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = [int(mark.name.split("-")[1]) for mark in marks.iterdir()]
    assert len(workers) == 2, "both pool workers are in a group"
    proc.kill()
    proc.wait()
    assert not (alive := outlived(workers)), f"pool workers {alive} outlived the planner"


MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from hpcsynth.plan import duplicates, parallel, plan_corpus
from hpcsynth.rundir import RunDir
from conftest import fake_config
# The bounds scaled down, so that a few MB of ids show: duplicates sorted 1 MB at a time (numpy's way for
# every plan), pool workers holding 2 MB of documents before they spill.
duplicates.BUCKET_BYTES, duplicates.SMALL_IDS, parallel.HOLD_BYTES = 1 << 20, 0, 2 << 20
root, corpus, jobs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
config = fake_config(root, plan={"shard_docs": 10**6, "shard_tokens": 10**9, "group_mb": 1024})
plan_corpus(config, RunDir(root / f"run-{jobs}-{Path(corpus).name}"), [corpus], jobs=jobs)
# VmHWM, not RUSAGE_SELF: a process's ru_maxrss keeps the peak of the process it was exec'd from (pytest's)
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_peak_memory_is_flat_as_the_corpus_grows(tmp_path: Path, jobs: int) -> None:
    """Two input files, one group each (as one huge file would be): 4x the documents, the same peak RSS in
    the planning process and in its pool workers. Each group's id log (40 bytes a source) and a spilled
    group's sizes (32 bytes a document) go to disk as they come; duplicates are read in bounded chunks.
    Before, 100,000 -> 400,000 documents took 6 MB more (--jobs 1), 12 MB in the parent and 18 MB in each
    worker (--jobs 2)."""
    import orjson

    peaks = []
    for documents in (100_000, 400_000):
        corpus = tmp_path / f"in-{documents}"
        corpus.mkdir()
        for part in range(2):
            with open(corpus / f"p{part}.jsonl", "wb") as handle:
                for i in range(documents // 2):
                    handle.write(orjson.dumps({"id": f"p{part}-{i}", "text": f"a tiny document {i}"}) + b"\n")
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), str(corpus), str(jobs)],
                              capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
        peaks.append([int(kb) >> 10 for kb in done.stdout.split()])  # MB: this process, its largest worker
    (small_self, small_worker), (large_self, large_worker) = peaks
    assert large_self - small_self <= 3, peaks
    if jobs > 1:
        # A worker's peak moves a few MB with how the groups fall between the two workers, which a loaded
        # machine (the lane runs on parallel workers) shifts; growth with the documents was +18 MB.
        assert large_worker - small_worker <= 6, peaks
    assert all(len(list((tmp_path / f"run-{jobs}-in-{n}" / "shards").iterdir())) == 2 for n in (100_000, 400_000))
