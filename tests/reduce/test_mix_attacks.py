"""Attacks on the exact mix and its files: damaged parts, a corpus changed under a running reduce, a
stale mix.json, an output size bomb. Each was a traceback or a wrong file before its fix. The fake engine
generates 100 documents x 2 prompts; the tokenizer is the real GPT-NeoX one when ../shared/data has it."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from hpcsynth.errors import RunError
from hpcsynth.reduce import reduce_run
from hpcsynth.reduce.merge import merge_parts
from hpcsynth.reduce.reducer import prepare_reduce, run_parts_local
from hpcsynth.rundir import RunDir

from conftest import SHARED_DATA
from test_mix import rephrased_run, set_mix


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> RunDir:
    tokenizer = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    root = tmp_path_factory.mktemp("attack")
    if not tokenizer.is_file():
        from hpcsynth.tinymodel import build_tokenizer

        build_tokenizer(root / "tok")
        tokenizer = root / "tok"
    return rephrased_run(root, 100, tokenizer, part_shards=1, bucket_docs=50)


@pytest.fixture(autouse=True)
def _the_run_as_it_was(request):
    """Tests re-mix the module's one run (set_mix, write_config); each leaves its config as it found it,
    so the order the tests run in (xdist hands them out as it likes) cannot change what another sees: a
    test that deleted its mix source left the run pointing at it, and a later reduce failed."""
    if "small_run" not in request.fixturenames:
        yield
        return
    run = request.getfixturevalue("small_run")
    config = run.config()
    yield
    run.write_config(config, run.fingerprint())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _edit_npy(change):
    return lambda path: path.write_bytes(_npy(change(np.load(path))))


def _edit_marker(change):
    def edit(path: Path) -> None:
        marker = orjson.loads(path.read_bytes())
        change(marker)
        path.write_bytes(orjson.dumps(marker))
    return edit


DAMAGE = {  # part-000000 file -> a damage the merge used to trip on (traceback) or to merge
    ".keys.npy": [_edit_npy(lambda a: a.astype(np.float64))],
    ".src.npy": [_edit_npy(lambda a: np.full_like(a, 7)), _edit_npy(lambda a: a.astype(np.int64))],
    ".lens.npy": [_edit_npy(lambda a: a.astype(np.float32)), _edit_npy(lambda a: a.reshape(-1, 1))],
    ".bounds.npy": [lambda p: p.write_bytes(p.read_bytes()[:-16]), _edit_npy(lambda a: a[:, :2])],
    ".docs.jsonl": [lambda p: p.write_bytes(p.read_bytes()[:-300])],
    ".parquet": [Path.unlink],
    ".done.json": [_edit_marker(lambda m: m.update(mix="x")), _edit_marker(lambda m: m.pop("text_rows")),
                   lambda p: p.write_bytes(b"[1, 2]")],
}


def test_damaged_part_files_redo_the_part_never_a_traceback(small_run: RunDir, tmp_path: Path) -> None:
    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 0.5}])
    out = tmp_path / "out"
    reduce_run(small_run, out)
    names = ("mix.bin", "mix.idx", "mix.docs.jsonl", "mix.json")
    first = {n: (out / n).read_bytes() for n in names}
    for suffix, damages in DAMAGE.items():
        path = out / "parts" / f"part-000000{suffix}"
        for damage in damages:
            damage(path)
            reduce_run(small_run, out)
            assert {n: (out / n).read_bytes() for n in names} == first, suffix


def _corpus(path: Path, rows: int, row_group: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"Corpus page {i}. " + "plain words here " * 20 for i in range(rows)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(rows)], "text": texts}), path, row_group_size=row_group)
    return path


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_corpus_changed_under_a_running_reduce_stops_then_resumes(small_run: RunDir, tmp_path: Path,
                                                                  change: str) -> None:
    """Its row groups were planned into parts at prepare; read after a rewrite they gave rows of two
    versions (silently), read after a delete, a misleading 'no document of it was read'."""
    corpus = _corpus(tmp_path / "hq.parquet", 200, 20)
    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "hq", "path": str(corpus), "weight": 0.5}])
    out = tmp_path / "out"
    spec = prepare_reduce(small_run, out, None, False)
    if change == "rewritten":
        _corpus(corpus, 30, 30)
    else:
        corpus.unlink()
    with pytest.raises(RunError, match=r"hq\.parquet \(reduce\.mix\.sources hq\) changed since this reduce started"):
        run_parts_local(spec, 1)
    if change == "deleted":
        return
    report = reduce_run(small_run, out).data  # run again: the new file's parts, nothing of the old one
    hq = next(row for row in report["mix"]["sources"] if row["name"] == "hq")
    assert report["mix"]["policy"]["available"]["hq"]["documents"] == 30 and hq["documents"] <= 30


def test_partial_card_shows_its_own_mix_and_verify_checks_the_cards(small_run: RunDir, tmp_path: Path) -> None:
    """A --partial reduce's card rendered the full reduce's mix.json (another weight, other counts) found
    in the same directory; and an edited card passed `hpcsynth verify`."""
    from test_demo import hpcsynth

    run = RunDir(shutil.copytree(small_run.root, tmp_path / "run", symlinks=True))
    out = tmp_path / "out"
    set_mix(run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 0.5}])
    reduce_run(run, out)
    set_mix(run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 0.125}])
    sorted((run.root / "done").iterdir())[0].unlink()
    partial = reduce_run(run, out, partial=True).data
    card = (out / "README-partial.md").read_text()
    mix = card[card.index("## The mix"):card.index("## Token counts")]
    assert "From `mix-partial.json`" in mix and f"total_tokens {partial['tokens']:,}" in mix
    assert "| 0.125 |" in mix and "| 0.5 |" not in mix
    assert hpcsynth("verify", str(out)).returncode == 0
    (out / "text-partial" / "README.md").write_text("edited")
    proc = hpcsynth("verify", str(out), check=False)
    assert proc.returncode == 1 and "text-partial/README.md has 6 bytes" in proc.stdout


def test_an_absurd_total_with_repeat_is_refused_before_any_byte(small_run: RunDir, tmp_path: Path) -> None:
    """total_tokens 10^15, too_few: repeat, max_repeat 10^18: the merge looped and wrote until the disk
    was full; now one line naming the keys, and the earlier output stays as it was."""
    out = tmp_path / "out"
    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 1.0}])
    reduce_run(small_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 1.0}], too_few="repeat",
            max_repeat=1e18, total_tokens=10**15)
    try:
        with pytest.raises(RunError, match=r"this mix would write 1,000,000,000,000,000 tokens, .* GB free in .*; "
                                           r"lower reduce\.mix\.total_tokens"):
            reduce_run(small_run, out)
    finally:
        set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 1.0}])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("mix, says", [
    ("{synthetic: {faq: .inf}}", r"'reduce.mix.synthetic.faq' must be a finite weight above 0, got inf"),
    ("{sources: [{name: run_originals, weight: .inf}]}", r"'reduce.mix.sources\[0\].weight' must be a number above 0"),
    ("{sources: [{name: run_originals, weight: .nan}]}", r"'reduce.mix.sources\[0\].weight' must be a number above 0"),
    ("{max_repeat: .inf}", r"'reduce.mix.max_repeat' must be 1 \(no repeat\) or more, and finite"),
    ("{total_tokens: 1000000000000000000000000000000}", r"'reduce.mix.total_tokens' must be 0 .* at most 4,611,"),
    ("{max_doc_tokens: 100000000000000000000}", r"'reduce.mix.max_doc_tokens' must be 0 .* at most 4,611,"),
])
def test_infinite_or_unstorable_mix_numbers_are_one_line(tmp_path: Path, mix: str, says: str) -> None:
    """An infinite weight made every share NaN (a traceback in the merge); a total past 64 bits broke
    the spec's JSON (a traceback)."""
    from hpcsynth.config import load_config
    from hpcsynth.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(f"prompts: [faq, math]\nreduce:\n  mix: {mix}\n")
    with pytest.raises(ConfigError, match=r"line 3: " + says):
        load_config(path)
    path.write_text("reduce:\n  original_ratio: .inf\n")
    with pytest.raises(ConfigError, match=r"'reduce.original_ratio' must be 0 or more, and finite"):
        load_config(path)


