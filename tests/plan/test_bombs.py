"""Decompression bombs and over-long lines: a counted reject with file and line, in bounded memory.

Each bomb is a real compressed file (1 GiB of zeros on one line, then a good document) planned by the
real CLI in a process whose address space is capped at 768 MiB: reading that line whole cannot fit.
"""

from __future__ import annotations

import io
import resource
import subprocess
import zlib
from pathlib import Path

import orjson
import pytest
import zstandard

from conftest import run_process

GOOD = b'{"id": "good", "text": "A real document that comes after the bomb."}\n'
CAP = 768 << 20
ZEROS = bytes(16 << 20)


def zst_bomb(path: Path, chunks: int = 64) -> Path:
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as writer:
        for _ in range(chunks):
            writer.write(ZEROS)
        writer.write(b"\n" + GOOD)
    return path


def gz_bomb(path: Path, chunks: int = 64) -> Path:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip container
    with open(path, "wb") as handle:
        for _ in range(chunks):
            handle.write(packer.compress(ZEROS))
        handle.write(packer.compress(b"\n" + GOOD) + packer.flush())
    return path


def plan_capped(tmp_path: Path, corpus: Path, extra: str = "") -> subprocess.CompletedProcess:
    """A planner of its own, its address space capped: the memory bound is the point."""
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts: [faq]\nmodel: {{engine: fake}}\n{extra}")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    return run_process("plan", str(config), "--run", str(tmp_path / "run"), "--input", str(corpus), preexec_fn=cap)


@pytest.mark.parametrize("make", [zst_bomb, gz_bomb], ids=["zst", "gz"])
def test_bomb_line_is_a_counted_reject_and_the_rest_is_planned(tmp_path: Path, make) -> None:
    corpus = make(tmp_path / f"bomb.jsonl.{make.__name__[:-5]}")
    assert corpus.stat().st_size < 8 << 20
    proc = plan_capped(tmp_path, corpus, extra="plan: {max_reject_rate: 0.9}\n")  # 1 of 2 lines is the bomb
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())["documents"] == 1
    rejects = [orjson.loads(line) for line in (tmp_path / "run" / "plan" / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rejects) == 1 and rejects[0]["line"] == 1 and rejects[0]["source"].endswith(corpus.name)
    assert "longer than plan.max_line_bytes=67,108,864" in rejects[0]["reason"]


def test_memory_error_is_one_line(tmp_path: Path) -> None:
    # A limit above what the process may hold: the line is read whole and memory runs out.
    corpus = zst_bomb(tmp_path / "bomb.jsonl.zst")
    proc = plan_capped(tmp_path, corpus, extra=f"plan: {{max_line_bytes: {2 << 30}}}\n")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("hpcsynth: error: out of memory") and proc.stderr.count("\n") == 1


def test_bounded_lines_at_the_edges() -> None:
    from hpcsynth.files import bounded_lines

    data = b"a" * 9 + b"\n" + b"b" * 10 + b"\n" + b"c" * 25 + b"\n" + b"tail"
    assert list(bounded_lines(io.BytesIO(data), 10)) == [b"a" * 9 + b"\n", None, None, b"tail"]
    assert list(bounded_lines(io.BytesIO(b"x" * 50), 10)) == [None]  # no newline at all: one long line


def test_max_line_bytes_is_checked() -> None:
    from hpcsynth.config import config_from_dict
    from hpcsynth.errors import ConfigError

    with pytest.raises(ConfigError, match="plan.max_line_bytes.*at least 1024"):
        config_from_dict({"plan": {"max_line_bytes": 10}})
