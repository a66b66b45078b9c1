"""status reads only the run's own logs: a failed marker is data, and may be forged or copied."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import orjson
import pytest

from conftest import run_cli, run_process, write_corpus


def planned(tmp_path: Path) -> Path:
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    config = tmp_path / "config.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake}\n")
    run = tmp_path / "run"
    proc = run_cli("plan", str(config), "--run", str(run), "--input", str(corpus))
    assert proc.returncode == 0, proc.stderr
    (run / "logs").mkdir()
    (run / "failed").mkdir()
    return run


def fail_with_log(run: Path, log: object, reason: str = "boom") -> dict:
    (run / "failed" / "000000.json").write_bytes(orjson.dumps({"shard": 0, "reason": reason, "log": log}))
    started = time.monotonic()
    proc = run_cli("status", str(run), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    [failure] = orjson.loads(proc.stdout)["failed_shards"]
    return failure


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "private" / "id_rsa"
    path.parent.mkdir()
    path.write_text("-----BEGIN PRIVATE KEY-----\nTOPSECRET\n")
    return path


def test_log_outside_the_run_is_not_shown(tmp_path: Path, secret: Path) -> None:
    run = planned(tmp_path)
    for forged in (str(secret), str(run / "logs" / ".." / ".." / "private" / "id_rsa"), 42, ["x"]):
        failure = fail_with_log(run, forged)
        assert failure["log_tail"] == [] and failure["log"] == "", forged


def test_symlink_in_logs_pointing_outside_is_not_followed(tmp_path: Path, secret: Path) -> None:
    run = planned(tmp_path)
    (run / "logs" / "worker-x.log").symlink_to(secret)
    failure = fail_with_log(run, str(run / "logs" / "worker-x.log"))
    assert failure["log_tail"] == [] and "TOPSECRET" not in str(failure)


def test_fifo_in_logs_does_not_hang_status(tmp_path: Path) -> None:
    run = planned(tmp_path)
    os.mkfifo(run / "logs" / "worker-x.log")
    assert fail_with_log(run, str(run / "logs" / "worker-x.log"))["log_tail"] == []


def test_own_log_is_shown_also_after_the_run_was_copied(tmp_path: Path) -> None:
    run = planned(tmp_path)
    (run / "logs" / "worker-a.log").write_text("line 1\nshard 0 failed: Bearer abcdef0123456789xyz\n")
    failure = fail_with_log(run, str(run / "logs" / "worker-a.log"))
    assert failure["log_tail"] == ["line 1", "shard 0 failed: Bearer [redacted]"]
    # Planned elsewhere, then copied here: the marker's absolute path points at the old place.
    moved = fail_with_log(run, "/old/place/run/logs/worker-a.log")
    assert moved["log_tail"][0] == "line 1" and moved["log"] == str((run / "logs" / "worker-a.log").resolve())


def test_reason_is_redacted(tmp_path: Path) -> None:
    run = planned(tmp_path)
    failure = fail_with_log(run, "", reason='HTTP 401: {"api_key": "sk-abcdefghijklmnopqrstuvwx"}')
    assert "sk-abcdefghij" not in failure["reason"] and "[redacted]" in failure["reason"]


def test_table_shows_hostile_text_inert(tmp_path: Path) -> None:
    """Brackets that look like rich markup and terminal escape sequences, in a reason and a log line,
    are shown as text: status neither crashes nor lets them reach the terminal."""
    run = planned(tmp_path)
    (run / "logs" / "worker-a.log").write_text("error reading [/tmp/x] done\n\x1b]0;PWNED-TITLE\x07 after\n")
    (run / "failed" / "000000.json").write_bytes(orjson.dumps({
        "shard": 0, "reason": "[/red] boom \x1b[2J[link=file:///etc/passwd]x[/link]",
        "log": str(run / "logs" / "worker-a.log")}))
    proc = run_cli("status", str(run), timeout=60, env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b]" not in proc.stdout and "\x1b[2J" not in proc.stdout and "\x07" not in proc.stdout
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)  # rich's own colours
    assert "[/tmp/x]" in text and "[/red] boom" in text and "[link=file:///etc/passwd]" in text


@pytest.mark.parametrize("where, content", [
    ("done/000000.json", b'{"fingerprint": "FP", "documents": "many", "records": 1, "rejected": 0, '
                         b'"completion_tokens": 1}'),
    ("done/000000.json", b'["a", "list"]'),
    ("work/000000/heartbeat.json", b'{"records_done": 1, "completion_tokens": 2, "updated": "soon"}'),
    ("work/000000/heartbeat.json", b'{"records_done": 1, "completion_tokens": 2, "updated": 1, "task": ["x"]}'),
    ("work/000000/heartbeat.json", b'null'),
    ("work/000000/heartbeat.json", b'{"records_done": 1, "completion_tokens": 2, "updated": 1e12, '
                                   b'"owner": "HOST:99999999999999999999:x"}'),
    ("tasks/w.json", b'{"name": "w", "wall_s": "long", "gpus": 1}'),
    ("failed/000000.json", b'"just a string"'),
])
def test_corrupt_or_forged_files_do_not_crash_status(tmp_path: Path, where: str, content: bytes) -> None:
    run = planned(tmp_path)
    path = run / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.replace(b"FP", (run / "fingerprint").read_text().strip().encode())
                     .replace(b"HOST", socket.gethostname().encode()))
    for args in (["--json"], []):
        proc = run_cli("status", str(run), *args, timeout=60)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("where, plant", [
    ("fingerprint", "fifo"), ("fingerprint", "dev-zero"), ("fingerprint", "sparse"),
    ("done/000000.json", "sparse"), ("tasks/w.json", "sparse"), ("fingerprint.json", "sparse"),
])
def test_a_run_file_planted_as_a_fifo_device_or_sparse_giant_is_refused_in_bounded_memory(
        tmp_path: Path, where: str, plant: str) -> None:
    """A FIFO as RUN/fingerprint hung status; a link to /dev/zero or a sparse 4 GiB file (free to make)
    as any file status reads ran it out of memory. Each is now damaged or absent, at once."""
    import resource

    run = planned(tmp_path)
    path = run / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if plant == "fifo":
        os.mkfifo(path)
    elif plant == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as handle:
            handle.truncate(4 << 30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = run_process("status", str(run), "--json", timeout=60, preexec_fn=cap)  # the memory cap is the point
    assert "out of memory" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if where == "fingerprint":
        assert proc.returncode == 2 and f"{path} is damaged" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
