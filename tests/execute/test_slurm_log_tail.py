"""status prints the end of a failed Slurm task's log: a file anyone who can write RUN/slurm/ may plant.

Before, a plain open() followed a link planted as the log (status printed the secret it pointed to, table
and --json), blocked on a FIFO (status hung) and read a link to /dev/zero until memory ran out.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hpcsynth.execute.slurm_jobs import slurm_problems
from hpcsynth.rundir import RunDir

FAILED = {"4242_0": {"state": "FAILED", "elapsed": 3, "reason": "None"}}


def problems_within(run: RunDir, seconds: float = 10) -> dict:
    """slurm_problems in a thread: a hang fails the test instead of hanging it."""
    out: list[dict] = []
    thread = threading.Thread(target=lambda: out.append(slurm_problems(run, FAILED)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"reading the task log hung for {seconds} s"
    return out[0]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.slurm_log_path("4242_0").parent.mkdir(parents=True)
    return run


def test_a_real_log_tail_is_shown(run: RunDir) -> None:
    run.slurm_log_path("4242_0").write_text("x" * 20000 + "\nstarting\nhpcsynth: setup line failed: module load\n")
    failed = problems_within(run)["failed_tasks"]
    assert failed[0]["setup_error"] == "hpcsynth: setup line failed: module load"
    assert failed[0]["log_tail"][-1] == "hpcsynth: setup line failed: module load"


def test_a_link_planted_as_the_log_is_never_followed(run: RunDir, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hpcsynth: setup line failed: TOKEN=hunter2\n")
    os.symlink(secret, run.slurm_log_path("4242_0"))
    failed = problems_within(run)["failed_tasks"]
    assert "hunter2" not in repr(failed) and failed[0]["log_tail"] == []


def test_a_linked_log_directory_is_never_followed(run: RunDir, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "4242_0_0_log.out").write_text("TOKEN=hunter2\n")
    log_dir = run.slurm_log_path("4242_0").parent
    log_dir.rmdir()
    os.symlink(elsewhere, log_dir)
    assert "hunter2" not in repr(problems_within(run)["failed_tasks"])


def test_a_fifo_or_a_device_as_the_log_neither_hangs_nor_fills_memory(run: RunDir) -> None:
    os.mkfifo(run.slurm_log_path("4242_0"))
    assert problems_within(run)["failed_tasks"][0]["log_tail"] == []
    os.unlink(run.slurm_log_path("4242_0"))
    os.symlink("/dev/zero", run.slurm_log_path("4242_0"))
    assert problems_within(run)["failed_tasks"][0]["log_tail"] == []


def test_a_sparse_giant_log_is_read_by_its_end_only(run: RunDir) -> None:
    with open(run.slurm_log_path("4242_0"), "wb") as handle:
        handle.truncate(8 << 30)  # 8 GiB of holes, then a last line
        handle.seek(0, os.SEEK_END)
        handle.write(b"\nthe last line\n")
    assert problems_within(run)["failed_tasks"][0]["log_tail"][-1] == "the last line"
