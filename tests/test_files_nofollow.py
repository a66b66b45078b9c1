"""Writes in a run directory never follow a symlink out of it (a run copied from another team, a shared
scratch directory): the progress log, plan's rejects, worker logs. The file outside stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcsynth.errors import RunError
from hpcsynth.generate.progress import ProgressLog

from conftest import run_cli, write_corpus

PRECIOUS = b"line one\nline two without newline"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


def test_progress_log_symlinked_to_a_file_outside_is_refused_untouched(tmp_path: Path, outside: Path) -> None:
    work = tmp_path / "run" / "work" / "000000"
    work.mkdir(parents=True)
    (work / "records.jsonl").symlink_to(outside)
    with pytest.raises(RunError, match="records.jsonl is a symbolic link"):
        ProgressLog(work / "records.jsonl", 1.0, "0" * 64, tmp_path / "aside")  # its recovery would cut the "torn" last line
    assert outside.read_bytes() == PRECIOUS


def test_dangling_symlink_is_not_created_through(tmp_path: Path) -> None:
    work = tmp_path / "run" / "work" / "000000"
    work.mkdir(parents=True)
    target = tmp_path / "created-here.txt"
    (work / "records.jsonl").symlink_to(target)
    with pytest.raises(RunError, match="symbolic link"):
        ProgressLog(work / "records.jsonl", 1.0, "0" * 64, tmp_path / "aside")
    assert not target.exists()


def test_shard_directory_symlinked_outside_is_refused(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "run" / "work").mkdir(parents=True)
    (tmp_path / "run" / "work" / "000000").symlink_to(outside.parent)
    with pytest.raises(RunError, match="000000 is a symbolic link"):
        ProgressLog(tmp_path / "run" / "work" / "000000" / "precious.txt", 1.0, "0" * 64, tmp_path / "aside")
    assert outside.read_bytes() == PRECIOUS


@pytest.mark.parametrize("use", ["append", "write", "truncate", "read"])
def test_every_helper_refuses_a_symlink(tmp_path: Path, outside: Path, use: str) -> None:
    from hpcsynth import files

    use = {"append": lambda p: files.open_append_nofollow(p).write(b"x"),
           "write": lambda p: files.open_write_nofollow(p).write(b"x"),
           "truncate": lambda p: files.truncate_nofollow(p, 0), "read": files.read_bytes_nofollow}[use]
    link = tmp_path / "dir" / "file"
    link.parent.mkdir()
    link.symlink_to(outside)
    with pytest.raises(RunError):
        use(link)
    assert outside.read_bytes() == PRECIOUS


def test_helpers_work_on_real_files(tmp_path: Path) -> None:
    from hpcsynth.files import open_append_nofollow, open_write_nofollow, read_bytes_nofollow, truncate_nofollow

    path = tmp_path / "f"
    with open_append_nofollow(path) as handle:
        handle.write(b"abc\n")
    with open_append_nofollow(path, text=True) as handle:
        handle.write("def\n")
    truncate_nofollow(path, 4)
    assert read_bytes_nofollow(path) == b"abc\n"
    with open_write_nofollow(path) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"


def test_plan_rejects_file_planted_as_symlink(tmp_path: Path, outside: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    with open(corpus, "ab") as handle:
        handle.write(b'{"id": "short", "text": ""}\n')  # one reject, so plan writes rejects/plan.jsonl
    config = tmp_path / "config.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake}\nplan: {max_reject_rate: 0.5}\n")
    run = tmp_path / "run"
    (run / "plan").mkdir(parents=True)
    (run / "plan" / "rejects.jsonl").symlink_to(outside)
    proc = run_cli("plan", str(config), "--run", str(run), "--input", str(corpus))
    # The plan is built aside and renamed into place: the planted link is replaced, never written through.
    assert proc.returncode == 0, proc.stderr
    assert outside.read_bytes() == PRECIOUS
    assert not (run / "plan" / "rejects.jsonl").is_symlink() and b"empty" in (run / "plan" / "rejects.jsonl").read_bytes()


def test_worker_log_planted_as_symlink(tmp_path: Path, outside: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    config = tmp_path / "config.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake}\n")
    run = tmp_path / "run"
    assert run_cli("plan", str(config), "--run", str(run), "--input", str(corpus)).returncode == 0
    (run / "logs").mkdir()
    (run / "logs" / "worker-local.log").symlink_to(outside)
    proc = run_cli("launch", str(run))
    assert proc.returncode == 2 and "worker-local.log is a symbolic link" in proc.stderr
    assert outside.read_bytes() == PRECIOUS


def test_atomic_writes_replace_a_planted_symlink_instead_of_following_it(tmp_path: Path, outside: Path) -> None:
    from hpcsynth.files import atomic_write_json

    marker = tmp_path / "run" / "done" / "000000.json"
    marker.parent.mkdir(parents=True)
    marker.symlink_to(outside)
    atomic_write_json(marker, {"shard": 0})
    assert outside.read_bytes() == PRECIOUS and not marker.is_symlink()


def test_token_file_temporaries_refuse_symlinks_but_out_may_be_a_linked_directory(tmp_path: Path,
                                                                                   outside: Path) -> None:
    import numpy as np

    from hpcsynth.reduce.formats.megatron import IndexedDatasetWriter

    real = tmp_path / "big-disk"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)  # --out on another filesystem through a link: allowed
    writer = IndexedDatasetWriter(tmp_path / "out" / "mix", np.uint16)
    writer.add([1, 2, 3])
    writer.finish()
    assert (real / "mix.bin").stat().st_size == 6

    (real / "evil.bin.tmp").symlink_to(outside)
    with pytest.raises(RunError, match="evil.bin.tmp is a symbolic link"):
        IndexedDatasetWriter(tmp_path / "out" / "evil", np.uint16)
    assert outside.read_bytes() == PRECIOUS


@pytest.mark.parametrize("fmt, planted", [
    ("numpy", "mix.npy.tmp"), ("datatrove", "mix.ds.tmp"), ("datatrove", "mix.ds.index.tmp"),
    ("datatrove", "mix.ds.metadata.tmp"),
])
def test_every_token_format_refuses_a_symlinked_temporary(tmp_path: Path, outside: Path, fmt: str,
                                                          planted: str) -> None:
    """reduce.format numpy and datatrove write their temporaries like Megatron's: never through a link."""
    import numpy as np

    from hpcsynth.reduce.formats.datatrove import DatatroveWriter
    from hpcsynth.reduce.formats.numpy_flat import NumpyWriter

    make = {"numpy": lambda p: NumpyWriter(p, np.uint16), "datatrove": lambda p: DatatroveWriter(p, 50_000, "tok")}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / planted).symlink_to(outside)
    with pytest.raises(RunError, match=f"{planted} is a symbolic link"):
        writer = make[fmt](tmp_path / "out" / "mix")
        writer.add([1, 2, 3])
        writer.finish()
    assert outside.read_bytes() == PRECIOUS


def test_reduce_refuses_a_symlinked_docs_index_temporary(tmp_path: Path, outside: Path) -> None:
    """RUN/reduce/mix.docs.jsonl.tmp planted as a link: reduce truncated the file outside, wrote the
    index into it and renamed the link into place as mix.docs.jsonl."""
    from conftest import SHARED_DATA

    tokenizer = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if not tokenizer.is_file():
        pytest.skip("needs the shared tokenizer")
    corpus = write_corpus(tmp_path / "c.jsonl", 3)
    config = tmp_path / "config.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake}\nvalidate: {action: keep}\n")
    run = tmp_path / "run"
    assert run_cli("plan", str(config), "--run", str(run), "--input", str(corpus)).returncode == 0
    assert run_cli("launch", str(run)).returncode == 0
    (run / "reduce").mkdir()
    (run / "reduce" / "mix.docs.jsonl.tmp").symlink_to(outside)
    proc = run_cli("reduce", str(run), "--tokenizer", str(tokenizer))
    assert proc.returncode == 2 and "mix.docs.jsonl.tmp is a symbolic link" in proc.stderr, proc.stderr
    assert outside.read_bytes() == PRECIOUS and not (run / "reduce" / "mix.docs.jsonl").exists()