def _outside_code(line: str) -> str:
    return "".join(part for i, part in enumerate(line.split("`")) if i % 2 == 0)


def test_hostile_names_on_the_card_stay_text() -> None:
    """A corpus file named like an HTML tag went onto the Hub page raw; a model path with a backtick ended
    its code span, letting the rest be Markdown and HTML."""
    import re

    import yaml

    from hpcsynth.reduce.card import render_card

    evil = "x`<img src=x onerror=alert(1)>|\n---\nlicense: mit"
    mix = {"seed": 0, "total_tokens": 10, "sources": [
        {"name": "hq", "kind": "corpus", "path": f"/data/{evil}.jsonl", "documents": 1, "tokens": 10}]}
    info = {"name": "mix", "model": f"/models/{evil}", "revision": evil, "engine": evil, "prompts": ["faq"],
            "inputs": [{"name": f"{evil}.jsonl"}], "input_files": 1, "mix": mix, "mix_file": "mix.json",
            "prompt_table": [{"name": "faq", "format": "faq", "version": 1, "template_hash": evil}],
            "report": {"sequences": 1, "tokens": 10, "tokenizer": f"/t/{evil}", "eos_token": evil,
                       "tokens_by_source": {"hq": 10}}, "card": {"license": "odc-by"}}
    card = render_card(info, None)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "odc-by"
    body = card.split("---\n", 2)[2]
    assert "<img" not in "".join(_outside_code(line) for line in body.splitlines())
    for table in re.findall(r"(?:^\|.*\|$\n?)+", body, flags=re.M):  # each table: one column count
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table


