"""Parquet decompression bombs (issue 21): files of a few KB that decode to gigabytes, read by the three
commands that share the corpus reader: `plan`, `prompts --render NAME --doc FILE` and a reduce with a
`reduce.mix` source. Each runs as the real CLI in a process of its own whose peak RSS is measured (and whose
address space is capped, so that a reader that fails this stops there instead of filling the machine). A row
past `plan.max_line_bytes` is a counted reject naming file, row and row group; the rest of the file is read.

The bombs are built in well under a second each: one string stored once in a dictionary page and referenced
by every row (written from an Arrow dictionary, which Arrow reads back as one, or with the plain string type
of any other writer, which Arrow decodes row by row), and one huge plain value compressed by zstd.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson
import pytest

from hpcsynth.config.sections import MixConfig, MixSource
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import REPO, SHARED_DATA, fake_config, write_corpus

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CAP = 1536 << 20  # address space: a plan of a small Parquet file needs ~400 MiB of it
PEAK = 1 << 30  # resident memory: these bombs decode to 1-68 GiB (the readers peak at 300-500 MiB alone and
# up to ~800 MiB in a loaded parallel run)
MIB = 1 << 20
GOOD = [f"Good page {i} comes after the bomb. " + "plain words here " * 20 for i in range(8)]


def dictionary_bomb(path: Path, value_bytes: int, rows: int, arrow_dictionary: bool) -> Path:
    """`rows` rows of one `value_bytes` string, stored once in the dictionary page, then the 8 GOOD rows."""
    indices = pa.array([0] * rows + list(range(1, 9)), pa.int32())
    text = pa.DictionaryArray.from_arrays(indices, pa.array(["x" * value_bytes, *GOOD]))
    table = pa.table({"id": [f"r{i}" for i in range(rows + 8)], "text": text})
    pq.write_table(table, path, compression="zstd", store_schema=arrow_dictionary)
    assert path.stat().st_size < 16 << 10
    return path


def plain_bomb(path: Path, value_bytes: int) -> Path:
    """A good row, one `value_bytes` value (no dictionary), the other 7 good rows."""
    texts = [GOOD[0], "y" * value_bytes, *GOOD[1:]]
    table = pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    assert path.stat().st_size < 64 << 10
    return path


def run_measured(*args: str | os.PathLike, timeout: float = 300, cap: int = CAP) -> tuple[int, str, str, int]:
    """`python -m hpcsynth ARGS` in a process of its own, capped at `cap` of address space: its exit code,
    stdout, stderr and peak RSS in bytes (os.wait4 gives that one process's usage, whatever else this test
    process ran)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "hpcsynth", *map(os.fspath, args)], cwd=REPO, stdout=out,
                                stderr=err, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024


def plan(tmp_path: Path, corpus: Path, plan_section: str, cap: int = CAP) -> tuple[int, str, int]:
    config = tmp_path / "config.yaml"
    config.write_text(f"prompts: [faq]\nmodel: {{engine: fake}}\nplan: {plan_section}\n")
    rc, _, stderr, peak = run_measured("plan", config, "--run", tmp_path / "run", "--input", corpus, cap=cap)
    return rc, stderr, peak


def rejects(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("arrow_dictionary", [True, False], ids=["arrow-dictionary", "plain-string"])
def test_plan_rejects_every_row_of_a_dictionary_bomb_and_plans_the_rest(tmp_path: Path,
                                                                        arrow_dictionary: bool) -> None:
    """3 KB, 1,024 rows of one 4 MiB string (4 GiB as Python strings) past a 1 MiB limit: the old reader
    took 1,024 rows a batch whatever their size and ran out of memory."""
    corpus = dictionary_bomb(tmp_path / "bomb.parquet", 4 * MIB, 1024, arrow_dictionary)
    rc, stderr, peak = plan(tmp_path, corpus, "{max_line_bytes: 1048576, max_reject_rate: 0.999}")
    assert rc == 0, stderr[-3000:]
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    assert orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())["documents"] == 8
    said = rejects(tmp_path / "run" / "plan" / "rejects.jsonl")
    assert [r["row"] for r in said] == list(range(1024))
    assert all(r["kind"] == "reject" and r["source"].endswith("bomb.parquet") for r in said)
    assert said[0]["reason"] == ("row larger than plan.max_line_bytes=1,048,576 (4,194,306 bytes decoded, in row "
                                 "group 0: a decompression bomb, or raise the limit)")


def test_plan_of_a_dictionary_bomb_within_the_limit_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """The issue's 20 MiB string, 128 rows of it (2.5 GiB as Python strings), each row under the default 64 MiB:
    all planned (cut at plan.long_doc_chars), a few rows at a time."""
    corpus = dictionary_bomb(tmp_path / "bomb.parquet", 20 * MIB, 128, arrow_dictionary=False)
    rc, stderr, peak = plan(tmp_path, corpus, "{}")
    assert rc == 0, stderr[-3000:]
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    assert orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())["documents"] == 128 + 8


