"""The experiment grid on the local executor, through the `hpcsynth` CLI (main(), in-process).

One 2 x 2 grid (two prompts x the tiny real model and the fake engine) with two mix-ins, end to end:
plan once, launch every generator, status per cell, reduce into eight datasets opened with megatron-core;
then re-planning, per-generator resume, and the one-line errors of a bad grid.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import orjson
import pytest

from hpcsynth.files import read_jsonl_zst
from hpcsynth.rundir import RunDir

from conftest import Result, run_cli, write_corpus

GRID = """\
prompts: [faq, math]
plan: {{inputs: [{corpus}], shard_docs: 4}}
model: {{engine: transformers, path: {model}, max_model_len: 2048, max_input_chars: 400}}
sampling: {{max_tokens: 12}}
worker: {{batch_size: 8, threads: 1, device: cpu, flush_interval_s: 0.1, heartbeat_interval_s: 0.1}}
reduce: {{tokenizer: {model}, min_chars: 1}}
validate: {{action: keep}}
grid:
  generators:
    - name: tiny
    - name: fake
      model: {{engine: fake, path: fake-model}}
      sampling: {{temperature: 0.5}}
  mixins:
    - {{name: none, original_ratio: 0}}
    - {{name: web, original_ratio: 1.0}}
"""


def hpcsynth(*args: str, check: bool = True) -> Result:
    proc = run_cli(*args, env={"COLUMNS": "160"})
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcsynth {shlex.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_grid(tmp: Path, model: Path, docs: int = 8, text: str = GRID) -> Path:
    corpus = write_corpus(tmp / "corpus.jsonl", docs)
    config = tmp / "grid.yaml"
    config.write_text(text.format(corpus=corpus, model=model))
    return config


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_model: Path) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    config = write_grid(tmp, tiny_model)
    run = tmp / "run"
    out = hpcsynth("plan", str(config), "--run", str(run)).stdout
    assert "grid: 2 generator(s) x 2 prompt(s) x 2 mix-in(s)" in out and "generators/fake: new" in out
    out = hpcsynth("launch", str(run)).stdout
    assert "tiny (local): 2/2 shards done" in out and "fake (local): 2/2 shards done" in out
    return run


def test_plan_shares_the_shards_and_fingerprints_each_generator(grid_run: Path) -> None:
    parent = orjson.loads((grid_run / "manifest.json").read_bytes())
    parent_rows = list(RunDir(grid_run).manifest_rows())
    fingerprints = set()
    for name in ("tiny", "fake"):
        sub = grid_run / "generators" / name
        manifest = orjson.loads((sub / "manifest.json").read_bytes())
        assert manifest["rows"] == parent["rows"] and manifest["grid"] == {"parent": "../..", "generator": name}
        assert list(RunDir(sub).manifest_rows()) == parent_rows
        mine, theirs = (sub / "manifest.rows.jsonl").stat(), (grid_run / "manifest.rows.jsonl").stat()
        assert (mine.st_ino, mine.st_dev) == (theirs.st_ino, theirs.st_dev), "the parent's row file, linked"
        for row in parent_rows:
            mine, theirs = (sub / row["path"]).stat(), (grid_run / row["path"]).stat()
            assert (mine.st_ino, mine.st_dev) == (theirs.st_ino, theirs.st_dev), "a link, not a copy"
        assert manifest["fingerprint"] == (sub / "fingerprint").read_text().strip()
        fingerprints.add(manifest["fingerprint"])
    # tiny is the top-level model as it stands (the parent's fingerprint); fake's covers its own model.
    assert len(fingerprints) == 2 and parent["fingerprint"] in fingerprints
    fake = (grid_run / "generators" / "fake" / "config.yaml").read_text()
    assert "engine: fake" in fake and "temperature: 0.5" in fake and "generators: []" in fake


def test_each_generator_ran_its_prompts_in_one_stream_with_one_engine_start(grid_run: Path) -> None:
    for name, model in (("tiny", "tiny-model"), ("fake", "fake-model")):
        sub = grid_run / "generators" / name
        tasks = [orjson.loads(p.read_bytes()) for p in (sub / "tasks").glob("*.json")]
        assert len(tasks) == 1 and tasks[0]["shards_done"] == 2, "one worker, one engine start"
        records = [r for p in sorted((sub / "outputs").glob("*.zst")) for r in read_jsonl_zst(p)]
        assert len(records) == 16 and {r["prompt"] for r in records} == {"faq", "math"}
        assert all(model in r["model"] for r in records), {r["model"] for r in records}
    assert not (grid_run / "outputs").exists(), "the parent plans, it does not generate"


def test_status_shows_every_cell(grid_run: Path) -> None:
    status = orjson.loads(hpcsynth("status", str(grid_run), "--json").stdout)
    cells = {(c["generator"], c["prompt"]): c for c in status["cells"]}
    assert set(cells) == {("tiny", "faq"), ("tiny", "math"), ("fake", "faq"), ("fake", "math")}
    for (name, prompt), cell in cells.items():
        sub = grid_run / "generators" / name
        records = [r for p in (sub / "outputs").glob("*.zst") for r in read_jsonl_zst(p) if r["prompt"] == prompt]
        assert cell["shards_done"] == cell["shards_total"] == 2 and cell["state"] == "done"
        assert cell["records"] == 8 and cell["tokens"] == sum(r["completion_tokens"] for r in records) > 0
    table = hpcsynth("status", str(grid_run)).stdout
    assert "every cell is done; next: hpcsynth reduce" in table
    assert sum(1 for line in table.splitlines() if "2/2" in line and "done" in line) == 4


def test_reduce_writes_one_dataset_per_cell_and_mixin_with_trainer_args(grid_run: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = hpcsynth("reduce", str(grid_run)).stdout
    assert "reduce: 8 datasets" in out
    train = (grid_run / "datasets" / "TRAIN.md").read_text()
    args = orjson.loads((grid_run / "datasets" / "data_args.json").read_bytes())["datasets"]
    assert [a["name"] for a in args] == [f"{g}-{p}-{m}" for g in ("tiny", "fake") for p in ("faq", "math")
                                         for m in ("none", "web")]
    for entry in args:
        folder = grid_run / "datasets" / entry["name"]
        report = orjson.loads((folder / "report.json").read_bytes())
        line = entry["args"]["megatron"]
        assert line in train and line == f"--data-path {(folder / 'mix').absolute()}"
        assert (folder / "data_args.txt").read_text() == f"megatron: {line}\n"
        dataset = IndexedDataset(line.split()[-1])
        assert len(dataset) == report["sequences"] and int(dataset.sequence_lengths.sum()) == report["tokens"]
        docs = [orjson.loads(x) for x in (folder / "mix.docs.jsonl").read_bytes().splitlines()]
        synthetic = [d for d in docs if d["kind"] == "synthetic"]
        assert len(synthetic) == 8 and {d["prompt"] for d in synthetic} == {entry["prompt"]}
        assert all(d["id"].endswith("/" + entry["prompt"]) for d in synthetic)
        assert list(report["validation"]) == [entry["prompt"]], "the quality report is the cell's own"
        originals = report["original_documents"]
        assert (originals == 0) if entry["mixin"] == "none" else (originals > 0 and report["original_tokens"] > 0)
        assert dataset[0][-1] == report["eos_id"]
    # Datasets of one cell differ only by the mix-in; the cells of one generator by their prompt.
    syn = {a["name"]: orjson.loads((grid_run / "datasets" / a["name"] / "report.json").read_bytes())["synthetic_tokens"]
           for a in args}
    assert syn["tiny-faq-none"] == syn["tiny-faq-web"] and syn["fake-math-none"] == syn["fake-math-web"]
    # A second reduce resumes: every part is done, only the merges run, the bytes are the same.
    before = (grid_run / "datasets" / "tiny-faq-web" / "mix.bin").read_bytes()
    hpcsynth("reduce", str(grid_run))
    assert (grid_run / "datasets" / "tiny-faq-web" / "mix.bin").read_bytes() == before


def test_datatrove_datasets_get_the_folder_forms(tmp_path: Path) -> None:
    from hpcsynth.study.grid_reduce import data_args

    report = {"format": "datatrove", "prefix": str(tmp_path / "d" / "mix"), "dtype": "uint16", "tokens": 9,
              "token_files": [{"prefix": "mix", "tokens": 9}]}
    args = data_args(report)
    folder = tmp_path / "d"
    assert args["nanotron"] == f'dataset: {{dataset_folder: ["{folder}"], dataset_weights: [1.0]}}'
    assert args["datatrove"] == f"DatatroveFolderDataset({str(tmp_path / 'd')!r}, seq_len=SEQ_LEN, token_size=2)"
    split = {"format": "megatron", "prefix": str(tmp_path / "mix-00000"), "tokens": 30,
             "token_files": [{"prefix": "mix-00000", "tokens": 20}, {"prefix": "mix-00001", "tokens": 10}]}
    assert data_args(split)["megatron"] == f"--data-path 20 {tmp_path / 'mix-00000'} 10 {tmp_path / 'mix-00001'}"