def test_a_source_repeated_past_the_bucket_count_holds_one_home_bucket(small_run: RunDir, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """A one-document source under too_few: repeat and a huge max_repeat is written thousands of times:
    the merge kept every home bucket it visited (the whole run, with more copies than buckets) and made
    one pass over each per copy. Now it holds one home window at a time besides the one it writes, with
    the same bytes out (a window of one bucket here, as FinePhrase's ~250 MB buckets are)."""
    import weakref

    from hpcsynth.reduce import merge

    tiny = tmp_path / "tiny.jsonl"
    tiny.write_bytes(orjson.dumps({"id": "t", "text": "tiny"}) + b"\n")
    config = small_run.config()
    small_run.write_config(dataclasses.replace(config, reduce=dataclasses.replace(config.reduce, bucket_docs=5)),
                           small_run.fingerprint())
    alive: list[weakref.ref] = []
    most = []

    class Counting(merge._Window):
        def __init__(self, *args) -> None:
            most.append(sum(ref() is not None for ref in alive))
            super().__init__(*args)
            alive.append(weakref.ref(self))

    monkeypatch.setattr(merge, "_Window", Counting)
    monkeypatch.setattr(merge, "WINDOW_BYTES", 1)
    try:
        set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "tiny", "path": str(tiny), "weight": 1.0}],
                too_few="repeat", max_repeat=1e9)
        report = reduce_run(small_run, tmp_path / "out").data
    finally:
        small_run.write_config(config, small_run.fingerprint())
    tiny_row = next(row for row in report["mix"]["sources"] if row["name"] == "tiny")
    assert tiny_row["documents"] > 1000 and tiny_row["achieved_share"] == pytest.approx(0.5, rel=0.01)
    # 20 buckets, each drawing on all 20 (a few served by the window read last); one other held at a time.
    assert 20 * 15 <= len(most) <= 20 * 20 and max(most) <= 1


def test_text_export_turned_off_leaves_no_stale_text_or_card(small_run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reduce_run(small_run, out)
    assert (out / "text" / "README.md").is_file()
    config = small_run.config()
    small_run.write_config(dataclasses.replace(config, reduce=dataclasses.replace(config.reduce, text_export=False)),
                           small_run.fingerprint())
    try:
        reduce_run(small_run, out)
    finally:
        small_run.write_config(config, small_run.fingerprint())
    assert not (out / "text").exists()  # its Parquet and card described the earlier reduce's records


def test_a_hostile_corpus_directory_is_counted_not_fatal(small_run: RunDir, tmp_path: Path) -> None:
    """A .zst bomb, a 3 MB line, invalid UTF-8, a lone surrogate, non-string text, a symlink loop and
    a broken Parquet file beside good files: each a reject with its file and line, the rest mixed."""
    import zstandard

    folder = tmp_path / "corpus"
    folder.mkdir()
    good = [orjson.dumps({"id": f"g{i}", "text": f"Good page {i} " + "some words " * 30}) for i in range(60)]
    (folder / "good.jsonl").write_bytes(b"\n".join(good) + b"\n")
    (folder / "bomb.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\0" * (80 << 20)))
    (folder / "big.jsonl").write_bytes(orjson.dumps({"id": "big", "text": "word " * (600 << 10)}) + b"\n")
    (folder / "utf8.jsonl").write_bytes(b'{"id": "u", "text": "abc \xff def"}\n{"id": "s", "text": "a \\ud800 b"}\n')
    (folder / "types.jsonl").write_bytes(b'{"id": "k", "body": "x"}\n{"id": "i", "text": 12}\n[1]\nnull\n')
    (folder / "loop.jsonl").symlink_to(folder / "loop.jsonl")
    (folder / "broken.parquet").write_bytes(b"PAR1 not really PAR1")
    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "web", "path": str(folder), "weight": 0.3}],
            max_doc_tokens=256)
    config = small_run.config()
    small_run.write_config(dataclasses.replace(config, plan=dataclasses.replace(config.plan, max_line_bytes=64 << 20)),
                           small_run.fingerprint())
    try:
        report = reduce_run(small_run, tmp_path / "out").data
    finally:
        small_run.write_config(config, small_run.fingerprint())
    rejects = [orjson.loads(l) for l in (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()]
    said = {r["id"].rsplit("/", 1)[-1]: r["reason"] for r in rejects if r.get("source") == "web"}
    assert "plan.max_line_bytes" in said["bomb.jsonl.zst:1"] and "invalid UTF-8" in said["utf8.jsonl:1"]
    assert "not valid JSON" in said["utf8.jsonl:2"] and "Parquet" in said["broken.parquet:0"]
    assert {"types.jsonl:1", "types.jsonl:2", "types.jsonl:3", "types.jsonl:4"} <= set(said)
    web = next(row for row in report["mix"]["sources"] if row["name"] == "web")
    assert web["cut_documents"] == 1 and web["achieved_share"] == pytest.approx(0.3 / 1.3, rel=0.01)


def test_config_edited_under_a_running_reduce_stops_its_parts(small_run: RunDir, tmp_path: Path) -> None:
    """Parts read reduce:/validate: from RUN/config.yaml when they run, yet were marked with the key of
    the settings prepare saw: an edit mid-run gave parts of two settings under one key (and reverting
    the edit reused the odd parts). A weight, which only the merge reads (from the spec), is no change."""
    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 0.5}])
    config = small_run.config()
    out = tmp_path / "out"
    try:
        spec = prepare_reduce(small_run, out, None, False)
        set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 2.0}])
        run_parts_local(spec, 1)  # a weight: the parts go on
        assert merge_parts(str(out))["mix"]["sources"][1]["weight"] == 0.5  # the spec's, as prepared
        spec = prepare_reduce(small_run, out, None, False)
        changed = dataclasses.replace(config.reduce, seed=9, min_chars=100000)
        small_run.write_config(dataclasses.replace(config, reduce=changed), small_run.fingerprint())
        for index in spec.part_indices():
            spec.part_path(index, ".done.json").unlink()
        with pytest.raises(RunError, match=r"config\.yaml changed \(reduce:, validate: or plan\.max_line_bytes\) "
                                           r"since this reduce started"):
            run_parts_local(spec, 1)
    finally:
        small_run.write_config(config, small_run.fingerprint())