def test_plan_rejects_a_huge_plain_row_and_plans_the_rest(tmp_path: Path) -> None:
    """One 80 MiB value in 8 KB of Parquet, past the default 64 MiB: the old reader planned it (rc 0, no
    reject), as it did the issue's 300 MB row at 1.0 GB."""
    corpus = plain_bomb(tmp_path / "row.parquet", 80 * MIB)
    # Address space to spare: Arrow's pools reserve beyond what they touch. The bound is on resident memory.
    rc, stderr, peak = plan(tmp_path, corpus, "{max_reject_rate: 0.5}", cap=3 << 30)
    assert rc == 0, stderr[-3000:]
    # Arrow decodes the 80 MiB page whole to read the one value, a few copies of it at once: measured 482 MiB
    # alone and 781 MiB once in a loaded parallel run.
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    assert orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())["documents"] == 8
    [said] = rejects(tmp_path / "run" / "plan" / "rejects.jsonl")
    assert said["row"] == 1 and said["source"].endswith("row.parquet")
    assert said["reason"].startswith("row larger than plan.max_line_bytes=67,108,864 (83,886,082 bytes decoded, "
                                     "in row group 0")


def test_prompts_doc_reads_the_first_row_of_a_bomb_in_bounded_memory(tmp_path: Path) -> None:
    """`prompts --render faq --doc` on the issue's file (1,024 rows of one 20 MiB string) showed nothing: it
    ran out of memory converting the first 1,024 rows to show one."""
    corpus = dictionary_bomb(tmp_path / "bomb.parquet", 20 * MIB, 1024, arrow_dictionary=True)
    rc, stdout, stderr, peak = run_measured("prompts", "--render", "faq", "--doc", corpus)
    assert rc == 0, stderr[-3000:]
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    assert "xxxxxxxx" in stdout and len(stdout) < 1 * MIB  # the document, cut at model.max_input_chars


def test_prompts_doc_whose_first_row_is_past_the_limit_is_one_line(tmp_path: Path) -> None:
    """Past the default 64 MiB (prompts reads only the text column: 65 MiB exactly): one line, exit 2."""
    corpus = dictionary_bomb(tmp_path / "bomb.parquet", 65 * MIB, 1024, arrow_dictionary=False)
    rc, _, stderr, peak = run_measured("prompts", "--render", "faq", "--doc", corpus)
    assert rc == 2 and stderr.count("\n") == 1, stderr[-3000:]
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    assert stderr.startswith(f"hpcsynth: error: {corpus} line 0: row larger than plan.max_line_bytes=67,108,864 "
                             f"(68,157,440 bytes decoded, in row group 0")


def run_mixing(tmp_path: Path, corpus: Path, plan_section: dict) -> RunDir:
    """A generated fake run of 20 documents whose reduce mixes in `corpus` as the source "web"."""
    tokenizer = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if not tokenizer.is_file():
        from hpcsynth.tinymodel import build_tokenizer

        build_tokenizer(tmp_path / "tok")
        tokenizer = tmp_path / "tok"
    config = fake_config(write_corpus(tmp_path / "c.jsonl", 20), plan=plan_section,
                         reduce={"tokenizer": str(tokenizer), "min_chars": 1})
    mix = MixConfig(synthetic={"*": 1.0}, sources=(MixSource(name="web", path=str(corpus), weight=0.5),),
                    max_doc_tokens=256)
    config = dataclasses.replace(config, reduce=dataclasses.replace(config.reduce, mix=mix))
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    return run


def test_reduce_mix_source_that_is_a_bomb_counts_its_rows_and_mixes_the_rest(tmp_path: Path) -> None:
    """A reduce.mix corpus source read by the planner's reader: the bomb's rows are rejects with file and row,
    its 8 good rows are mixed. The old reader ran out of memory, lost the file and failed the reduce."""
    corpus = dictionary_bomb(tmp_path / "bomb.parquet", 4 * MIB, 1024, arrow_dictionary=False)
    run = run_mixing(tmp_path, corpus, {"max_line_bytes": MIB})
    rc, _, stderr, peak = run_measured("reduce", run.root, "--out", tmp_path / "out")
    assert rc == 0, stderr[-3000:]
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    said = [r for r in rejects(tmp_path / "out" / "rejects.jsonl") if r.get("source") == "web"]
    assert [r["id"] for r in said] == [f"{corpus}:{row}" for row in range(1024)]
    assert all(r["check"] == "corpus_unreadable" and "row larger than plan.max_line_bytes=1,048,576" in r["reason"]
               for r in said)
    report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
    assert report["mix"]["policy"]["available"]["web"]["documents"] == 8


def test_reduce_mix_source_of_large_rows_within_the_limit_is_encoded_in_bounded_batches(tmp_path: Path) -> None:
    """Rows each under plan.max_line_bytes but many of them: the mix held 1,024 whole documents before it
    encoded any (here 96 x 16 MiB: 1.5 GiB); it holds at most 64 MiB of text now."""
    corpus = dictionary_bomb(tmp_path / "big.parquet", 16 * MIB, 96, arrow_dictionary=False)
    run = run_mixing(tmp_path, corpus, {})
    # Address space to spare (Arrow's pools reserve more than they touch); the bound is on resident memory.
    rc, _, stderr, peak = run_measured("reduce", run.root, "--out", tmp_path / "out", cap=4 << 30)
    assert rc == 0, stderr[-3000:]
    assert peak < PEAK, f"peak RSS {peak / MIB:.0f} MiB"
    report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
    assert report["mix"]["policy"]["available"]["web"]["documents"] == 96 + 8
