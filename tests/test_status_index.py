"""status reads what the done index gained, not every done marker, and still says what the markers say:
a marker the index vouches for is never opened, one set aside drops out, one without a line counts, a
damaged line or cache changes no number; `--watch` refreshes and `estimate RUN` read the run once."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import orjson
import pytest

from hpcsynth.generate.index import append_done, index_dir
from hpcsynth.rundir import RunDir

from conftest import run_cli

SHARDS = 5000


@pytest.fixture(scope="module")
def planned_5k(tmp_path_factory) -> Path:
    """A plan of SHARDS one-document shards (2 prompts); each test copies what it changes."""
    root = tmp_path_factory.mktemp("plan5k")
    with open(root / "corpus.jsonl", "w") as handle:
        for i in range(SHARDS):
            handle.write(json.dumps({"id": f"d{i}", "text": f"document {i} body"}) + "\n")
    (root / "one.yaml").write_text("prompts: [faq, math]\nplan: {shard_docs: 1}\n"
                                   "model: {engine: fake, path: fake-model}\n")
    run = root / "run"
    proc = run_cli("plan", str(root / "one.yaml"), "--run", str(run), "--input", str(root / "corpus.jsonl"))
    assert proc.returncode == 0, proc.stderr
    return run


def fresh(planned_5k: Path, tmp_path: Path) -> RunDir:
    """A copy of the plan whose shard files are links (the plan is read, never changed)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(planned_5k, run, copy_function=os.link)
    return RunDir(run)


