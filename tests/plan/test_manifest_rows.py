"""The manifest of layout 2: a small header (RUN/manifest.json) and a fixed-width row file a worker reads
one row of (RUN/manifest.rows.jsonl); a damaged or forged row is one line; a run of layout 1 is one line
with its fix, and `plan --force` moves it to layout 2 keeping its finished shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
import pytest

from hpcsynth import __version__
from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import LAYOUT_VERSION, MANIFEST_ROWS, RunDir

from conftest import fake_config, run_cli, write_corpus


def planned(tmp_path: Path, docs: int = 40, shard_docs: int = 4) -> tuple[RunDir, Path]:
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(corpus, plan={"shard_docs": shard_docs}), run, jobs=1)
    return run, corpus


def put_slot(run: RunDir, index: int, data: bytes) -> None:
    """Overwrite row `index` in place with `data` padded to the row width (the file keeps its size)."""
    width = read_json(run.manifest_path)["rows"]["width"]
    assert len(data) < width
    with open(run.manifest_rows_path, "r+b") as handle:
        handle.seek(index * width)
        handle.write(data + b" " * (width - 1 - len(data)) + b"\n")


def as_layout_1(run: RunDir) -> None:
    """The run as the hpcsynth before layout 2 left it: the rows inside manifest.json, no row file."""
    header = read_json(run.manifest_path)
    rows = list(run.manifest_rows())
    del header["rows"]
    atomic_write_json(run.manifest_path, {**header, "layout_version": 1, "shards": rows})
    run.manifest_rows_path.unlink()


def test_plan_writes_a_header_and_rows_any_jsonl_reader_reads(tmp_path: Path) -> None:
    run, _ = planned(tmp_path)
    header = read_json(run.manifest_path)
    assert "shards" not in header and header["layout_version"] == LAYOUT_VERSION == 2
    count, width = header["rows"]["count"], header["rows"]["width"]
    assert header["rows"]["file"] == MANIFEST_ROWS and count == 10 and width % 16 == 0
    data = run.manifest_rows_path.read_bytes()
    assert len(data) == count * width
    lines = data.splitlines()
    rows = [json.loads(line) for line in lines]  # plain JSONL: the padding is whitespace
    assert max(len(line.rstrip()) for line in lines) + 1 <= width < max(len(line.rstrip()) for line in lines) + 17
    assert rows == list(run.manifest_rows()) == [run.manifest_row(i) for i in range(count)]
    assert [r["id"] for r in rows] == run.shard_ids() == list(range(count)) and run.shard_count() == count
    assert sum(r["documents"] for r in rows) == header["documents"] == 40
    assert run.manifest_row(count) is None and run.manifest_row(-1) is None
    assert run.manifest()["rows"] == header["rows"]


def test_a_row_is_read_alone_with_one_pread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's lookup reads its row only: a damaged row elsewhere does not stop it."""
    run, _ = planned(tmp_path)
    width = read_json(run.manifest_path)["rows"]["width"]
    want = run.manifest_row(7)
    put_slot(run, 3, b"\x00garbage{")
    put_slot(run, 8, b'{"id": 8, "path": "shards/000008.jsonl.zst"}')
    reads: list[tuple[int, int]] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append((n, at)) or real(fd, n, at))
    assert run.manifest_row(7) == want and reads == [(width, 7 * width)]
    with pytest.raises(RunError) as damaged:
        list(run.manifest_rows())
    assert f"{run.manifest_rows_path}: row 3 is damaged (not JSON)" in str(damaged.value)