def test_verify_checks_the_mix_against_the_written_files(small_run: RunDir, tmp_path: Path) -> None:
    """mix.json edited with report.json's checksums refreshed passed `hpcsynth verify`: the shares a
    reader trusts were never compared with the files."""
    from hpcsynth.files import atomic_write_json, sha256_file
    from test_demo import hpcsynth

    set_mix(small_run, synthetic={"*": 1.0}, sources=[{"name": "run_originals", "weight": 0.5}])
    out = tmp_path / "out"
    reduce_run(small_run, out)
    assert hpcsynth("verify", str(out)).returncode == 0
    mix = orjson.loads((out / "mix.json").read_bytes())
    mix["sources"][1]["tokens"] += 1000
    atomic_write_json(out / "mix.json", mix)
    report = orjson.loads((out / "report.json").read_bytes())
    for entry in report["files"]:
        entry.update(bytes=(out / entry["path"]).stat().st_size, sha256=sha256_file(out / entry["path"]))
    atomic_write_json(out / "report.json", report)
    proc = hpcsynth("verify", str(out), check=False)
    assert proc.returncode == 1 and "mix.json is not the mix report.json records" in proc.stdout
    report["mix"] = mix
    atomic_write_json(out / "report.json", report)
    proc = hpcsynth("verify", str(out), check=False)
    assert proc.returncode == 1 and "the mix says run_originals has" in proc.stdout and "tokens, mix.docs.jsonl holds" in proc.stdout


def test_markdown_links_and_images_in_names_stay_text_on_the_card() -> None:
    """A corpus file or a prompt named `[click](https://...)` became a live link on the Hub's page, and an
    image reference a request to a tracker from every reader's browser."""
    import re

    from hpcsynth.reduce.card import render_card

    evil = "[click](https://example.invalid/x) ![t](https://example.invalid/p.png)"
    mix = {"seed": 0, "total_tokens": 10, "sources": [
        {"name": "hq", "kind": "corpus", "path": f"/data/{evil}.jsonl", "documents": 1, "tokens": 10}]}
    info = {"name": f"mix {evil}", "model": "m", "engine": "fake", "prompts": ["faq"],
            "inputs": [{"name": f"{evil}.jsonl"}], "input_files": 1, "mix": mix, "mix_file": "mix.json",
            "prompt_table": [{"name": evil, "format": "faq", "version": 1, "template_hash": "h"}],
            "view": {"prompts": [evil]}, "run_prompts": [evil],
            "report": {"sequences": 1, "tokens": 10, "tokenizer": "t", "eos_token": "e", "tokens_by_source": {"hq": 10}},
            "card": {"license": "odc-by"}}
    body = render_card(info, None).split("---\n", 2)[2]
    outside = "".join(_outside_code(line) for line in body.splitlines())
    assert "click" in outside, "the names are still shown"
    assert not re.search(r"(?<!\\)\]\(", outside), "no unescaped ](: no link or image is formed"
