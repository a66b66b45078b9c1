"""Claims, worker start and heartbeats at a campaign's scale, where metadata calls are what runs out.

An outside simulation of a 339,000-shard campaign with 1,000 workers on one parallel filesystem found:
a busy probe created, fsynced, linked and unlinked a temporary file before it saw the lease was taken;
every worker started by opening every done marker and parsing the whole manifest; every heartbeat was
a temp file, an fsync, a rename and a directory fsync per open shard. Each test here fails on that code.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth import locks
from hpcsynth.config import load_config
from hpcsynth.execute.launch import set_aside_bad_markers
from hpcsynth.generate import shard as shard_module
from hpcsynth.generate.clock import TaskClock
from hpcsynth.generate.engines.fake import FakeEngine
from hpcsynth.generate.lease import Lease, checked_record, is_stale, new_owner, read_lease
from hpcsynth.generate.pull import pull_shards, shards_to_try
from hpcsynth.generate.shard import ShardTask
from hpcsynth.generate.worker import ConfigChanged, WorkerSession, run_shard
from hpcsynth.prompts import load_prompts
from hpcsynth.rundir import RunDir

from conftest import planned_fake_run


@pytest.fixture
def opens(monkeypatch) -> list[tuple[str, int]]:
    """Every os.open of this process while the test runs: (path, flags)."""
    seen: list[tuple[str, int]] = []
    real = os.open

    def spy(path, flags, *args, **kwargs):
        seen.append((os.fspath(path), flags))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return seen


def test_a_busy_probe_creates_no_file(tmp_path: Path, opens) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()
    holder = Lease(run.lease_path(0), "elsewhere:1:1:holder", 300)
    assert holder.acquire()
    before = os.stat(run.lease_path(0))
    prompts, digest = load_prompts(config), run.fingerprint()
    opens.clear()
    opened = ShardTask.open(run, 0, config, new_owner(), prompts, digest)
    assert getattr(opened, "state", None) == "busy"
    assert not [p for p, flags in opens if flags & os.O_CREAT], "a busy probe creates nothing"
    assert [p for p, _ in opens] == [str(run.lease_path(0))], "one open: the lease, read"
    assert sorted(p.name for p in run.work_dir(0).iterdir()) == ["lease.json"]
    after = os.stat(run.lease_path(0))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_worker_start_skips_done_markers_by_name_and_opens_none(tmp_path: Path, opens) -> None:
    run = planned_fake_run(tmp_path, docs=4, shard_docs=1)
    run.done_dir.mkdir(parents=True)
    for shard in (0, 2):  # markers that cannot be parsed: their names alone say "done"
        run.done_path(shard).write_bytes(b"\x00not a marker")
    opens.clear()
    todo = shards_to_try(run, None, False, new_owner())
    assert sorted(todo) == [1, 3]
    assert not [p for p, _ in opens if "/done/" in p or "/outputs/" in p], "no marker or output opened"
    results = pull_shards(run.root, engine_factory=FakeEngine)
    assert sorted((r.shard, r.state) for r in results) == [(1, "done"), (3, "done")]
    assert not [p for p, _ in opens if p.endswith(("/done/000000.json", "/done/000002.json"))]


def test_workers_start_at_offsets_of_their_own(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=40, shard_docs=1)
    lists = [shards_to_try(run, None, False, new_owner()) for _ in range(8)]
    assert all(sorted(todo) == list(range(40)) for todo in lists)
    assert len({todo[0] for todo in lists}) > 1, "eight workers do not all start at shard 0"
    assert all(todo[todo.index(0):] + todo[:todo.index(0)] == list(range(40)) for todo in lists), \
        "each goes round the shards in order from its offset"


def test_heartbeats_renewals_and_task_clocks_write_in_place(tmp_path: Path, monkeypatch) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()
    session = WorkerSession(run, FakeEngine(config), config, new_owner())
    task = ShardTask.open(run, 0, config, session.owner, session.prompts, session.digest)
    assert isinstance(task, ShardTask)
    clock = TaskClock(run, "w1", tick_s=60)
    session._write_heartbeat(task)  # the first beat may create the heartbeat file
    clock.write()
    files = [run.lease_path(0), run.heartbeat_path(0), run.task_path("w1")]
    inodes = [os.stat(p).st_ino for p in files]
    sizes = [os.stat(p).st_size for p in files]

    def refuse(*args, **kwargs):
        raise AssertionError("a heartbeat wrote a temp file, renamed or fsynced")

    for name in ("fsync", "replace", "rename", "link", "unlink"):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr("tempfile.mkstemp", refuse)
    renewed = [read_lease(run.lease_path(0))["renewed"]]
    for _ in range(3):
        time.sleep(0.01)
        session._write_heartbeat(task)
        clock.write(shards_done=1)
        renewed.append(read_lease(run.lease_path(0))["renewed"])
    monkeypatch.undo()
    assert renewed == sorted(renewed) and len(set(renewed)) == 4, "each beat renewed the lease"
    assert [os.stat(p).st_ino for p in files] == inodes, "rewritten in place, not replaced"
    assert [os.stat(p).st_size for p in files] == sizes, "never shorter (nor longer)"
    beat = orjson.loads(run.heartbeat_path(0).read_bytes())  # any JSON reader reads them
    assert beat["shard"] == 0 and beat["owner"] == session.owner
    assert orjson.loads(run.task_path("w1").read_bytes())["shards_done"] == 1
    assert sorted(p.name for p in run.work_dir(0).iterdir()) == ["heartbeat.json", "lease.json", "records.jsonl"]
    task.close()


def test_a_torn_lease_never_judges_a_live_holder_stale(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "lease.json"
    now = time.time()
    record = {"owner": "elsewhere:1:1:x", "renewed": now - 500.0, "task": ""}
    old, new = checked_record(record, 128), checked_record({**record, "renewed": now}, 128)
    at = old.index(b',"check"')
    torn = old[:at] + new[at:]  # the old time, the new write's checksum: read mid-write
    path.write_bytes(torn)
    assert orjson.loads(torn)["renewed"] == now - 500.0, "as JSON it parses, with a time long past"
    monkeypatch.setattr(locks, "TORN_RETRY_S", (0.0, 0.0))
    held = read_lease(path)
    assert not is_stale(path, held, timeout=300), "its mtime is its holder's write in progress: alive"
    os.utime(path, (now - 600, now - 600))  # torn and left so ten minutes ago: a holder that died mid-write
    assert is_stale(path, read_lease(path), timeout=300)
    # A torn read followed by a whole one: the reread gives the true time.
    reads = iter([torn, new])
    monkeypatch.setattr(locks, "_read_bounded", lambda p: (next(reads), None))
    assert read_lease(path)["renewed"] == now


def test_the_fingerprint_is_read_again_only_when_its_file_changes(tmp_path: Path, monkeypatch) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()
    session = WorkerSession(run, FakeEngine(config), config, new_owner())
    reads = {"n": 0}
    real = RunDir.fingerprint

    def counted(self) -> str:
        reads["n"] += 1
        return real(self)

    monkeypatch.setattr(RunDir, "fingerprint", counted)
    for _ in range(5):
        session._check_config()
    assert reads["n"] <= 1, "a stat each check; the file read once"
    text = run.fingerprint_path.read_text()
    tmp = run.fingerprint_path.with_name("fp.tmp")
    tmp.write_text(text.replace(text[0], "0" if text[0] != "0" else "1", 1))
    os.replace(tmp, run.fingerprint_path)  # what launch --config does: a new file renamed over it
    with pytest.raises(ConfigChanged):
        session._check_config()
    assert session.config_changed


def test_launch_sets_aside_done_markers_of_another_fingerprint(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=3, shard_docs=1)
    config = run.config()
    assert run_shard(run, 0, FakeEngine(config), config, new_owner()).state == "done"
    assert run_shard(run, 1, FakeEngine(config), config, new_owner()).state == "done"
    marker = orjson.loads(run.done_path(1).read_bytes())
    run.done_path(1).write_bytes(orjson.dumps({**marker, "fingerprint": "f" * 64}))  # of an earlier config
    assert set_aside_bad_markers(run, "size") == [], "not a damage to report: not done under this config"
    assert run.done_ids() == {0}
    assert [p.name.split(".")[0] for p in run.set_aside_dir.glob("*.done.json")] == ["000001"]


def test_a_commit_that_races_a_config_change_sets_its_marker_aside(tmp_path: Path, monkeypatch) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()
    real = shard_module._commit

    def commit_then_change(task, digest, step_downs):
        marker = real(task, digest, step_downs)
        # launch --config NEW --force adopts a config now, after this worker's last config check
        run.fingerprint_path.write_text("e" * 64 + "\n")
        return marker

    monkeypatch.setattr(shard_module, "_commit", commit_then_change)
    session = WorkerSession(run, FakeEngine(config), config, new_owner())
    results = session.work([0])
    assert [r.state for r in results] == ["busy"]
    assert run.done_ids() == set(), "no marker of the old config left among the done ones"
    assert list(run.set_aside_dir.glob("000000.*.done.json"))
    assert not run.lease_path(0).exists()


def test_a_worker_lists_done_names_again_when_its_list_goes_stale(tmp_path: Path, monkeypatch) -> None:
    run = planned_fake_run(tmp_path, docs=60, shard_docs=1)
    config = run.config()
    todo = shards_to_try(run, None, False, new_owner())
    for shard in range(40, 60):  # another worker commits these after this one listed its shards
        assert run_shard(run, shard, FakeEngine(config), config, new_owner()).state == "done"
    probed: list[int] = []
    real = ShardTask.open.__func__

    def spy(cls, run_, shard, *args, **kwargs):
        probed.append(shard)
        return real(cls, run_, shard, *args, **kwargs)

    monkeypatch.setattr(ShardTask, "open", classmethod(spy))
    results = WorkerSession(run, FakeEngine(config), config, new_owner()).work(sorted(todo))
    assert sorted(r.shard for r in results) == list(range(60))
    assert [r.shard for r in results if r.state == "done"] == list(range(40))
    assert len([s for s in probed if s >= 40]) == 16, "16 found done, then the rest dropped by name"


def test_workers_that_know_their_place_spread_evenly_and_a_lone_one_starts_first(tmp_path: Path) -> None:
    from hpcsynth.generate.pull import worker_position

    run = planned_fake_run(tmp_path, docs=40, shard_docs=1)
    starts = [shards_to_try(run, None, False, new_owner(), (i, 4))[0] for i in range(4)]
    assert starts == [0, 10, 20, 30], "worker i of 4 starts i/4 of the way round"
    assert shards_to_try(run, None, False, new_owner(), (0, 1))[0] == 0, "a lone worker starts at the first shard"
    # Where the place comes from: the GPU slot of a task, the array task, an srun rank; else nobody says.
    assert worker_position({"HPCSYNTH_GPU_SLOT": "1", "HPCSYNTH_GPU_SLOTS": "2", "SLURM_ARRAY_TASK_ID": "7",
                            "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}) == (5, 8)
    assert worker_position({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == (3, 8)
    assert worker_position({"HPCSYNTH_GPU_SLOT": "0", "HPCSYNTH_GPU_SLOTS": "1"}) == (0, 1)
    assert worker_position({}) is None and worker_position({"SLURM_PROCID": "9", "SLURM_NTASKS": "8"}) is None
