"""The worker on the fake engine: commit, resume without replay, rejects, failures, leases."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pytest

from hpcsynth.generate.engines import Completion, Request
from hpcsynth.generate.engines.fake import FakeEngine
from hpcsynth.files import read_json, read_jsonl_zst, sha256_file
from hpcsynth.generate.lease import Lease
from hpcsynth.plan import plan_corpus
from hpcsynth.generate.pull import pull_shards
from hpcsynth.rundir import RunDir
from hpcsynth.generate.worker import run_shard, truncate_document

from conftest import fake_config, write_corpus


class CountingEngine(FakeEngine):
    def __init__(self, config, fail_after: int | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.seen: list[str] = []
        self.fail_after = fail_after

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        def counted():
            for request in requests:
                if self.fail_after is not None and len(self.seen) >= self.fail_after:
                    raise RuntimeError("CUDA error: device-side assert (injected)")
                self.seen.append(request.record_id)
                yield request
        yield from super().generate(counted())


@pytest.fixture
def planned(tmp_path: Path) -> tuple[RunDir, object]:
    corpus = write_corpus(tmp_path / "c.jsonl", 7)
    config = fake_config(corpus)
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    return run, run.config()


def test_shard_commits_output_and_marker(planned) -> None:
    run, config = planned
    result = run_shard(run, 0, CountingEngine(config), config, "me")
    assert result.state == "done" and result.records == 5 * 4
    marker = read_json(run.done_path(0))
    assert marker["fingerprint"] == run.fingerprint()
    assert marker["sha256"] == sha256_file(run.output_path(0))
    records = list(read_jsonl_zst(run.output_path(0)))
    assert [r["id"] for r in records][:4] == [f"000000-000000/{p}" for p in config.prompts]
    for key in ("id", "source_id", "prompt", "template_hash", "model", "sampling", "seed", "finish_reason",
                "prompt_tokens", "completion_tokens", "input_truncated"):
        assert key in records[0]
    assert not run.work_dir(0).exists()
    assert run_shard(run, 0, CountingEngine(config), config, "me").state == "skipped"


def test_resume_skips_what_is_on_disk_and_drops_torn_line(planned) -> None:
    run, config = planned
    first = CountingEngine(config, fail_after=9)
    assert run_shard(run, 0, first, config, "a").state == "failed"
    assert "injected" in read_json(run.failed_path(0))["reason"]
    progress = run.progress_path(0)
    assert len(progress.read_bytes().splitlines()) == 1 + 9  # the fingerprint header, then records
    with open(progress, "ab") as handle:
        handle.write(b'{"id": "000000-000003/ma')  # killed mid-write
    second = CountingEngine(config)
    assert run_shard(run, 0, second, config, "b").state == "done"
    assert len(second.seen) == 20 - 9, "only the missing records are requested"
    ids = [r["id"] for r in read_jsonl_zst(run.output_path(0))]
    assert len(ids) == len(set(ids)) == 20
    assert not run.failed_path(0).exists()


def test_rejected_documents_are_recorded_not_fatal(planned) -> None:
    run, config = planned
    engine = CountingEngine(config, reject_on="Document 2 ")
    result = run_shard(run, 0, engine, config, "me")
    assert result.state == "done" and result.records == 16 and result.rejected == 4
    rejects = [orjson.loads(l) for l in run.rejects_path(0).read_bytes().splitlines()]
    assert {r["source_id"] for r in rejects} == {"doc-2"} and rejects[0]["reason"]


def test_live_lease_makes_shard_busy_and_stale_one_is_taken(planned) -> None:
    run, config = planned
    other = Lease(run.lease_path(0), "other", timeout=300)
    assert other.acquire()
    assert run_shard(run, 0, CountingEngine(config), config, "me").state == "busy"
    stale = Lease(run.lease_path(0), "me", timeout=0.0)
    assert stale.acquire(), "a lease older than the timeout is taken over"


def test_pull_shards_runs_all_and_skips_failed_unless_asked(planned) -> None:
    run, config = planned
    run.failed_path(1).parent.mkdir(parents=True, exist_ok=True)
    run.failed_path(1).write_text('{"reason": "earlier"}')
    results = pull_shards(run.root, engine_factory=CountingEngine)
    assert [(r.shard, r.state) for r in results] == [(0, "done")]
    results = pull_shards(run.root, retry_failed=True, engine_factory=CountingEngine)
    assert [(r.shard, r.state) for r in results] == [(1, "done")]


def test_truncation_cuts_at_newline_and_is_recorded() -> None:
    text = "a" * 60 + "\n" + "b" * 60
    assert truncate_document(text, 100) == ("a" * 60, True)
    assert truncate_document(text, 500) == (text, False)
    assert truncate_document("x" * 300, 100) == ("x" * 100, True)
