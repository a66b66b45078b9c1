"""Claiming shards while other workers commit them: no worker ends early, none exits 0 having given up.

The race (found by an outside simulation of a 339k-shard campaign): a worker probing a shard creates
work/ID/ while its holder commits and removes work/ID/; the probe's create then met FileNotFoundError,
which left the request stream, and the worker returned with exit code 0 and its share abandoned.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hpcsynth.generate import lease as lease_module
from hpcsynth.generate.engines.fake import FakeEngine
from hpcsynth.generate.lease import new_owner
from hpcsynth.generate.pull import main as pull_main
from hpcsynth.generate.shard import ShardTask
from hpcsynth.generate.worker import WorkerSession, WorkerStopped, run_shard

from conftest import planned_fake_run


def test_a_shard_committed_between_the_probes_mkdir_and_create_is_skipped(tmp_path: Path, monkeypatch) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()
    original = lease_module.create_held
    raced: list[Path] = []

    def commit_first(path: Path, payload: bytes) -> int | None:
        if not raced and path == run.lease_path(0):
            raced.append(path)
            # Another worker holds shard 0 and commits it now: its work directory goes away.
            assert run_shard(run, 0, FakeEngine(config), config, new_owner()).state == "done"
            assert not run.work_dir(0).exists()
        return original(path, payload)

    run.work_dir(0).mkdir(parents=True)  # the probe found no lease, in a work directory that was there
    monkeypatch.setattr(lease_module, "create_held", commit_first)
    results = WorkerSession(run, FakeEngine(config), config, new_owner()).work([0, 1])
    assert raced, "the race was staged"
    assert {r.shard: r.state for r in results} == {0: "skipped", 1: "done"}


def test_an_error_while_probing_a_lease_counts_the_shard_busy(tmp_path: Path, monkeypatch) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()

    def broken(self) -> dict | None:
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(lease_module.Lease, "probe", broken)
    opened = ShardTask.open(run, 0, config, new_owner(), [], run.fingerprint())
    assert opened.state == "busy" and "Permission denied" in opened.error


def test_a_stream_that_ends_on_an_error_with_no_shard_open_is_a_failure(tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    run = planned_fake_run(tmp_path, docs=2, shard_docs=1)
    config = run.config()

    def explode(*args, **kwargs):
        raise RuntimeError("claim exploded (injected)")

    monkeypatch.setattr(ShardTask, "open", explode)
    with pytest.raises(WorkerStopped, match="2 shard"):
        WorkerSession(run, FakeEngine(config), config, new_owner()).work([0, 1])
    # The worker process exits non-zero with one line, not 0 as if it had finished.
    assert pull_main([str(run.root)]) == 1
    err = capsys.readouterr().err
    assert "claim exploded (injected)" in err.splitlines()[-1]


def test_no_worker_ends_early_in_20_runs_of_8_racing_workers(tmp_path: Path) -> None:
    """Eight workers walk the same shards at once and commit under each other's probes, 20 times over."""
    for round_ in range(20):
        run = planned_fake_run(tmp_path / f"r{round_}", docs=24, shard_docs=1)
        config = run.config()
        shards = run.shard_ids()
        outcomes: dict[int, object] = {}

        def work(worker: int) -> None:
            try:
                outcomes[worker] = WorkerSession(run, FakeEngine(config), config, new_owner()).work(list(shards))
            except BaseException as exc:  # noqa: BLE001 - any exception is the failure under test
                outcomes[worker] = exc

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for worker, outcome in outcomes.items():
            assert isinstance(outcome, list), f"round {round_}: worker {worker} raised {outcome!r}"
            # Every shard of its list reached an outcome: none abandoned by a worker that stopped early.
            assert sorted({r.shard for r in outcome}) == shards, (round_, worker, outcome)
            assert not [r for r in outcome if r.state == "failed"], (round_, worker, outcome)
        assert len(outcomes) == 8
        assert all(run.done_path(s).exists() for s in shards), f"round {round_}: every shard committed"
        done = [r.shard for outcome in outcomes.values() for r in outcome if r.state == "done"]
        assert sorted(done) == shards, f"round {round_}: each shard committed exactly once"