def commit(run: RunDir, shard: int, tokens: int = 7, index: bool = True, when: float | None = None) -> dict:
    """Commit a shard as a worker's _commit does: output, done marker, then (unless index=False) its line."""
    output = run.output_path(shard)
    output.parent.mkdir(exist_ok=True)
    output.write_bytes(b"x" * 11)
    marker = {"shard": shard, "fingerprint": run.fingerprint(), "output": output.name, "sha256": "0" * 64,
              "bytes": 11, "records": 2, "rejected": 0, "documents": 1, "completion_tokens": tokens,
              "prompt_tokens": 5, "step_downs": [], "resumed_records": 0, "committed": when or time.time(),
              "by_prompt": {"faq": {"records": 1, "rejected": 0, "completion_tokens": tokens - 3},
                            "math": {"records": 1, "rejected": 0, "completion_tokens": 3}}}
    run.done_dir.mkdir(exist_ok=True)
    tmp = run.done_dir / f".{shard}.tmp"
    tmp.write_bytes(orjson.dumps(marker))
    os.replace(tmp, run.done_path(shard))
    if index:
        append_done(run, marker)
    return marker


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every done marker status opens (status reads markers through files.read_regular)."""
    import hpcsynth.status.done as done

    seen: list[str] = []
    real = done.read_regular

    def counting(path, *args):
        seen.append(str(path))
        return real(path, *args)

    monkeypatch.setattr(done, "read_regular", counting)
    return seen


def status_of(run: RunDir) -> dict:
    from hpcsynth.status.collect import collect_status

    return collect_status(run, slurm=False).to_json()


def test_status_opens_no_marker_the_index_vouches_for(planned_5k: Path, tmp_path: Path, opened) -> None:
    run = fresh(planned_5k, tmp_path)
    for shard in range(SHARDS):
        commit(run, shard)
    status = status_of(run)
    assert status["shards"]["done"] == SHARDS and status["tokens_done"] == 7 * SHARDS
    assert status["records_done"] == 2 * SHARDS and status["docs_done"] == SHARDS
    assert opened == []  # the old status opened all 5,000
    assert status_of(run) == {**status, "timeline": status_of(run)["timeline"]} and opened == []


def test_markers_without_a_line_count_and_set_aside_ones_drop_out(planned_5k: Path, tmp_path: Path,
                                                                  opened) -> None:
    run = fresh(planned_5k, tmp_path)
    for shard in range(20):
        commit(run, shard)
    assert status_of(run)["shards"]["done"] == 20  # now cached in RUN/index/status-cache
    commit(run, 20, tokens=100, index=False)  # an older worker, or a lost line
    status = status_of(run)
    assert status["shards"]["done"] == 21 and status["tokens_done"] == 20 * 7 + 100
    assert opened == [str(run.done_path(20))]
    run.set_aside_dir.mkdir()
    os.replace(run.done_path(3), run.set_aside_dir / "000003.1.done.json")  # what launch does to a bad one
    status = status_of(run)
    assert status["shards"]["done"] == 20 and status["tokens_done"] == 19 * 7 + 100
    # a marker replaced after its line was written (another inode) is read again, not taken from the line
    commit(run, 5, tokens=50, index=False)
    assert status_of(run)["tokens_done"] == 18 * 7 + 100 + 50


def test_damaged_or_forged_index_lines_and_cache_change_no_number(planned_5k: Path, tmp_path: Path) -> None:
    run = fresh(planned_5k, tmp_path)
    for shard in range(10):
        commit(run, shard)
    truth = status_of(run)
    line = orjson.loads(next(index_dir(run).glob("done-*.jsonl")).read_bytes().splitlines()[0])
    forged = [b"{not json\n", b'"a string"\n', b"\xff\xfe\n", b"x" * 100_000 + b"\n",
              orjson.dumps({**line, "records": -5}) + b"\n", orjson.dumps({**line, "records": 1e300}) + b"\n",
              orjson.dumps({**line, "completion_tokens": True}) + b"\n",
              orjson.dumps({**line, "shard": 10**9}) + b"\n", orjson.dumps({**line, "by_prompt": [1]}) + b"\n",
              # well formed, but for a marker with another inode: the marker is read instead
              orjson.dumps({**line, "ino": line["ino"] + 1, "completion_tokens": 10**6,
                            "committed": time.time() + 5}) + b"\n",
              b'{"v": 1, "shard": 3, "cut']
    (index_dir(run) / "done-forged.jsonl").write_bytes(b"".join(forged))
    assert status_of(run) == {**truth, "timeline": status_of(run)["timeline"]}
    cache = index_dir(run) / "status-cache"
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:-8] + b"\xff" * 8, lambda b: b"{}\n" + b,
                   lambda b: b.replace(b'"shards":5000', b'"shards":5001')):
        cache.write_bytes(damage(cache.read_bytes()))
        assert status_of(run)["tokens_done"] == truth["tokens_done"]
    assert run_cli("status", str(run.root), "--json").returncode == 0


def test_a_watch_refresh_reads_only_what_the_run_gained(planned_5k: Path, tmp_path: Path, opened,
                                                        monkeypatch) -> None:
    from hpcsynth.status import done
    from hpcsynth.status.collect import Watch, collect_run

    run = fresh(planned_5k, tmp_path)
    for shard in range(SHARDS - 10):
        commit(run, shard)
    watch = Watch()
    assert collect_run(run, slurm=False, watch=watch).status.shards.done == SHARDS - 10
    listings: list[tuple] = []
    stats: list[int] = []
    real_list, real_problem = done._list_markers, done.DoneTable.output_problem
    monkeypatch.setattr(done, "_list_markers", lambda *a: listings.append(a) or real_list(*a))
    monkeypatch.setattr(done.DoneTable, "output_problem",
                        lambda self, r, s: stats.append(s) or real_problem(self, r, s))
    for shard in range(SHARDS - 10, SHARDS - 5):
        commit(run, shard)
    status = collect_run(run, slurm=False, watch=watch).status
    assert status.shards.done == SHARDS - 5 and listings == [] and opened == []
    assert sorted(stats) == list(range(SHARDS - 10, SHARDS - 5))  # the new outputs only, each once
    # launch sets a marker aside while the watch runs: set-aside/ changed, so done/ is listed again
    run.set_aside_dir.mkdir()
    os.replace(run.done_path(7), run.set_aside_dir / "000007.1.done.json")
    assert collect_run(run, slurm=False, watch=watch).status.shards.done == SHARDS - 6 and len(listings) == 1


def test_piped_watch_prints_each_refresh_and_sleeps_between(monkeypatch) -> None:
    from rich.console import Console

    from hpcsynth.status import view
    from hpcsynth.status.runstatus import RunStatus, ShardCounts

    def status(done: int) -> RunStatus:
        from hpcsynth.status.runstatus import SlurmSummary, WorkerHours

        return RunStatus("RUN", "f" * 64, ShardCounts(0, 2 - done, 0, 0, 0, done, 2), 2, 1, done, done, 2, done,
                         1.0, None, [], [], [], [], 0.0, 0.0, 1, WorkerHours(0, 0, 0), 1, [], {},
                         SlurmSummary([], {}, 0, {}, "", []))

    frames = iter([status(0), status(1), status(2)])
    monkeypatch.setattr(view, "collect_run", lambda run, watch: type("C", (), {"status": next(frames)}))
    slept: list[float] = []
    monkeypatch.setattr(view.time, "sleep", slept.append)
    console = Console(file=io.StringIO(), width=80, force_terminal=False, record=True)
    view.watch_status(RunDir(Path("RUN")), 5.0, console)
    text = console.export_text()
    assert text.count("hpcsynth run RUN") == 3 and "done: all 2 shards" in text
    assert slept == [5.0, 5.0]


def test_estimate_reads_the_run_once(planned_5k: Path, tmp_path: Path, monkeypatch) -> None:
    import hpcsynth.status.account as account
    import hpcsynth.status.collect as collect
    import hpcsynth.study.measure as measure

    run = fresh(planned_5k, tmp_path)
    for shard in range(30):
        commit(run, shard, tokens=40)
    run.tasks_dir.mkdir()
    (run.tasks_dir / "w.json").write_text(json.dumps({"name": "w", "state": "finished", "generation_s": 10.0,
                                                      "tokens": 1200, "wall_s": 11.0, "gpus": 0}))
    calls = []
    real = collect.collect_run
    for module in (collect, account, measure):
        monkeypatch.setattr(module, "collect_run", lambda *a, **k: calls.append(a) or real(*a, **k))
    proc = run_cli("estimate", str(run.root), "--json")
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert len(calls) == 1  # the estimate, the account and the measured lengths share one read
    assert data["account"]["tokens_committed"] == 30 * 40
    faq = next(r for r in data["rows"] if r["prompt"] == "faq")
    assert faq["tokens_per_record"] == 37.0 and "30 done shard(s) (done markers)" in faq["length_source"]


def test_a_cold_status_stats_a_bounded_number_of_outputs(planned_5k: Path, tmp_path: Path, monkeypatch) -> None:
    """A cold call lists outputs/ once (a missing output shows at once) and checks the size of at most
    SIZE_CHECKS outputs a call, round robin, so a cut output shows within shards / SIZE_CHECKS calls."""
    from hpcsynth.status import done

    run = fresh(planned_5k, tmp_path)
    for shard in range(SHARDS):
        commit(run, shard)
    monkeypatch.setattr(done, "SIZE_CHECKS", 1000, raising=False)
    run.output_path(4321).unlink()  # missing before the first call
    run.output_path(4500).write_bytes(b"x" * 5)  # cut: its marker says 11 bytes
    stats: list[str] = []
    real_stat = os.stat

    def counting(path, *args, **kwargs):
        if f"{os.sep}outputs{os.sep}" in os.fsdecode(path):
            stats.append(os.fsdecode(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    redo_by_call = []
    for call in range(5):
        stats.clear()
        status = status_of(run)
        redo_by_call.append(sorted(r["shard"] for r in status["redo_shards"]))
        assert len(stats) <= 1000 + 2 * len(redo_by_call[-1]), (call, len(stats))  # the old status: 5,000
        assert status["shards"]["done"] == SHARDS - len(redo_by_call[-1])
    assert redo_by_call[0] == [4321]  # found by the listing, at once
    assert redo_by_call[-1] == [4321, 4500]  # its size checked by the 5th call (5,000 / 1,000)
    stats.clear()
    run.output_path(7).unlink()  # after its size was checked: the next listing (a cold table) finds it
    (index_dir(run) / "status-cache").unlink()
    assert sorted(r["shard"] for r in status_of(run)["redo_shards"]) == [7, 4321]  # 4500: sized again later


def test_a_user_who_cannot_write_the_run_keeps_the_cache_in_their_own(planned_5k: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """RUN not writable: the cache goes to $XDG_CACHE_HOME/hpcsynth/status/ (keyed by the run's real path
    and its manifest), is used by the next call, ignored when damaged, and only the newest are kept."""
    from hpcsynth.status import done, donecache

    run = fresh(planned_5k, tmp_path)
    for shard in range(300):
        commit(run, shard)
    real_write = donecache.atomic_write_chunks

    def read_only_run(path, chunks):
        if Path(path).resolve().is_relative_to(run.root.resolve()):
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, chunks)

    monkeypatch.setattr(donecache, "atomic_write_chunks", read_only_run)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "xdg" / "hpcsynth" / "status"
    folder.mkdir(parents=True)
    for n in range(12):  # older caches of other runs
        old = folder / f"{n:032x}.cache"
        old.write_bytes(b"old")
        os.utime(old, (1000 + n, 1000 + n))
    truth = status_of(run)
    assert truth["shards"]["done"] == 300 and not (index_dir(run) / "status-cache").exists()
    ours = [p for p in folder.iterdir() if p.read_bytes()[:1] == b"{"]
    assert len(ours) == 1 and len(list(folder.iterdir())) <= 8  # the old code wrote none
    parsed: list[int] = []
    real_parse = done._parse_canonical
    monkeypatch.setattr(done, "_parse_canonical", lambda *a: parsed.append(1) or real_parse(*a))
    assert status_of(run) == {**truth, "timeline": status_of(run)["timeline"]}
    assert parsed == []  # the index was read from where the user's cache stopped: nothing new
    ours[0].write_bytes(ours[0].read_bytes()[:-100])  # damaged: ignored, the index read again
    assert status_of(run)["tokens_done"] == truth["tokens_done"] and parsed


def test_index_lines_parsed_in_bulk_give_the_table_line_by_line_parsing_gives() -> None:
    """The column-wise parse (done._parse_canonical) and parse_line + _apply agree on every line: canonical
    ones, valid ones in another form (parse_line's), forged and damaged ones, and repeated shards."""
    import random

    import numpy as np

    from hpcsynth.generate.index import index_line, parse_line
    from hpcsynth.status.done import DoneTable

    rng = random.Random(7)
    prompts = ("faq", "math", "t\u00e9")
    shapes = [{"faq": {"records": 1, "rejected": 0, "completion_tokens": 4},
               "math": {"records": 2, "rejected": 1, "completion_tokens": 3}},
              {"math": {"records": 2, "rejected": 1, "completion_tokens": 3}}, {},
              {"t\u00e9": {"records": 1, "rejected": 0, "completion_tokens": 0}},
              {"math": {"records": 2, "rejected": 1, "completion_tokens": 3},
               "faq": {"records": 1, "rejected": 0, "completion_tokens": 4}},
              {"other": {"records": 1, "rejected": 0, "completion_tokens": 4}}]
    lines = []
    for _ in range(3000):
        marker = {"shard": rng.randint(0, 1200), "fingerprint": rng.choice(["a" * 64, "0123456789abcdef" * 4]),
                  "committed": rng.choice([time.time() + rng.random(), 1000, 0, 0.5, 99999999999.5, 1.0]),
                  "records": rng.randint(0, 10**6), "rejected": 0, "documents": 1,
                  "completion_tokens": rng.choice([0, 7, 12345678, 10**14, 10**15, 2**53]), "prompt_tokens": 5,
                  "bytes": 11, "by_prompt": rng.choice(shapes)}
        lines.append(index_line(marker, rng.choice([5, 6, 10**15, 2**53])))
    one = orjson.loads(lines[0])
    lines += [b"{not json\n", b"\n", b'"a"\n', b"\xff\n", orjson.dumps({**one, "records": -5}) + b"\n",
              orjson.dumps({**one, "shard": 10**9}) + b"\n", orjson.dumps({**one, "committed": 1e11}) + b"\n",
              orjson.dumps({**one, "records": 2**53 + 1}) + b"\n", orjson.dumps({**one, "records": True}) + b"\n",
              lines[0].replace(b'"records":', b'"records":0', 1), lines[0].replace(b'"shard":', b'"shard": ', 1),
              lines[0].replace(b"}}\n", b"},}\n"), orjson.dumps({**one, "extra": 1}) + b"\n",
              orjson.dumps({"x": 1, **one}) + b"\n", orjson.dumps({**one, "by_prompt": None}) + b"\n",
              lines[0][:-1] + b" \n", lines[0].replace(b'"v":1', b'"v":1.0')]
    rng.shuffle(lines)
    data = b"".join(lines)
    bulk, one_by_one = DoneTable(1000, prompts), DoneTable(1000, prompts)
    bulk._apply_lines(data + bytes(64), len(data))
    for line in data.split(b"\n")[:-1]:
        if line:
            one_by_one._apply(parse_line(line))
    assert bulk.damaged_lines == one_by_one.damaged_lines > 0
    for name, column in bulk.cols.items():
        other = one_by_one.cols[name]
        if name == "fp":  # indices into each table's own fingerprint list
            column = np.array([bulk.fingerprints[f] for f in column])[bulk.cols["state"] == 1]
            other = np.array([one_by_one.fingerprints[f] for f in other])[one_by_one.cols["state"] == 1]
        assert np.array_equal(column, other), name