FORGED = {
    "another shard's row": (lambda row: orjson.dumps({**row, "id": 2}), "its id is 2"),
    "a path outside its shard": (lambda row: orjson.dumps({**row, "path": "../../../etc/passwd"}), "its path is"),
    "no checksum": (lambda row: orjson.dumps({k: v for k, v in row.items() if k != "sha256"}), "no sha256"),
    "a negative count": (lambda row: orjson.dumps({**row, "documents": -1}), "a count is missing"),
    "two lines in one": (lambda row: b'{"id": 1}\n{"id": 1}', "more than one line"),
    "a JSON list": (lambda row: b"[1, 2]", "not a JSON object"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_a_forged_or_damaged_row_is_one_line_naming_file_and_row(tmp_path: Path, case: str) -> None:
    run, _ = planned(tmp_path)
    forge, why = FORGED[case]
    put_slot(run, 1, forge(run.manifest_row(1)))
    with pytest.raises(RunError) as caught:
        run.manifest_row(1)
    message = str(caught.value)
    assert message.startswith(f"{run.manifest_rows_path}: row 1 is damaged (") and why in message
    assert "\n" not in message and f"hpcsynth plan CONFIG --run {run.root} --force" in message
    assert run.manifest_row(0)["id"] == 0 and run.manifest_row(2)["id"] == 2, "the rows around it still read"


def test_a_cut_missing_or_linked_row_file_and_a_forged_header_are_one_line(tmp_path: Path) -> None:
    run, _ = planned(tmp_path)
    data = run.manifest_rows_path.read_bytes()
    run.manifest_rows_path.write_bytes(data[:-5])
    for read in (run.shard_count, run.shard_ids, lambda: run.manifest_row(0), lambda: list(run.manifest_rows())):
        with pytest.raises(RunError, match=r"manifest.rows.jsonl has [\d,]+ bytes, not 10 rows of \d+ bytes \(cut"):
            read()
    run.manifest_rows_path.unlink()
    with pytest.raises(RunError, match="manifest.rows.jsonl is missing; plan it again"):
        run.shard_count()
    (tmp_path / "elsewhere").write_bytes(data)
    run.manifest_rows_path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunError, match="cannot be read \\(a symbolic link\\)"):
        run.manifest_row(0)
    header = read_json(run.manifest_path)
    for rows in ({**header["rows"], "file": "../elsewhere"}, {**header["rows"], "width": 1 << 40},
                 {**header["rows"], "count": "10"}, None):
        atomic_write_json(run.manifest_path, {**header, "rows": rows})
        with pytest.raises(RunError, match='not a layout-2 manifest header \\(its "rows" is not'):
            run.manifest()


def test_a_layout_1_run_is_one_line_and_plan_force_moves_it_keeping_finished_shards(tmp_path: Path) -> None:
    run, corpus = planned(tmp_path)
    rows = list(run.manifest_rows())
    header = read_json(run.manifest_path)
    as_layout_1(run)
    for shard in (0, 4):  # finished shards (done markers and outputs as a worker leaves them)
        run.done_path(shard).parent.mkdir(exist_ok=True)
        run.output_path(shard).parent.mkdir(exist_ok=True)
        run.done_path(shard).write_text('{"fingerprint": "x"}')
        run.output_path(shard).write_bytes(b"out")
    proc = run_cli("status", str(run.root))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert (f"{run.root} is a run directory of layout 1 (its shard rows inside manifest.json) and this hpcsynth "
            f"reads layout 2: plan it again: `hpcsynth plan CONFIG --run {run.root} --force`") in proc.stderr
    assert f"or finish it with hpcsynth {__version__} that planned it" in proc.stderr
    with pytest.raises(RunError, match="planned differently \\(the existing plan is of layout 1"):
        plan_corpus(fake_config(corpus, plan={"shard_docs": 4}), run, jobs=1)
    plan_corpus(fake_config(corpus, plan={"shard_docs": 4}), run, jobs=1, force=True)
    assert read_json(run.manifest_path) == header and list(run.manifest_rows()) == rows
    assert run.done_path(0).is_file() and run.output_path(4).is_file(), "unchanged shards stay done"
    assert not (run.root / "replaced").exists()


def test_forced_replan_retires_changed_shards_and_everything_past_a_damaged_old_row(tmp_path: Path) -> None:
    run, corpus = planned(tmp_path, docs=13)  # shards of 4, 4, 4 and 1 documents
    for shard in range(4):
        run.done_path(shard).parent.mkdir(exist_ok=True)
        run.done_path(shard).write_text("{}")
    write_corpus(corpus, 14)  # the 14th document changes the last shard only
    plan_corpus(fake_config(corpus, plan={"shard_docs": 4}), run, jobs=1, force=True)
    assert [p.name for p in (run.root / "replaced").glob("*/done/*")] == ["000003.json"]
    assert all(run.done_path(s).exists() for s in range(3))
    put_slot(run, 1, b"{damaged")  # the old plan's row 1: what shards 1.. held is unknown now
    for stamp in (run.root / "replaced").iterdir():
        stamp.rename(run.root / f"first-{stamp.name}")  # a second re-plan may share the first's second
    plan_corpus(fake_config(corpus, plan={"shard_docs": 4}), run, jobs=1, force=True)
    assert run.done_path(0).exists() and not run.done_path(1).exists() and not run.done_path(2).exists()
    assert sorted(p.name for p in (run.root / "replaced").glob("*/done/*")) == ["000001.json", "000002.json"]


def test_replanning_the_same_inputs_over_a_damaged_row_is_refused_not_kept(tmp_path: Path) -> None:
    run, corpus = planned(tmp_path)
    put_slot(run, 5, b"{}")
    with pytest.raises(RunError, match="the existing plan cannot be read .*row 5 is damaged"):
        plan_corpus(fake_config(corpus, plan={"shard_docs": 4}), run, jobs=1)
